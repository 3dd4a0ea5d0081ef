//! What the resource backup e2e tests share: a namespace full of objects (a CRD and its
//! custom resources with status, a Deployment owning a ReplicaSet owning Pods, ConfigMaps,
//! Secrets, RBAC), an EncryptionConfiguration, and helpers to read them back.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use serde_json::json;
use stowage_api::resource_set::ResourceSetSpec;
use stowage_e2e::wait_for;

pub const WIDGET_GROUP: &str = "rbk.stowage.io";
pub const SECRET_VALUE: &str = "correct-horse-battery-staple";
/// An aescbc key (32 bytes, base64) and a second one for rotation.
pub const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const KEY2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

pub fn encryption_config(keys: &[(&str, &str)]) -> String {
    let keys: String = keys
        .iter()
        .map(|(name, secret)| format!("      - {{name: {name}, secret: \"{secret}\"}}\n"))
        .collect();
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n{keys}  - identity: {{}}\n"
    )
}

pub fn widget_crd() -> CustomResourceDefinition {
    serde_saphyr::from_str(&format!(
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{WIDGET_GROUP}}}
spec:
  group: {WIDGET_GROUP}
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, properties: {{size: {{type: integer}}}}}}
          status: {{type: object, properties: {{phase: {{type: string}}}}}}
"#
    ))
    .unwrap()
}

pub fn widgets(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(WIDGET_GROUP, "v1", "Widget");
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    )
}

/// The ResourceSet of a test namespace: its objects, the widget CRD, and its Deployment as
/// a controllerReference.
pub fn resource_set(namespace: &str) -> ResourceSetSpec {
    serde_json::from_value(json!({
        "resourceSelectors": [
            {"namespaces": [namespace]},
            {"kinds": ["CustomResourceDefinition"], "resourceNames": [format!("widgets.{WIDGET_GROUP}")]}
        ],
        "controllerReferences": [{"apiVersion": "apps/v1", "resource": "deployments", "namespace": namespace, "name": "web"}]
    }))
    .unwrap()
}

/// Fills `namespace`: ConfigMap, Secret, a ServiceAccount token Secret, Role, RoleBinding, a
/// Widget with status, and a Deployment whose ReplicaSet and Pods the controller-manager
/// creates. The token Secret is made by hand, as users do on servers since 1.24 (which make
/// none by themselves); the token controller fills it on every version.
pub async fn populate(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    stowage_e2e::crds::apply_crds(client, &[widget_crd()]).await?;
    let apply = PatchParams::apply("rbk-test");
    let objects = [
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": {"app": "web"}}, "data": {"mode": "fast"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"password": SECRET_VALUE}}),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
               "metadata": {"name": "default-token", "annotations": {"kubernetes.io/service-account.name": "default"}}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    ];
    let discovery = kube::Discovery::new(client.clone()).run().await?;
    for object in objects {
        let object: DynamicObject = serde_json::from_value(object)?;
        let gvk = GroupVersionKind::try_from(object.types.as_ref().context("types")?)?;
        let (resource, _) = discovery.resolve_gvk(&gvk).context("resolving a kind")?;
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        let name = object.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &apply, &Patch::Apply(&object))
            .await
            .with_context(|| format!("creating {name}"))?;
    }
    let widgets = widgets(client, namespace);
    let widget = json!({"apiVersion": format!("{WIDGET_GROUP}/v1"), "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}});
    widgets.patch("w1", &apply, &Patch::Apply(&widget)).await?;
    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}})),
        )
        .await?;
    wait_for("the Deployment's ReplicaSet and its 2 Pods", || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        Ok((pods.list(&ListParams::default()).await?.items.len() == 2).then_some(()))
    })
    .await
}

/// Deletes `namespace` and waits until it is gone.
pub async fn delete_namespace(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(namespace, &Default::default()).await?;
    wait_for(&format!("namespace {namespace} to be deleted"), || async {
        Ok(namespaces.get_opt(namespace).await?.is_none().then_some(()))
    })
    .await
}

pub fn uid<K: kube::Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

pub fn owner_uids<K: kube::Resource>(object: &K) -> Vec<String> {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.clone())
        .collect()
}

/// Checks that `namespace` holds the restored objects, with owners re-linked.
pub async fn assert_restored(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let settings = config_maps.get("settings").await?;
    assert_eq!(settings.data.unwrap_or_default()["mode"], "fast");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let db = secrets.get("db").await?;
    assert_eq!(db.data.unwrap_or_default()["password"].0, SECRET_VALUE.as_bytes());
    let widget = widgets(client, namespace).get("w1").await?;
    assert_eq!(widget.data["spec"]["size"], 3);
    assert_eq!(
        widget.data["status"]["phase"], "Ready",
        "the custom resource's status is restored"
    );

    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get("web")
        .await?;
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let mine: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| owner_uids(*rs) == [uid(&deployment)])
        .collect();
    assert!(
        !mine.is_empty(),
        "a ReplicaSet points at the restored Deployment {}: {:?}",
        uid(&deployment),
        replica_sets.iter().map(owner_uids).collect::<Vec<_>>()
    );
    // The restore held the Deployment at zero replicas (a controllerReference) and scaled it
    // back: its ReplicaSet may still be bringing Pods back.
    wait_for("Pods owned by the live ReplicaSets", || async {
        let rs_uids: Vec<String> = Api::<ReplicaSet>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(uid)
            .collect();
        let pods = Api::<Pod>::namespaced(client.clone(), namespace)
            .list(&ListParams::default())
            .await?
            .items;
        let owned = !pods.is_empty()
            && pods.iter().all(|pod| {
                let owners = owner_uids(pod);
                owners.iter().all(|o| rs_uids.contains(o)) && !owners.is_empty()
            });
        Ok(owned.then_some(()))
    })
    .await
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
