//! The bed's several nodes, its scheduler and attach-detach controller, and what a Pod sees of
//! the cluster from inside, all through the real kube-apiserver: where Pods land (spreading,
//! nodeSelector, node affinity, taints and tolerations, cordoned nodes, PersistentVolume node
//! affinity), why a Pod that fits nowhere stays Pending, a ReadWriteOnce volume attached to one
//! node at a time, and a process calling the API server with its projected ServiceAccount token.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage_e2e::bed::{bed, wait_for};
use stowage_e2e::node::NodeSimulator;
use stowage_e2e::support::{create, events, wait_until};
use stowage_e2e::testbed::NODES;

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.node_name.clone())
        .unwrap_or_default()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("")
}

/// An idle Pod (`sleep infinity`) with `extra` merged into its spec.
async fn idle_pod(client: &kube::Client, namespace: &str, name: &str, extra: serde_json::Value) -> anyhow::Result<Pod> {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{ "name": "main", "image": "debian:12" }],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    create::<Pod>(client, namespace, name, spec).await
}

async fn running(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Pod> {
    wait_until(client, namespace, name, "to be Running", |pod: &Pod| {
        phase(pod) == "Running"
    })
    .await
}

/// The PodScheduled condition of a Pod once the scheduler gave up on it: its reason and message.
async fn unschedulable(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<(String, String)> {
    let pod = wait_until(client, namespace, name, "to be marked unschedulable", |pod: &Pod| {
        scheduled_condition(pod).is_some_and(|(status, _, _)| status == "False")
    })
    .await?;
    let (_, reason, message) = scheduled_condition(&pod).unwrap_or_default();
    assert_eq!(node_of(&pod), "", "an unschedulable Pod has no node");
    assert_eq!(phase(&pod), "Pending");
    Ok((reason, message))
}

fn scheduled_condition(pod: &Pod) -> Option<(String, String, String)> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == "PodScheduled")?;
    Some((
        condition.status.clone(),
        condition.reason.clone().unwrap_or_default(),
        condition.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test]
async fn pods_created_together_spread_over_the_three_nodes() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("sched-spread", |client, ns| async move {
        let names: Vec<String> = (0..9).map(|index| format!("spread-{index}")).collect();
        for name in &names {
            idle_pod(&client, &ns, name, json!({})).await?;
        }
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for name in &names {
            let pod = running(&client, &ns, name).await?;
            *per_node.entry(node_of(&pod)).or_default() += 1;
        }
        let expected: Vec<&str> = NODES.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            per_node.keys().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "nine Pods created together use every node: {per_node:?}"
        );
        let seen = events(&client, &ns, "spread-0").await?;
        let node = node_of(&Api::<Pod>::namespaced(client.clone(), &ns).get("spread-0").await?);
        let assigned = format!("Successfully assigned {ns}/spread-0 to {node}");
        assert!(
            seen.contains(&("Scheduled".to_owned(), assigned.clone())),
            "the Scheduled Event says {assigned:?}: {seen:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn node_selectors_and_affinities_choose_the_node() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("sched-affinity", |client, ns| async move {
        let (first, second, third) = (NODES[0], NODES[1], NODES[2]);
        idle_pod(
            &client,
            &ns,
            "by-selector",
            json!({ "nodeSelector": { "kubernetes.io/hostname": third.0 } }),
        )
        .await?;
        let required = |term: serde_json::Value| {
            json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [term] } } } })
        };
        let zone_term = json!({ "matchExpressions": [
            { "key": "topology.kubernetes.io/zone", "operator": "In", "values": [second.1] },
            { "key": "kubernetes.io/os", "operator": "Exists" },
        ] });
        idle_pod(&client, &ns, "by-zone", required(zone_term)).await?;
        let name_term = json!({ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": [first.0] }] });
        idle_pod(&client, &ns, "by-name", required(name_term)).await?;
        // Not the first node (required), and the third rather than the second (preferred).
        let preferring = json!({ "affinity": { "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": { "nodeSelectorTerms": [{ "matchExpressions": [
                { "key": "kubernetes.io/hostname", "operator": "NotIn", "values": [first.0] }] }] },
            "preferredDuringSchedulingIgnoredDuringExecution": [
                { "weight": 10, "preference": { "matchExpressions": [
                    { "key": "topology.kubernetes.io/zone", "operator": "In", "values": [second.1] }] } },
                { "weight": 90, "preference": { "matchExpressions": [
                    { "key": "topology.kubernetes.io/zone", "operator": "In", "values": [third.1] }] } },
            ],
        } } });
        idle_pod(&client, &ns, "by-preference", preferring).await?;
        for (pod, node) in [
            ("by-selector", third.0),
            ("by-zone", second.0),
            ("by-name", first.0),
            ("by-preference", third.0),
        ] {
            assert_eq!(node_of(&running(&client, &ns, pod).await?), node, "where {pod} runs");
        }

        idle_pod(
            &client,
            &ns,
            "nowhere",
            json!({ "nodeSelector": { "disktype": "tape" } }),
        )
        .await?;
        let (reason, message) = unschedulable(&client, &ns, "nowhere").await?;
        assert_eq!(reason, "Unschedulable");
        assert!(
            message.starts_with("0/")
                && message.contains(" nodes are available: ")
                && message.contains(" node(s) didn't match Pod's node affinity/selector"),
            "the scheduler's message: {message}"
        );
        let warned = wait_for("the FailedScheduling Event of nowhere", || async {
            let seen = events(&client, &ns, "nowhere").await?;
            Ok(seen.into_iter().find(|(reason, _)| reason == "FailedScheduling"))
        })
        .await?;
        assert_eq!(warned.1, message, "the Event repeats the condition's message");
        Ok(())
    })
    .await
}

