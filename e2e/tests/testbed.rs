//! Self-tests of the test bed: the control plane behaves like a real cluster, per-test
//! namespaces clean up and report failures, the etcd fixture serves plain and TLS clients.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, ObjectReference, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage_e2e::controlplane::ControlPlane;
use stowage_e2e::etcd::{EtcdOptions, EtcdServer};
use stowage_e2e::{bed, wait_for};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.selftest.stowage.io
spec:
  group: selftest.stowage.io
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string}
          status:
            type: object
            properties:
              phase: {type: string}
"#;

#[tokio::test]
async fn crds_custom_resources_status_patches_and_server_side_apply() -> anyhow::Result<()> {
    let bed = bed().await?;
    let crd: CustomResourceDefinition = serde_saphyr::from_str(WIDGET_CRD)?;
    stowage_e2e::crds::apply_crds(&bed.client(), &[crd]).await?;
    bed.with_namespace("crd", |client, ns| async move {
        let gvk = GroupVersionKind::gvk("selftest.stowage.io", "v1", "Widget");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "widgets");
        let widgets: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
        let apply = |size: i64| {
            json!({"apiVersion": "selftest.stowage.io/v1", "kind": "Widget",
                   "metadata": {"name": "w1"}, "spec": {"size": size, "color": "blue"}})
        };
        let params = PatchParams::apply("selftest");
        widgets.patch("w1", &params, &Patch::Apply(apply(1))).await?;
        let status = json!({"status": {"phase": "Ready"}});
        widgets
            .patch_status("w1", &PatchParams::default(), &Patch::Merge(status))
            .await?;
        widgets.patch("w1", &params, &Patch::Apply(apply(3))).await?;

        let widget = widgets.get("w1").await?;
        assert_eq!(
            widget.data["spec"]["size"], 3,
            "server-side apply changed the spec: {widget:?}"
        );
        assert_eq!(
            widget.data["status"]["phase"], "Ready",
            "the status patch stuck: {widget:?}"
        );
        let refused = widgets.patch("w1", &params, &Patch::Apply(apply(0))).await;
        assert!(refused.is_err(), "OpenAPI validation (minimum: 1) refuses size 0");
        anyhow::Ok(())
    })
    .await
}

#[tokio::test]
async fn a_deployment_gets_its_replica_set_from_the_controller_manager() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("deploy", |client, ns| async move {
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "ignored", "command": ["sleep", "3600"]}]}
                }
            }
        }))?;
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &deployment)
            .await?;
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client, &ns);
        let owner = wait_for("a ReplicaSet owned by Deployment web", || async {
            let list = replica_sets.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find_map(|rs| {
                rs.metadata
                    .owner_references?
                    .into_iter()
                    .find(|owner| owner.kind == "Deployment")
            }))
        })
        .await?;
        assert_eq!(owner.name, "web");
        anyhow::Ok(())
    })
    .await
}

#[tokio::test]
async fn namespace_deletion_completes() -> anyhow::Result<()> {
    let bed = bed().await?;
    let client = bed.client();
    let ns = stowage_e2e::namespace::create_namespace(&client, "deletion").await?;
    let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"a": "b"}}))?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config_map)
        .await?;
    let namespaces: Api<Namespace> = Api::all(client);
    namespaces.delete(&ns, &Default::default()).await?;
    wait_for(&format!("namespace {ns} to be gone"), || async {
        Ok(namespaces.get_opt(&ns).await?.is_none().then_some(()))
    })
    .await
}

#[tokio::test]
async fn with_namespace_propagates_a_failure_and_deletes_the_namespace() -> anyhow::Result<()> {
    let bed = bed().await?;
    let mut used = String::new();
    let result: anyhow::Result<()> = bed
        .with_namespace("failing", |_client, ns| {
            used = ns;
            async { anyhow::bail!("the body failed on purpose") }
        })
        .await;
    let err = result.expect_err("the body's error comes back");
    assert!(format!("{err:#}").contains("the body failed on purpose"), "{err:#}");
    let namespace = Api::<Namespace>::all(bed.client()).get_opt(&used).await?;
    let terminating = namespace.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some());
    assert!(terminating, "namespace {used} is being deleted");
    Ok(())
}

