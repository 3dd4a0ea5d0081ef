//! Self-tests of the node simulator, through the real kube-apiserver: exec (stdin, stdout,
//! stderr, exit codes, 100 MiB of output), Pod phases, env and volumes, logs, deletion, and a
//! Deployment's Pod scheduled and run without a real scheduler or kubelet.

use std::time::Instant;

use futures::AsyncBufReadExt as _;
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::json;
use stowage_e2e::bed;
use stowage_e2e::bed::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A Pod from its `spec` (JSON), created in `namespace`.
async fn create_pod(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<Api<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": spec,
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    Ok(pods)
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, phase: &str) -> anyhow::Result<Pod> {
    wait_for(&format!("pod {name} to be {phase}"), || async {
        let pod = pods.get(name).await?;
        let current = pod.status.as_ref().and_then(|status| status.phase.clone());
        Ok((current.as_deref() == Some(phase)).then_some(pod))
    })
    .await
}

/// An idle Pod (no command: the node runs it as `sleep infinity`), Running.
async fn idle_pod(client: &kube::Client, namespace: &str) -> anyhow::Result<Api<Pod>> {
    let pods = create_pod(
        client,
        namespace,
        "idle",
        json!({ "containers": [{ "name": "main", "image": "postgres:16" }] }),
    )
    .await?;
    wait_for_phase(&pods, "idle", "Running").await?;
    Ok(pods)
}

/// The exit code in an exec's final status, as kube-rs users read it.
fn exit_code(status: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status) -> Option<String> {
    if status.status.as_deref() == Some("Success") {
        return Some("0".into());
    }
    let causes = status.details.as_ref()?.causes.as_ref()?;
    causes
        .iter()
        .find(|cause| cause.reason.as_deref() == Some("ExitCode"))?
        .message
        .clone()
}

#[tokio::test]
async fn exec_streams_stdin_stdout_and_stderr() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-exec", |client, ns| async move {
        let pods = idle_pod(&client, &ns).await?;
        let params = AttachParams::default().stdin(true).stdout(true).stderr(true);
        let command = ["sh", "-c", "tr a-z A-Z; echo to-stderr >&2"];
        let mut attached = pods.exec("idle", command, &params).await?;
        let mut stdin = attached.stdin().expect("stdin was requested");
        let mut stdout = attached.stdout().expect("stdout was requested");
        let mut stderr = attached.stderr().expect("stderr was requested");
        let status = attached.take_status().expect("status is taken once");
        let writer = tokio::spawn(async move {
            stdin.write_all(b"hello through the apiserver\n").await?;
            stdin.shutdown().await
        });
        let (mut out, mut err) = (String::new(), String::new());
        let (read_out, read_err) = tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        read_out?;
        read_err?;
        writer.await??;
        let status = status.await.expect("the node sends a status");
        assert_eq!(out, "HELLO THROUGH THE APISERVER\n");
        assert_eq!(err, "to-stderr\n");
        assert_eq!(exit_code(&status).as_deref(), Some("0"), "status: {status:?}");
        attached.join().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn exec_reports_the_exit_code_of_a_failing_command() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-exit", |client, ns| async move {
        let pods = idle_pod(&client, &ns).await?;
        let params = AttachParams::default().stdin(false).stdout(true).stderr(true);
        let mut attached = pods.exec("idle", ["sh", "-c", "echo partial; exit 3"], &params).await?;
        let mut out = String::new();
        attached
            .stdout()
            .expect("stdout was requested")
            .read_to_string(&mut out)
            .await?;
        let status = attached
            .take_status()
            .expect("status is taken once")
            .await
            .expect("the node sends a status");
        assert_eq!(out, "partial\n");
        assert_eq!(status.status.as_deref(), Some("Failure"));
        assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
        assert_eq!(exit_code(&status).as_deref(), Some("3"), "status: {status:?}");
        Ok(())
    })
    .await
}

