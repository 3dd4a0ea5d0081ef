//! Pods as a kubelet runs them, checked through the real kube-apiserver as a user would:
//! probes, init containers, restart policies and graceful deletion.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, LogParams};
use serde_json::json;
use stowage_e2e::bed;
use stowage_e2e::bed::wait_for;
use stowage_e2e::pods::{condition, exec_sh, first, phase, statuses, terminated, wait_pod};
use stowage_e2e::support::{create, wait_until};

#[tokio::test]
async fn a_readiness_probe_gates_a_deployments_ready_replicas() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-readiness", |client, ns| async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        // An HTTP server whose /ready exists only once the test creates the file.
        let server = format!("mkdir -p /www && cd /www && exec python3 -m http.server --bind 127.0.0.1 {port}");
        create::<Deployment>(&client, &ns, "web", json!({
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{
                    "name": "web", "image": "python", "command": ["sh", "-c", server],
                    "volumeMounts": [{ "name": "www", "mountPath": "/www" }],
                    "readinessProbe": { "httpGet": { "path": "/ready", "port": port }, "periodSeconds": 1, "failureThreshold": 1 },
                }], "volumes": [{ "name": "www", "emptyDir": {} }] },
            },
        }))
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod_name = wait_for("the Deployment's Pod to run but not be ready", || async {
            let list = pods.list(&Default::default()).await?;
            Ok(list.items.into_iter().find(|pod| {
                phase(pod) == "Running" && condition(pod, "ContainersReady").1 == "ContainersNotReady"
            }))
        })
        .await?
        .metadata
        .name
        .unwrap_or_default();
        let pod = pods.get(&pod_name).await?;
        assert_eq!(condition(&pod, "Ready"), ("False".into(), "ContainersNotReady".into(), "containers with unready status: [web]".into()));
        assert!(!first(&pod).ready);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let ready_replicas = |deployment: &Deployment| deployment.status.as_ref().and_then(|status| status.ready_replicas).unwrap_or(0);
        assert_eq!(ready_replicas(&deployments.get("web").await?), 0);

        exec_sh(&pods, &pod_name, "touch /www/ready").await?;
        wait_until::<Deployment>(&client, &ns, "web", "to have 1 ready replica", |d| ready_replicas(d) == 1).await?;
        let pod = pods.get(&pod_name).await?;
        assert_eq!(condition(&pod, "Ready").0, "True");
        assert!(first(&pod).ready);

        exec_sh(&pods, &pod_name, "rm /www/ready").await?;
        wait_until::<Deployment>(&client, &ns, "web", "to have no ready replica", |d| ready_replicas(d) == 0).await?;
        assert_eq!(first(&pods.get(&pod_name).await?).restart_count, 0, "readiness never restarts");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-liveness", |client, ns| async move {
        create::<Pod>(&client, &ns, "app", json!({
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "echo run; touch /probe/alive; exec sleep infinity"],
                "volumeMounts": [{ "name": "probe", "mountPath": "/probe" }],
                "livenessProbe": { "exec": { "command": ["test", "-f", "/probe/alive"] }, "periodSeconds": 1, "failureThreshold": 2 },
            }],
            "volumes": [{ "name": "probe", "emptyDir": {} }],
        }))
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_pod(&client, &ns, "app", "to be ready", |pod| first(pod).ready).await?;
        exec_sh(&pods, "app", "rm /probe/alive").await?;
        let pod = wait_pod(&client, &ns, "app", "to be restarted and ready again", |pod| {
            let status = first(pod);
            status.restart_count == 1 && status.ready
        })
        .await?;
        let last = first(&pod).last_state.and_then(|state| state.terminated).expect("the killed run");
        assert_eq!((last.exit_code, last.reason.as_deref()), (143, Some("Error")), "sleep died of SIGTERM");
        assert_eq!(pods.logs("app", &LogParams { previous: true, ..LogParams::default() }).await?, "run\n");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_startup_probe_holds_back_the_other_probes() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-startup", |client, ns| async move {
        let started = json!({ "exec": { "command": ["test", "-f", "/probe/started"] }, "periodSeconds": 1, "failureThreshold": 1 });
        create::<Pod>(&client, &ns, "slow", json!({
            "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "infinity"],
                "volumeMounts": [{ "name": "probe", "mountPath": "/probe" }],
                "startupProbe": { "exec": { "command": ["test", "-f", "/probe/started"] }, "periodSeconds": 1, "failureThreshold": 600 },
                // Would kill the container at once if it ran before the startup probe succeeded.
                "livenessProbe": started.clone(),
                "readinessProbe": started,
            }],
            "volumes": [{ "name": "probe", "emptyDir": {} }],
        }))
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = wait_pod(&client, &ns, "slow", "to run", |pod| phase(pod) == "Running").await?;
        let status = first(&pod);
        assert_eq!((status.started, status.ready), (Some(false), false));
        exec_sh(&pods, "slow", "touch /probe/started").await?;
        let pod = wait_pod(&client, &ns, "slow", "to be started and ready", |pod| first(pod).ready).await?;
        let status = first(&pod);
        assert_eq!(status.started, Some(true));
        assert_eq!(status.restart_count, 0, "liveness waited for the startup probe");
        assert_eq!(condition(&pod, "Ready").0, "True");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn init_containers_run_in_order_before_the_containers() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-init", |client, ns| async move {
        let step = |name: &str, script: &str| json!({
            "name": name, "image": "busybox", "command": ["sh", "-c", script],
            "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
        });
        create::<Pod>(&client, &ns, "ordered", json!({
            "initContainers": [step("first", "sleep 0.5; echo first >> /work/order"), step("second", "echo second >> /work/order")],
            "containers": [step("main", "echo main >> /work/order; exec sleep infinity")],
            "volumes": [{ "name": "work", "emptyDir": {} }],
        }))
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod = wait_pod(&client, &ns, "ordered", "to run", |pod| phase(pod) == "Running").await?;
        assert_eq!(exec_sh(&pods, "ordered", "cat /work/order").await?, "first\nsecond\nmain\n");
        assert_eq!(condition(&pod, "Initialized").0, "True");
        for init in statuses(&pod, true) {
            let done = terminated(&init).expect("init containers are terminated");
            assert_eq!((done.exit_code, done.reason.as_deref()), (0, Some("Completed")), "{}", init.name);
        }

        // restartPolicy Never: a failing init container fails the Pod; the containers never run.
        create::<Pod>(&client, &ns, "broken", json!({
            "restartPolicy": "Never",
            "initContainers": [step("setup", "exit 4")],
            "containers": [step("main", "sleep infinity")],
            "volumes": [{ "name": "work", "emptyDir": {} }],
        }))
        .await?;
        let pod = wait_pod(&client, &ns, "broken", "to fail", |pod| phase(pod) == "Failed").await?;
        let setup = terminated(&statuses(&pod, true)[0]).expect("the init container ended");
        assert_eq!((setup.exit_code, setup.reason.as_deref()), (4, Some("Error")));
        let main = first(&pod).state.and_then(|state| state.waiting).expect("main never started");
        assert_eq!(main.reason.as_deref(), Some("PodInitializing"));
        assert_eq!(condition(&pod, "Initialized").1, "ContainersNotInitialized");

        // OnFailure: the init container is retried until it succeeds.
        let flaky = "if [ -f /work/tried ]; then exit 0; fi; touch /work/tried; exit 1";
        create::<Pod>(&client, &ns, "flaky", json!({
            "restartPolicy": "OnFailure",
            "initContainers": [step("setup", flaky)],
            "containers": [step("main", "sleep infinity")],
            "volumes": [{ "name": "work", "emptyDir": {} }],
        }))
        .await?;
        let pod = wait_pod(&client, &ns, "flaky", "to run", |pod| phase(pod) == "Running").await?;
        assert_eq!(statuses(&pod, true)[0].restart_count, 1);
        Ok(())
    })
    .await
}