/// A Node of the test's own, tainted from its registration on so that no other test's Pod lands
/// on it; removed (with its Pods) when the test ends.
struct PrivateNode {
    node: Option<NodeSimulator>,
    name: String,
    client: kube::Client,
    _dir: tempfile::TempDir,
}

impl PrivateNode {
    async fn start(client: &kube::Client, name: &str, taint: serde_json::Value) -> anyhow::Result<Self> {
        let node: Node = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            "spec": { "taints": [taint] },
        }))?;
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        let dir = tempfile::tempdir()?;
        let simulator = NodeSimulator::start(client.clone(), name, "stowage-zone-private", dir.path()).await?;
        Ok(PrivateNode {
            node: Some(simulator),
            name: name.to_owned(),
            client: client.clone(),
            _dir: dir,
        })
    }

    async fn remove(mut self, namespace: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.delete_collection(&DeleteParams::default().grace_period(0), &Default::default())
            .await?;
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
        Api::<Node>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

#[tokio::test]
async fn taints_tolerations_and_cordons_decide_who_may_run_on_a_node() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("sched-taints", |client, ns| async move {
        let node_name = format!("private-{ns}");
        let taint = json!({ "key": "stowage.io/dedicated", "value": ns, "effect": "NoSchedule" });
        let node = PrivateNode::start(&client, &node_name, taint).await?;
        let outcome = async {
            let there = json!({ "kubernetes.io/hostname": node_name });
            idle_pod(&client, &ns, "intolerant", json!({ "nodeSelector": there })).await?;
            let (_, message) = unschedulable(&client, &ns, "intolerant").await?;
            let untolerated = format!("1 node(s) had untolerated taint {{stowage.io/dedicated: {ns}}}");
            assert!(
                message.contains(&untolerated),
                "{message:?} names the taint ({untolerated})"
            );

            let tolerating =
                json!([{ "key": "stowage.io/dedicated", "operator": "Equal", "value": ns, "effect": "NoSchedule" }]);
            idle_pod(
                &client,
                &ns,
                "tolerant",
                json!({ "nodeSelector": there, "tolerations": tolerating }),
            )
            .await?;
            assert_eq!(node_of(&running(&client, &ns, "tolerant").await?), node_name);

            let nodes: Api<Node> = Api::all(client.clone());
            let cordon = |on: bool| json!({ "spec": { "unschedulable": on } });
            nodes
                .patch(&node_name, &PatchParams::default(), &Patch::Merge(cordon(true)))
                .await?;
            idle_pod(
                &client,
                &ns,
                "cordoned",
                json!({ "nodeSelector": there, "tolerations": tolerating }),
            )
            .await?;
            let (_, message) = unschedulable(&client, &ns, "cordoned").await?;
            assert!(
                message.contains("1 node(s) were unschedulable"),
                "{message:?} names the cordon"
            );
            nodes
                .patch(&node_name, &PatchParams::default(), &Patch::Merge(cordon(false)))
                .await?;
            let pod = running(&client, &ns, "cordoned").await?;
            assert_eq!(node_of(&pod), node_name, "uncordoning the node lets the waiting Pod in");
            assert_eq!(
                scheduled_condition(&pod).map(|(status, _, _)| status).as_deref(),
                Some("True")
            );
            anyhow::Ok(())
        }
        .await;
        node.remove(&ns).await?;
        outcome
    })
    .await
}