/// kubectl itself (WebSocket, v5.channel.k8s.io): it exits 0 only when the node ends the stream
/// with a normal close, and passes on stdin, stdout, stderr and a failing command's exit code.
#[tokio::test]
async fn kubectl_exec_exits_with_the_commands_code_and_prints_its_output() -> anyhow::Result<()> {
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    bed.with_namespace("node-kubectl", |client, ns| async move {
        idle_pod(&client, &ns).await?;
        let kubectl_exec = |stdin: &'static [u8], script: &'static str| {
            let (kubeconfig, ns) = (kubeconfig.clone(), ns.clone());
            async move {
                let mut child = tokio::process::Command::new("kubectl")
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["exec", "-i", "-n", &ns, "idle", "--", "sh", "-c", script])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("running kubectl (apt-get install kubernetes-client): {e}"))?;
                let mut input = child.stdin.take().expect("stdin is piped");
                input.write_all(stdin).await?;
                drop(input);
                anyhow::Ok(child.wait_with_output().await?)
            }
        };

        let output = kubectl_exec(b"through kubectl\n", "tr a-z A-Z; echo to-stderr >&2").await?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "kubectl exec: stdout {stdout:?}, stderr {stderr:?}"
        );
        assert_eq!(stdout, "THROUGH KUBECTL\n");
        assert_eq!(stderr, "to-stderr\n");

        let output = kubectl_exec(b"", "echo partial; exit 3").await?;
        assert_eq!(String::from_utf8_lossy(&output.stdout), "partial\n");
        assert_eq!(
            output.status.code(),
            Some(3),
            "kubectl exec of `exit 3`: stderr {:?}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn exec_streams_100_mib_of_stdout() -> anyhow::Result<()> {
    const SIZE: u64 = 100 * 1024 * 1024;
    let bed = bed().await?;
    bed.with_namespace("node-stream", |client, ns| async move {
        let pods = idle_pod(&client, &ns).await?;
        let params = AttachParams::default()
            .stdin(false)
            .stdout(true)
            .stderr(true)
            .max_stdout_buf_size(1024 * 1024);
        let started = Instant::now();
        let mut attached = pods
            .exec("idle", ["head", "-c", &SIZE.to_string(), "/dev/zero"], &params)
            .await?;
        let mut stdout = attached.stdout().expect("stdout was requested");
        let mut buffer = vec![0_u8; 1024 * 1024];
        let mut total = 0_u64;
        let mut nonzero = false;
        loop {
            let read = stdout.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            nonzero |= buffer[..read].iter().any(|byte| *byte != 0);
            total += read as u64;
        }
        let elapsed = started.elapsed();
        let status = attached
            .take_status()
            .expect("status is taken once")
            .await
            .expect("the node sends a status");
        assert_eq!(total, SIZE, "bytes received through exec stdout");
        assert!(!nonzero, "/dev/zero sent something other than zeros");
        assert_eq!(exit_code(&status).as_deref(), Some("0"), "status: {status:?}");
        // A measurement for the report, not an assertion.
        println!(
            "exec stdout throughput through the apiserver: {:.0} MB/s ({SIZE} bytes in {elapsed:?})",
            SIZE as f64 / elapsed.as_secs_f64() / 1e6
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn finished_pods_report_their_phase_and_exit_code() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-phase", |client, ns| async move {
        let job = |code: u8| json!({
            "restartPolicy": "Never",
            "containers": [{ "name": "job", "image": "busybox", "command": ["sh", "-c", format!("echo done; exit {code}")] }],
        });
        let pods = create_pod(&client, &ns, "succeeds", job(0)).await?;
        create_pod(&client, &ns, "fails", job(7)).await?;
        let succeeded = wait_for_phase(&pods, "succeeds", "Succeeded").await?;
        let failed = wait_for_phase(&pods, "fails", "Failed").await?;
        let terminated = |pod: &Pod| {
            let status = pod.status.clone().unwrap_or_default();
            let container = status.container_statuses.unwrap_or_default().into_iter().next().expect("one container status");
            container.state.and_then(|state| state.terminated).expect("the container is terminated")
        };
        assert_eq!(terminated(&succeeded).exit_code, 0);
        assert_eq!(terminated(&failed).exit_code, 7);
        assert_eq!(terminated(&failed).reason.as_deref(), Some("Error"));
        let node = succeeded.spec.and_then(|spec| spec.node_name).unwrap_or_default();
        let simulated = stowage_e2e::testbed::NODES.iter().any(|(name, _)| *name == node);
        assert!(simulated, "the pod was bound to a simulated node, not {node:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn env_and_volumes_reach_the_process_and_logs_show_its_output() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-env", |client, ns| async move {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": "creds" },
            "stringData": { "password": "s3cret", "user": "alice", "unused": "x" },
        }))?;
        Api::<Secret>::namespaced(client.clone(), &ns).create(&PostParams::default(), &secret).await?;
        let script = "echo \"password=$DB_PASSWORD user=$CREDS_user pod=$POD_NAME ns=$POD_NAMESPACE\"; \
                      cat /etc/creds/pw; echo; echo scratch > /scratch/file; cat /scratch/file; \
                      ls /etc/creds; exec sleep infinity";
        let pods = create_pod(&client, &ns, "app", json!({
            "containers": [{
                "name": "app",
                "image": "busybox",
                "command": ["sh", "-c", script],
                "env": [
                    { "name": "DB_PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                ],
                "envFrom": [{ "prefix": "CREDS_", "secretRef": { "name": "creds" } }],
                "volumeMounts": [
                    { "name": "scratch", "mountPath": "/scratch" },
                    { "name": "creds", "mountPath": "/etc/creds" },
                ],
            }],
            "volumes": [
                { "name": "scratch", "emptyDir": {} },
                { "name": "creds", "secret": { "secretName": "creds", "items": [{ "key": "password", "path": "pw" }] } },
            ],
        }))
        .await?;
        wait_for_phase(&pods, "app", "Running").await?;
        let expected = format!("password=s3cret user=alice pod=app ns={ns}\ns3cret\nscratch\npw\n");
        let logs = wait_for("the app's output in pods/log", || async {
            let logs = pods.logs("app", &LogParams::default()).await?;
            Ok((logs.lines().count() >= 4).then_some(logs))
        })
        .await?;
        assert_eq!(logs, expected);
        let tail = pods.logs("app", &LogParams { tail_lines: Some(2), ..LogParams::default() }).await?;
        assert_eq!(tail, "scratch\npw\n");

        // The volumes are visible to exec too, and only inside the container's mount namespace.
        let params = AttachParams::default().stdin(false).stdout(true).stderr(true);
        let mut attached = pods.exec("app", ["cat", "/scratch/file", "/etc/creds/pw"], &params).await?;
        let mut out = String::new();
        attached.stdout().expect("stdout was requested").read_to_string(&mut out).await?;
        assert_eq!(out, "scratch\ns3cret");
        assert!(!std::path::Path::new("/etc/creds/pw").exists(), "the Secret volume leaked into the host's mount namespace");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn deleting_a_pod_kills_its_process() -> anyhow::Result<()> {
    let bed = bed().await?;
    let host_dir = tempfile::tempdir()?;
    let host_path = host_dir.path().to_string_lossy().into_owned();
    bed.with_namespace("node-delete", |client, ns| async move {
        let pods = create_pod(
            &client,
            &ns,
            "sleeper",
            json!({
                "containers": [{
                    "name": "sleeper",
                    "image": "busybox",
                    // Kubernetes reduces `$$` to `$` in commands, so the shell sees `echo $$`.
                    "command": ["sh", "-c", "echo $$$$ > /pid/pid; exec sleep 100000"],
                    "volumeMounts": [{ "name": "pid", "mountPath": "/pid" }],
                }],
                "volumes": [{ "name": "pid", "hostPath": { "path": host_path } }],
            }),
        )
        .await?;
        wait_for_phase(&pods, "sleeper", "Running").await?;
        let pid_file = std::path::Path::new(&host_path).join("pid");
        let pid: u32 = wait_for("the sleeper's pid file", || async {
            Ok(std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|pid| pid.trim().parse().ok()))
        })
        .await?;
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} runs before the deletion"
        );
        pods.delete("sleeper", &DeleteParams::default()).await?;
        wait_for("pod sleeper to be removed", || async {
            Ok(pods.get_opt("sleeper").await?.is_none().then_some(()))
        })
        .await?;
        let proc_path = format!("/proc/{pid}");
        wait_for("the sleeper's process to exit", || async {
            // A zombie would still have /proc/<pid>; the node reaps its children.
            Ok((!std::path::Path::new(&proc_path).exists()).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_deployments_pod_is_bound_and_running() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-deploy", |client, ns| async move {
        let deployment: Deployment = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "db" },
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": { "app": "db" } },
                "template": {
                    "metadata": { "labels": { "app": "db" } },
                    "spec": { "containers": [{ "name": "db", "image": "postgres:16", "command": ["sleep", "infinity"] }] },
                },
            },
        }))?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &deployment).await?;
        wait_for("Deployment db to have 1 available replica", || async {
            let deployment = deployments.get("db").await?;
            let available = deployment.status.and_then(|status| status.available_replicas).unwrap_or(0);
            Ok((available == 1).then_some(()))
        })
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let list = pods.list(&ListParams::default().labels("app=db")).await?;
        let pod = list.items.first().expect("the Deployment has a pod");
        let status = pod.status.clone().unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()).unwrap_or_default();
        assert!(stowage_e2e::testbed::NODES.iter().any(|(name, _)| *name == node), "bound to a simulated node, not {node:?}");
        let ready = status.conditions.unwrap_or_default().into_iter().any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "the pod is Ready");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn exec_streams_100_mib_into_stdin() -> anyhow::Result<()> {
    const SIZE: usize = 100 * 1024 * 1024;
    let bed = bed().await?;
    bed.with_namespace("node-stdin", |client, ns| async move {
        let pods = idle_pod(&client, &ns).await?;
        let params = AttachParams::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .max_stdin_buf_size(1024 * 1024);
        let started = Instant::now();
        let mut attached = pods.exec("idle", ["wc", "-c"], &params).await?;
        let mut stdin = attached.stdin().expect("stdin was requested");
        let mut stdout = attached.stdout().expect("stdout was requested");
        let writer = tokio::spawn(async move {
            let chunk = vec![7_u8; 1024 * 1024];
            for _ in 0..SIZE / chunk.len() {
                stdin.write_all(&chunk).await?;
            }
            stdin.shutdown().await
        });
        let mut out = String::new();
        stdout.read_to_string(&mut out).await?;
        writer.await??;
        let elapsed = started.elapsed();
        let status = attached
            .take_status()
            .expect("status is taken once")
            .await
            .expect("the node sends a status");
        assert_eq!(out.trim(), SIZE.to_string(), "bytes the command read from stdin");
        assert_eq!(exit_code(&status).as_deref(), Some("0"), "status: {status:?}");
        println!(
            "exec stdin throughput through the apiserver: {:.0} MB/s ({SIZE} bytes in {elapsed:?})",
            SIZE as f64 / elapsed.as_secs_f64() / 1e6
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn restart_policies_restart_containers() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-restart", |client, ns| async move {
        // Fails on its first run, succeeds on its second: the emptyDir survives the restart.
        let script = "if [ -f /state/ran ]; then echo second run; exit 0; fi; touch /state/ran; echo first run; exit 1";
        let pods = create_pod(
            &client,
            &ns,
            "retry",
            json!({
                "restartPolicy": "OnFailure",
                "containers": [{
                    "name": "job",
                    "image": "busybox",
                    "command": ["sh", "-c", script],
                    "volumeMounts": [{ "name": "state", "mountPath": "/state" }],
                }],
                "volumes": [{ "name": "state", "emptyDir": {} }],
            }),
        )
        .await?;
        let pod = wait_for_phase(&pods, "retry", "Succeeded").await?;
        let status = pod
            .status
            .and_then(|status| status.container_statuses)
            .unwrap_or_default();
        assert_eq!(status.first().map(|container| container.restart_count), Some(1));
        assert_eq!(
            pods.logs("retry", &LogParams::default()).await?,
            "first run\nsecond run\n"
        );

        create_pod(
            &client,
            &ns,
            "crashes",
            json!({
                "containers": [{ "name": "main", "image": "busybox", "command": ["sh", "-c", "echo crash; exit 2"] }],
            }),
        )
        .await?;
        wait_for("container main of pod crashes to be restarted twice", || async {
            let pod = pods.get("crashes").await?;
            let statuses = pod
                .status
                .and_then(|status| status.container_statuses)
                .unwrap_or_default();
            Ok(statuses
                .first()
                .is_some_and(|container| container.restart_count >= 2)
                .then_some(()))
        })
        .await?;
        let pod = pods.get("crashes").await?;
        assert_eq!(
            pod.status.and_then(|status| status.phase).as_deref(),
            Some("Running"),
            "Always never ends a Pod"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn followed_logs_end_when_the_container_exits() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-follow", |client, ns| async move {
        let pods = create_pod(
            &client,
            &ns,
            "counter",
            json!({
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done"],
                }],
            }),
        )
        .await?;
        wait_for_phase(&pods, "counter", "Running").await?;
        let stream = pods
            .log_stream(
                "counter",
                &LogParams {
                    follow: true,
                    ..LogParams::default()
                },
            )
            .await?;
        let lines: Vec<String> = stream.lines().try_collect().await?;
        assert_eq!(lines, ["line 1", "line 2", "line 3", "line 4", "line 5"]);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_statefulsets_pod_writes_to_its_persistent_volume() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("node-sts", |client, ns| async move {
        let statefulset: StatefulSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": { "name": "db" },
            "spec": {
                "serviceName": "db",
                "replicas": 1,
                "selector": { "matchLabels": { "app": "db" } },
                "template": {
                    "metadata": { "labels": { "app": "db" } },
                    "spec": { "containers": [{
                        "name": "db",
                        "image": "postgres:16",
                        "command": ["sh", "-c", "echo written-by-$(POD_NAME) > /var/lib/db/marker; exec sleep infinity"],
                        "env": [{ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }],
                        "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/db" }],
                    }] },
                },
                "volumeClaimTemplates": [{
                    "metadata": { "name": "data" },
                    "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
                }],
            },
        }))?;
        Api::<StatefulSet>::namespaced(client.clone(), &ns).create(&PostParams::default(), &statefulset).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_for_phase(&pods, "db-0", "Running").await?;
        let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
        let volume_name = claims.get("data-db-0").await?.spec.and_then(|spec| spec.volume_name).unwrap_or_default();
        let volume = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(client.clone()).get(&volume_name).await?;
        let host_path = volume.spec.and_then(|spec| spec.host_path).map(|host_path| host_path.path).unwrap_or_default();
        let marker = std::path::Path::new(&host_path).join("marker");
        let content = wait_for("the marker file in the PersistentVolume's directory", || async {
            Ok(std::fs::read_to_string(&marker).ok().filter(|content| !content.is_empty()))
        })
        .await?;
        assert_eq!(content, "written-by-db-0\n");
        Ok(())
    })
    .await
}