/// A Pod whose process writes markers (with its own timestamps) to a host directory, so that
/// what it saw survives the Pod.
async fn marker_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    dir: &str,
    script: &str,
    grace: i64,
) -> anyhow::Result<()> {
    create::<Pod>(client, ns, name, json!({
        "terminationGracePeriodSeconds": grace,
        "containers": [{
            "name": "main", "image": "busybox", "command": ["sh", "-c", script],
            "volumeMounts": [{ "name": "markers", "mountPath": "/markers" }],
            "lifecycle": { "preStop": { "exec": { "command": ["sh", "-c", "echo \"$(date +%s.%N) prestop\" >> /markers/log"] } } },
        }],
        "volumes": [{ "name": "markers", "hostPath": { "path": dir } }],
    }))
    .await?;
    wait_until::<Pod>(client, ns, name, "to run", |pod| phase(pod) == "Running").await?;
    let log = std::path::Path::new(dir).join("log");
    wait_for("the process to start", || async { Ok(log.exists().then_some(())) }).await
}

/// The markers the process wrote, without their timestamps.
fn markers(dir: &str) -> anyhow::Result<(String, Vec<String>)> {
    let log = std::fs::read_to_string(std::path::Path::new(dir).join("log"))?;
    let names = log
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(_, name)| name.to_owned())
        .collect();
    Ok((log, names))
}