#[tokio::test]
async fn a_volumes_node_affinity_places_its_pods() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("sched-pv", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        let local = |name: &str, host: &str, claim: &str| -> anyhow::Result<PersistentVolume> {
            Ok(serde_json::from_value(json!({
                "metadata": { "name": name },
                "spec": {
                    "capacity": { "storage": "1Gi" },
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": "",
                    "hostPath": { "path": dir.path().join(name), "type": "DirectoryOrCreate" },
                    "claimRef": { "namespace": ns, "name": claim },
                    "nodeAffinity": { "required": { "nodeSelectorTerms": [{ "matchExpressions": [
                        { "key": "kubernetes.io/hostname", "operator": "In", "values": [host] }] }] } },
                },
            }))?)
        };
        let (pinned, stranded) = (format!("{ns}-pinned"), format!("{ns}-stranded"));
        volumes
            .create(&PostParams::default(), &local(&pinned, NODES[2].0, "pinned")?)
            .await?;
        volumes
            .create(&PostParams::default(), &local(&stranded, "no-such-node", "stranded")?)
            .await?;
        let outcome = async {
            for (claim, volume) in [("pinned", &pinned), ("stranded", &stranded)] {
                let spec = json!({ "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume,
                    "resources": { "requests": { "storage": "1Gi" } } });
                create::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&client, &ns, claim, spec).await?;
                let mount = json!({
                    "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": claim } }],
                });
                idle_pod(&client, &ns, claim, mount).await?;
            }
            assert_eq!(node_of(&running(&client, &ns, "pinned").await?), NODES[2].0);
            let (_, message) = unschedulable(&client, &ns, "stranded").await?;
            assert!(
                message.contains("node(s) had volume node affinity conflict"),
                "{message}"
            );
            anyhow::Ok(())
        }
        .await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete_collection(&DeleteParams::default().grace_period(0), &Default::default())
            .await?;
        for volume in [&pinned, &stranded] {
            volumes.delete(volume, &DeleteParams::default()).await?;
        }
        outcome
    })
    .await
}