#[tokio::test]
async fn the_failure_dump_shows_objects_events_and_logs_but_no_secret_values() -> anyhow::Result<()> {
    let bed = bed().await?;
    let log = tempfile::NamedTempFile::new()?;
    std::fs::write(log.path(), "controller says: reconciled widget w1\n")?;
    bed.register_log("fake-controller", log.path());
    bed.with_namespace("dump", |client, ns| async move {
        let config_map: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "dumped-settings"}}))?;
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &config_map)
            .await?;
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("dumped-secret".into()),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([("password".to_string(), "hunter2-value".to_string())])),
            ..Default::default()
        };
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await?;
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some("dump-event".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("ConfigMap".into()),
                name: Some("dumped-settings".into()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            reason: Some("SelfTestReason".into()),
            message: Some("an event for the dump".into()),
            type_: Some("Warning".into()),
            ..Default::default()
        };
        Api::<Event>::namespaced(client, &ns)
            .create(&PostParams::default(), &event)
            .await?;

        let report = bed.dump_namespace(&ns).await;
        for expected in [
            "ConfigMap dumped-settings",
            "Secret dumped-secret",
            "password",
            "SelfTestReason",
            "an event for the dump",
            "controller says: reconciled widget w1",
        ] {
            assert!(report.contains(expected), "the dump shows {expected:?}:\n{report}");
        }
        assert!(!report.contains("hunter2"), "the dump hides Secret values:\n{report}");
        anyhow::Ok(())
    })
    .await
}

#[tokio::test]
async fn kubectl_talks_to_the_bed() -> anyhow::Result<()> {
    let bed = bed().await?;
    let output = bed.kubectl(["get", "namespace", "kube-system", "-o", "name"]).await?;
    assert_eq!(output.trim(), "namespace/kube-system");
    Ok(())
}

#[tokio::test]
async fn a_stopped_control_plane_leaves_no_process() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut plane = ControlPlane::start(dir.path()).await?;
    let namespaces: Api<Namespace> = Api::all(plane.client().await?);
    let default = namespaces.get_opt("default").await?;
    assert!(
        default.is_some(),
        "the default namespace exists once start returns; the end of the apiserver's log:\n{}",
        stowage_e2e::process::log_tail(&plane.log_paths()["kube-apiserver"], 30)
    );
    let pids = plane.pids();
    assert_eq!(pids.len(), 3, "etcd, kube-apiserver, kube-controller-manager: {pids:?}");
    plane.stop();
    for (name, pid) in pids {
        assert!(
            !stowage_e2e::process::pid_alive(pid),
            "{name} (pid {pid}) still runs after stop"
        );
    }
    Ok(())
}

#[tokio::test]
async fn etcd_fixture_serves_plain_clients() -> anyhow::Result<()> {
    let etcd = EtcdServer::start(EtcdOptions { tls: false })?;
    assert!(etcd.endpoint().starts_with("http://"));
    let mut client = etcd.connect().await?;
    client.put("greeting", "hello", None).await?;
    let response = client.get("greeting", None).await?;
    assert_eq!(response.kvs()[0].value(), b"hello");
    Ok(())
}

#[tokio::test]
async fn etcd_fixture_requires_and_accepts_client_certificates() -> anyhow::Result<()> {
    let etcd = EtcdServer::start(EtcdOptions { tls: true })?;
    assert!(etcd.endpoint().starts_with("https://"));
    let tls = etcd.tls().expect("TLS files exist when tls is on");
    assert!(tls.client.cert_pem.contains("BEGIN CERTIFICATE") && tls.client.key_path.is_file());

    let mut client = etcd.connect().await?;
    client.put("secret-key", "over-tls", None).await?;
    let response = client.get("secret-key", None).await?;
    assert_eq!(response.kvs()[0].value(), b"over-tls");

    // Without a client certificate the server refuses the request.
    let ca_only = etcd_client::ConnectOptions::new()
        .with_tls(etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca.cert_pem)));
    let refused = match etcd_client::Client::connect([etcd.endpoint()], Some(ca_only)).await {
        Ok(mut anonymous) => anonymous.get("secret-key", None).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "etcd refuses a client without a certificate");
    Ok(())
}