#[tokio::test]
async fn deletion_gives_a_process_its_grace_period_then_kills_it() -> anyhow::Result<()> {
    let bed = bed().await?;
    let (graceful_dir, stubborn_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let graceful = graceful_dir.path().to_string_lossy().into_owned();
    let stubborn = stubborn_dir.path().to_string_lossy().into_owned();
    bed.with_namespace("pods-grace", |client, ns| async move {
        let mark = |what: &str| format!("echo \"$(date +%s.%N) {what}\" >> /markers/log");
        // Cleans up for a second after SIGTERM, well within its 30 s.
        let trapping = format!(
            "trap '{}; sleep 1; {}; exit 0' TERM; {}; while :; do sleep 0.1; done",
            mark("term"),
            mark("cleaned-up"),
            mark("started")
        );
        marker_pod(&client, &ns, "graceful", &graceful, &trapping, 30).await?;
        // Ignores SIGTERM and keeps ticking until SIGKILL.
        let ignoring = format!(
            "trap '{}' TERM; {}; while :; do {}; sleep 0.2; done",
            mark("term"),
            mark("started"),
            mark("tick")
        );
        marker_pod(&client, &ns, "stubborn", &stubborn, &ignoring, 30).await?;

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods.delete("graceful", &DeleteParams::default()).await?;
        // The deletion's own grace period (3 s) overrides the Pod's 30 s.
        pods.delete(
            "stubborn",
            &DeleteParams {
                grace_period_seconds: Some(3),
                ..DeleteParams::default()
            },
        )
        .await?;
        for name in ["graceful", "stubborn"] {
            wait_for(&format!("pod {name} to be removed"), || async {
                Ok(pods.get_opt(name).await?.is_none().then_some(()))
            })
            .await?;
        }

        let (log, names) = markers(&graceful)?;
        println!("graceful:\n{log}");
        assert_eq!(
            names,
            ["started", "prestop", "term", "cleaned-up"],
            "preStop, then SIGTERM, then its own exit"
        );

        let (log, names) = markers(&stubborn)?;
        println!("stubborn:\n{log}");
        let term = names
            .iter()
            .position(|name| name == "term")
            .expect("SIGTERM reached the process");
        let prestop = names
            .iter()
            .position(|name| name == "prestop")
            .expect("the preStop hook ran");
        assert!(prestop < term, "preStop runs before SIGTERM: {names:?}");
        assert!(
            names[term + 1..].iter().any(|name| name == "tick"),
            "it ran on after SIGTERM: {names:?}"
        );
        // It never exits on its own: the Pod is removed only after its process is gone, so the
        // ticks ending the log were cut short by SIGKILL.
        assert_eq!(names.last().map(String::as_str), Some("tick"), "{names:?}");
        Ok(())
    })
    .await
}
