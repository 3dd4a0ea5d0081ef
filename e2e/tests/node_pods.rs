//! Pods as a kubelet runs them, checked through the real kube-apiserver as a user would:
//! `pods/log` and its options, termination messages, probes, init containers, restart
//! policies and graceful deletion.

use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, AttachParams, DeleteParams, LogParams};
use serde_json::json;
use stowage_e2e::bed;
use stowage_e2e::bed::wait_for;
use stowage_e2e::support::{create, wait_until};
use tokio::io::AsyncReadExt as _;

fn statuses(pod: &Pod, init: bool) -> Vec<ContainerStatus> {
    let status = pod.status.clone().unwrap_or_default();
    let statuses = if init {
        status.init_container_statuses
    } else {
        status.container_statuses
    };
    statuses.unwrap_or_default()
}

/// The status of the Pod's first container.
fn first(pod: &Pod) -> ContainerStatus {
    statuses(pod, false).into_iter().next().unwrap_or_default()
}

fn terminated(status: &ContainerStatus) -> Option<ContainerStateTerminated> {
    status.state.as_ref()?.terminated.clone()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or_default()
}

/// (status, reason, message) of the Pod's condition `kind`.
fn condition(pod: &Pod, kind: &str) -> (String, String, String) {
    let conditions = pod
        .status
        .as_ref()
        .and_then(|status| status.conditions.clone())
        .unwrap_or_default();
    conditions
        .into_iter()
        .find(|condition| condition.type_ == kind)
        .map(|condition| {
            (
                condition.status,
                condition.reason.unwrap_or_default(),
                condition.message.unwrap_or_default(),
            )
        })
        .unwrap_or_default()
}

async fn wait_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    wait_until::<Pod>(client, ns, name, what, done).await
}

/// Runs `script` with `sh -c` in the Pod's first container; returns its stdout.
async fn exec_sh(pods: &Api<Pod>, name: &str, script: &str) -> anyhow::Result<String> {
    let params = AttachParams::default().stdin(false).stdout(true).stderr(false);
    let mut attached = pods.exec(name, ["sh", "-c", script], &params).await?;
    let mut out = String::new();
    attached
        .stdout()
        .expect("stdout was requested")
        .read_to_string(&mut out)
        .await?;
    attached.join().await?;
    Ok(out)
}