#[tokio::test]
async fn a_read_write_once_volume_is_attached_to_one_node_at_a_time() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("sched-rwo", |client, ns| async move {
        let spec = json!({ "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } });
        create::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&client, &ns, "data", spec).await?;
        let on = |node: &str| {
            json!({
                "nodeSelector": { "kubernetes.io/hostname": node },
                "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": "data" } }],
                "containers": [{ "name": "main", "image": "debian:12",
                    "volumeMounts": [{ "name": "data", "mountPath": "/data" }] }],
            })
        };
        idle_pod(&client, &ns, "first", on(NODES[0].0)).await?;
        running(&client, &ns, "first").await?;
        idle_pod(&client, &ns, "elsewhere", on(NODES[1].0)).await?;
        idle_pod(&client, &ns, "beside", on(NODES[0].0)).await?;
        running(&client, &ns, "beside").await?;

        let (_, message) = wait_for("the Multi-Attach error of elsewhere", || async {
            let seen = events(&client, &ns, "elsewhere").await?;
            Ok(seen.into_iter().find(|(reason, _)| reason == "FailedAttachVolume"))
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let waiting = pods.get("elsewhere").await?;
        assert_eq!(
            node_of(&waiting),
            NODES[1].0,
            "the scheduler placed it (attachment is not its concern)"
        );
        assert_eq!(phase(&waiting), "Pending");
        let state = waiting
            .status
            .and_then(|status| status.container_statuses)
            .unwrap_or_default();
        let reason = state
            .first()
            .and_then(|status| status.state.as_ref()?.waiting.as_ref()?.reason.clone());
        assert_eq!(reason.as_deref(), Some("ContainerCreating"));
        assert!(
            message.starts_with("Multi-Attach error for volume \"pvc-")
                && message.contains("\" Volume is already used by pod(s) first"),
            "the attach-detach controller's words: {message}"
        );

        for name in ["first", "beside"] {
            pods.delete(name, &DeleteParams::default()).await?;
        }
        running(&client, &ns, "elsewhere").await?;
        let node = Api::<Node>::all(client.clone()).get(NODES[1].0).await?;
        let attached: Vec<String> = node
            .status
            .and_then(|status| status.volumes_attached)
            .unwrap_or_default()
            .into_iter()
            .map(|volume| volume.name)
            .collect();
        assert!(
            attached.iter().any(|name| name.contains("^pvc-")),
            "{} lists the volume as attached: {attached:?}",
            NODES[1].0
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_process_in_a_pod_calls_the_api_server_with_its_projected_token() -> anyhow::Result<()> {
    let bed = bed().await?;
    which_curl()?;
    bed.with_namespace("sched-token", |client, ns| async move {
        stowage_e2e::support::apply(&client, &ns, json!({
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "reader" },
        }))
        .await?;
        stowage_e2e::support::apply(&client, &ns, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": { "name": "pod-reader" },
            "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"] }],
        }))
        .await?;
        stowage_e2e::support::apply(&client, &ns, json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": "reader" },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
            "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": ns }],
        }))
        .await?;
        // What a current API server's admission injects as `kube-api-access-*`, set explicitly.
        let script = r#"
            dir=/var/run/secrets/kubernetes.io/serviceaccount
            echo "service=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT link=$KUBERNETES_PORT"
            call() {
                curl -sS --cacert "$dir/ca.crt" -H "Authorization: Bearer $(cat "$dir/token")" \
                    -o /tmp/body -w "$1 %{http_code}\n" \
                    "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$(cat "$dir/namespace")/$1"
            }
            call pods && call secrets && cat /tmp/body
        "#;
        let spec = json!({
            "restartPolicy": "Never",
            "serviceAccountName": "reader",
            "automountServiceAccountToken": false,
            "volumes": [{ "name": "kube-api-access", "projected": { "defaultMode": 420, "sources": [
                { "serviceAccountToken": { "path": "token", "expirationSeconds": 3607 } },
                { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{ "path": "namespace",
                    "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ] } }, { "name": "tmp", "emptyDir": {} }],
            "containers": [{
                "name": "client", "image": "curlimages/curl",
                "command": ["sh", "-c", script],
                "volumeMounts": [
                    { "name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true },
                    { "name": "tmp", "mountPath": "/tmp" },
                ],
            }],
        });
        create::<Pod>(&client, &ns, "client", spec).await?;
        let pod = wait_until(&client, &ns, "client", "to finish", |pod: &Pod| {
            matches!(phase(pod), "Succeeded" | "Failed")
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let logs = pods.logs("client", &LogParams::default()).await?;
        assert_eq!(phase(&pod), "Succeeded", "the client's output: {logs}");
        let url = url_host_port(&bed.info().apiserver_url);
        assert!(
            logs.contains(&format!("service={url} link=tcp://{url}")),
            "KUBERNETES_SERVICE_* and KUBERNETES_PORT name the API server: {logs}"
        );
        assert!(logs.contains("pods 200"), "its Role lets it list Pods: {logs}");
        assert!(logs.contains("secrets 403"), "and nothing else: {logs}");
        let identity = format!("system:serviceaccount:{ns}:reader");
        assert!(logs.contains(&identity), "the API server knows it as {identity}: {logs}");
        Ok(())
    })
    .await
}

/// `https://127.0.0.1:6443` → `127.0.0.1:6443`.
fn url_host_port(url: &str) -> String {
    url.trim_start_matches("https://").trim_end_matches('/').to_owned()
}

fn which_curl() -> anyhow::Result<()> {
    let found = std::process::Command::new("curl").arg("--version").output();
    anyhow::ensure!(
        found.is_ok_and(|output| output.status.success()),
        "this test runs curl in a Pod (as a host process): install it with `apt-get install curl`"
    );
    Ok(())
}