#[tokio::test]
async fn logs_serve_every_option_as_a_kubelet_does() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-logs", |client, ns| async move {
        // The first run prints and fails; the second prints to both streams, with a pause
        // before its last line so that sinceTime can select it alone.
        let script = "if [ -f /state/ran ]; then echo second-run; sleep 0.3; echo to-stderr >&2; sleep 1.2; \
                      echo later; head -c 20000 /dev/zero | tr '\\0' x; echo; exec sleep infinity; fi; \
                      touch /state/ran; echo first-run; exit 1";
        create::<Pod>(
            &client,
            &ns,
            "app",
            json!({
                "containers": [{
                    "name": "main", "image": "busybox", "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "state", "mountPath": "/state" }],
                }],
                "volumes": [{ "name": "state", "emptyDir": {} }],
            }),
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let long_line = format!("{}\n", "x".repeat(20000));
        let current = format!("second-run\nto-stderr\nlater\n{long_line}");
        wait_for("the second run's whole output in pods/log", || async {
            let logs = pods.logs("app", &LogParams::default()).await?;
            Ok((logs == current).then_some(()))
        })
        .await?;
        let logs = |params: LogParams| {
            let pods = pods.clone();
            async move { pods.logs("app", &params).await }
        };
        assert_eq!(first(&pods.get("app").await?).restart_count, 1);
        assert_eq!(
            logs(LogParams {
                previous: true,
                ..LogParams::default()
            })
            .await?,
            "first-run\n"
        );
        assert_eq!(
            logs(LogParams {
                tail_lines: Some(2),
                ..LogParams::default()
            })
            .await?,
            format!("later\n{long_line}")
        );
        assert_eq!(
            logs(LogParams {
                limit_bytes: Some(8),
                ..LogParams::default()
            })
            .await?,
            "second-r"
        );

        let stamped = logs(LogParams {
            timestamps: true,
            tail_lines: Some(4),
            ..LogParams::default()
        })
        .await?;
        let mut times = Vec::new();
        let mut contents = String::new();
        for line in stamped.lines() {
            let (time, content) = line.split_once(' ').expect("a timestamp, a space and the line");
            assert!(time.ends_with('Z') && time.contains('T'), "RFC 3339 timestamp: {time}");
            times.push(time.parse::<Timestamp>()?);
            contents.push_str(content);
            contents.push('\n');
        }
        assert_eq!(contents, current, "the lines behind the timestamps");
        assert!(
            times.windows(2).all(|pair| pair[0] <= pair[1]),
            "timestamps in order: {times:?}"
        );

        // sinceTime (whole seconds through the API server) from the time of "later": the
        // stderr line came at least a second earlier.
        let since_later = logs(LogParams {
            since_time: Some(times[2]),
            ..LogParams::default()
        })
        .await?;
        assert_eq!(since_later, format!("later\n{long_line}"));
        let recent = logs(LogParams {
            since_seconds: Some(3600),
            ..LogParams::default()
        })
        .await?;
        assert_eq!(recent, current);
        wait_for("sinceSeconds=1 to leave out the lines written earlier", || async {
            let recent = pods
                .logs(
                    "app",
                    &LogParams {
                        since_seconds: Some(1),
                        ..LogParams::default()
                    },
                )
                .await?;
            Ok(recent.is_empty().then_some(()))
        })
        .await?;

        // A container that never restarted has no previous run: kubelet's 400.
        create::<Pod>(
            &client,
            &ns,
            "fresh",
            json!({ "containers": [{ "name": "main", "image": "busybox" }] }),
        )
        .await?;
        wait_pod(&client, &ns, "fresh", "to run", |pod| phase(pod) == "Running").await?;
        let error = pods
            .logs(
                "fresh",
                &LogParams {
                    previous: true,
                    ..LogParams::default()
                },
            )
            .await
            .expect_err("no previous run");
        let message = format!("{error}");
        assert!(
            message.contains("previous terminated container \"main\" in pod \"fresh\" not found"),
            "error: {message}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_followed_log_streams_output_and_ends_with_its_run() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-follow", |client, ns| async move {
        // Each run prints, pauses, prints and fails: the container restarts (Always).
        let script = "echo run-start; for i in 1 2 3; do sleep 0.5; echo tick $i; done; exit 1";
        create::<Pod>(
            &client,
            &ns,
            "looper",
            json!({
                "containers": [{ "name": "main", "image": "busybox", "command": ["sh", "-c", script] }],
            }),
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_pod(&client, &ns, "looper", "to run", |pod| {
            first(pod).state.is_some_and(|state| state.running.is_some())
        })
        .await?;
        let stream = pods
            .log_stream(
                "looper",
                &LogParams {
                    follow: true,
                    ..LogParams::default()
                },
            )
            .await?;
        let lines: Vec<String> = stream.lines().try_collect().await?;
        // The follow ends with the run it followed, though the container is restarted.
        assert_eq!(lines.last().map(String::as_str), Some("tick 3"), "followed: {lines:?}");
        assert!(
            lines.iter().filter(|line| *line == "run-start").count() <= 1,
            "followed: {lines:?}"
        );
        wait_pod(&client, &ns, "looper", "to restart", |pod| {
            first(pod).restart_count >= 1
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn termination_messages_come_from_the_file_or_the_log() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("pods-termination", |client, ns| async move {
        let job = |script: &str, extra: serde_json::Value| {
            let mut container = json!({ "name": "main", "image": "busybox", "command": ["sh", "-c", script] });
            if let (Some(container), Some(extra)) = (container.as_object_mut(), extra.as_object()) {
                container.extend(extra.clone());
            }
            json!({ "restartPolicy": "Never", "containers": [container] })
        };
        create::<Pod>(
            &client,
            &ns,
            "file",
            job("echo 'bye from file' > /dev/termination-log; exit 3", json!({})),
        )
        .await?;
        create::<Pod>(
            &client,
            &ns,
            "custom-path",
            job(
                "echo done > /tmp/stowage-test-termination-message",
                json!({ "terminationMessagePath": "/tmp/stowage-test-termination-message" }),
            ),
        )
        .await?;
        let fallback = json!({ "terminationMessagePolicy": "FallbackToLogsOnError" });
        create::<Pod>(
            &client,
            &ns,
            "fallback",
            job(
                "for i in $(seq 100 199); do echo line-$i; done; exit 1",
                fallback.clone(),
            ),
        )
        .await?;
        create::<Pod>(&client, &ns, "fallback-ok", job("echo fine", fallback.clone())).await?;
        create::<Pod>(
            &client,
            &ns,
            "file-wins",
            job("echo from-log; echo from-file > /dev/termination-log; exit 1", fallback),
        )
        .await?;

        let ended = |name: &'static str| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let pod = wait_pod(&client, &ns, name, "to end", |pod| {
                    matches!(phase(pod), "Succeeded" | "Failed")
                })
                .await?;
                anyhow::Ok(terminated(&first(&pod)).expect("a terminated container"))
            }
        };
        let file = ended("file").await?;
        assert_eq!((file.exit_code, file.reason.as_deref()), (3, Some("Error")));
        assert_eq!(file.message.as_deref(), Some("bye from file\n"));
        let custom = ended("custom-path").await?;
        assert_eq!((custom.exit_code, custom.reason.as_deref()), (0, Some("Completed")));
        assert_eq!(custom.message.as_deref(), Some("done\n"));
        let expected: String = (120..200).map(|i| format!("line-{i}\n")).collect();
        assert_eq!(
            ended("fallback").await?.message.as_deref(),
            Some(expected.as_str()),
            "the last 80 lines of the log"
        );
        assert_eq!(
            ended("fallback-ok").await?.message,
            None,
            "a container that succeeded gets no log fallback"
        );
        assert_eq!(ended("file-wins").await?.message.as_deref(), Some("from-file\n"));
        Ok(())
    })
    .await
}

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
