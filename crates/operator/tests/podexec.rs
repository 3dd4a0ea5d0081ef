//! The pod exec transport through the real kube-apiserver and the test bed's node simulator:
//! stdout streamed out and stdin fed in (tens of MiB, checked byte for byte), exit codes and
//! stderr tails, deadlines, Pods that cannot start, hooks in existing Pods, and the Pod's
//! owner, labels and deletion in every case.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use stowage_e2e::{bed, wait_for};
use stowage_operator::Error;
use stowage_operator::podexec::{ExecPod, ExecPodParams, STDERR_TAIL_BYTES, exec_in_pod};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// Generous: the test bed is shared by every test of the run on two cores.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What `yes 0123456789abcdef` prints, over and over.
const PATTERN: &[u8] = b"0123456789abcdef\n";

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(120)
}

/// Run parameters for Pod `name` from a Pod `spec` (JSON).
fn run_params(namespace: &str, name: &str, spec: serde_json::Value) -> anyhow::Result<ExecPodParams> {
    Ok(ExecPodParams {
        namespace: namespace.into(),
        name: name.into(),
        template: serde_json::from_value(json!({ "spec": spec }))?,
        owner: None,
        labels: BTreeMap::from([("stowage.io/test".to_string(), name.to_string())]),
    })
}

/// One container `main` that idles until exec'd into.
fn idle() -> serde_json::Value {
    json!({ "containers": [{ "name": "main", "image": "postgres:16", "command": ["sleep", "infinity"] }] })
}

async fn assert_gone(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    wait_for(&format!("Pod {namespace}/{name} to be deleted"), || async {
        Ok(pods.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// Reads `reader` to its end, checking every byte against the repeated [`PATTERN`]; returns
/// how many bytes it read.
async fn read_pattern(reader: &mut (impl AsyncRead + Unpin)) -> std::io::Result<u64> {
    let mut buffer = vec![0_u8; 1 << 20];
    let mut offset = 0_u64;
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(offset);
        }
        for (index, byte) in buffer[..read].iter().enumerate() {
            let position = offset + index as u64;
            let expected = PATTERN[(position % PATTERN.len() as u64) as usize];
            if *byte != expected {
                return Err(std::io::Error::other(format!(
                    "byte {position} is {byte:#x}, expected {expected:#x}"
                )));
            }
        }
        offset += read as u64;
    }
}

fn pattern(size: usize) -> Vec<u8> {
    PATTERN.iter().copied().cycle().take(size).collect()
}

fn test_error(err: impl std::fmt::Display) -> Error {
    Error::permanent("TestFailed", err.to_string())
}

fn exec_reason(err: &Error) -> &'static str {
    match err {
        Error::Exec { reason, .. } => reason,
        other => panic!("expected an exec error, got {other:?}"),
    }
}

#[tokio::test]
async fn stdout_streams_50_mib_while_a_chatty_stderr_is_drained() -> anyhow::Result<()> {
    const SIZE: u64 = 50 * 1024 * 1024;
    let bed = bed().await?;
    bed.with_namespace("podexec-stdout", |client, ns| async move {
        let params = run_params(&ns, "dump", idle())?;
        // 4 MiB of stderr first: more than every pipe on the way holds, so the command only
        // gets to its stdout if stderr is read while the caller waits for stdout.
        let script =
            format!("yes noise | head -n 700000 >&2; yes 0123456789abcdef | head -c {SIZE}; echo last words >&2");
        let (read, outcome) = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running("main", START_TIMEOUT).await?;
            let mut stdout = pod.exec_stdout("main", ["sh", "-c", &script], deadline()).await?;
            let read = read_pattern(&mut stdout).await.map_err(test_error)?;
            let outcome = stdout.finish().await?;
            Ok::<_, Error>((read, outcome))
        })
        .await?;
        assert_eq!(read, SIZE, "bytes of stdout received");
        assert_eq!(outcome.exit_code, 0);
        assert!(
            outcome.stderr_tail.len() <= STDERR_TAIL_BYTES,
            "the stderr tail is bounded"
        );
        assert!(
            outcome.stderr_tail.ends_with("noise\nlast words\n"),
            "stderr tail: {:?}",
            outcome.stderr_tail
        );
        outcome.check("backup command")?;
        assert_gone(&client, &ns, "dump").await
    })
    .await
}

#[tokio::test]
async fn stdin_is_fed_from_an_async_read() -> anyhow::Result<()> {
    const SIZE: usize = 20 * 1024 * 1024;
    let bed = bed().await?;
    bed.with_namespace("podexec-stdin", |client, ns| async move {
        let spec = json!({
            "containers": [{
                "name": "main",
                "image": "postgres:16",
                "command": ["sleep", "infinity"],
                "volumeMounts": [{ "name": "data", "mountPath": "/data" }],
            }],
            "volumes": [{ "name": "data", "emptyDir": {} }],
        });
        let params = run_params(&ns, "restore", spec)?;
        let (fed, read_back) = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running("main", START_TIMEOUT).await?;
            let mut stdin = pod
                .exec_stdin("main", ["sh", "-c", "cat > /data/restored"], deadline())
                .await?;
            let data = pattern(SIZE);
            let fed = tokio::io::copy(&mut data.as_slice(), &mut stdin)
                .await
                .map_err(test_error)?;
            stdin.finish().await?.check("restore command")?;
            // What the command received, read back through a second exec.
            let mut stdout = pod.exec_stdout("main", ["cat", "/data/restored"], deadline()).await?;
            let read_back = read_pattern(&mut stdout).await.map_err(test_error)?;
            stdout.finish().await?.check("cat")?;
            Ok::<_, Error>((fed, read_back))
        })
        .await?;
        assert_eq!(fed, SIZE as u64, "bytes written to stdin");
        assert_eq!(read_back, SIZE as u64, "bytes the command stored");
        assert_gone(&client, &ns, "restore").await
    })
    .await
}

#[tokio::test]
async fn a_failing_command_surfaces_its_exit_code_and_stderr_tail() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("podexec-exit", |client, ns| async move {
        let params = run_params(&ns, "fails", idle())?;
        let (stdout, backup, restore) = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running("main", START_TIMEOUT).await?;
            let script = "echo partial; yes oops | head -c 100000 >&2; echo 'pg_dump: connection refused' >&2; exit 3";
            let mut stdout = pod.exec_stdout("main", ["sh", "-c", script], deadline()).await?;
            let mut out = String::new();
            stdout.read_to_string(&mut out).await.map_err(test_error)?;
            let backup = stdout.finish().await?;
            // A restore command that gives up early: the writes may break, finish() says why.
            let script = "head -c 10 > /dev/null; echo 'psql: syntax error' >&2; exit 4";
            let mut stdin = pod.exec_stdin("main", ["sh", "-c", script], deadline()).await?;
            let data = pattern(10 * 1024 * 1024);
            let _ = tokio::io::copy(&mut data.as_slice(), &mut stdin).await;
            let restore = stdin.finish().await?;
            Ok::<_, Error>((out, backup, restore))
        })
        .await?;
        assert_eq!(stdout, "partial\n");
        assert_eq!(backup.exit_code, 3);
        assert_eq!(
            backup.stderr_tail.len(),
            STDERR_TAIL_BYTES,
            "100 kB of stderr leave a full tail"
        );
        assert!(
            backup.stderr_tail.ends_with("oops\npg_dump: connection refused\n"),
            "{:?}",
            backup.stderr_tail
        );
        let err = backup.check("backup command").expect_err("exit code 3 fails");
        assert_eq!(exec_reason(&err), "CommandFailed");
        let message = err.to_string();
        assert!(
            message.starts_with("backup command exited with code 3; stderr: "),
            "{message}"
        );
        assert!(message.ends_with("pg_dump: connection refused"), "{message}");
        assert_eq!(restore.exit_code, 4);
        assert_eq!(restore.stderr_tail, "psql: syntax error\n");
        assert_gone(&client, &ns, "fails").await
    })
    .await
}

#[tokio::test]
async fn a_deadline_abandons_the_command() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("podexec-deadline", |client, ns| async move {
        let params = run_params(&ns, "slow", idle())?;
        let (read_error, stdout_end, stdin_end) = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running("main", START_TIMEOUT).await?;
            let soon = Instant::now() + Duration::from_secs(3);
            let mut stdout = pod
                .exec_stdout("main", ["sh", "-c", "echo started; exec sleep 600"], soon)
                .await?;
            let mut out = Vec::new();
            let read_error = stdout
                .read_to_end(&mut out)
                .await
                .expect_err("the read outlives the deadline");
            let stdout_end = stdout.finish().await;
            // A command that never reads its stdin: writes block until the deadline.
            let soon = Instant::now() + Duration::from_secs(3);
            let mut stdin = pod.exec_stdin("main", ["sleep", "600"], soon).await?;
            let data = pattern(64 * 1024 * 1024);
            let _ = tokio::io::copy(&mut data.as_slice(), &mut stdin).await;
            let stdin_end = stdin.finish().await;
            Ok::<_, Error>((read_error, stdout_end, stdin_end))
        })
        .await?;
        assert_eq!(read_error.kind(), std::io::ErrorKind::TimedOut, "{read_error}");
        let err = stdout_end.expect_err("the deadline passed");
        assert_eq!(exec_reason(&err), "DeadlineExceeded");
        assert!(err.to_string().contains("did not finish within its deadline"), "{err}");
        assert_eq!(
            exec_reason(&stdin_end.expect_err("the deadline passed")),
            "DeadlineExceeded"
        );
        assert_gone(&client, &ns, "slow").await
    })
    .await
}

#[tokio::test]
async fn a_container_that_exits_fails_the_start_with_its_exit_code_and_output() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("podexec-crash", |client, ns| async move {
        let spec = json!({ "containers": [{
            "name": "main",
            "image": "postgres:16",
            "command": ["sh", "-c", "echo could not reach the database; exit 3"],
        }] });
        let params = run_params(&ns, "crashes", spec)?;
        // The container may be seen running for an instant: then the exec is refused, and the
        // error explains why all the same.
        let result = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running("main", START_TIMEOUT).await?;
            pod.exec_stdout("main", ["true"], deadline()).await?;
            Ok::<_, Error>(())
        })
        .await;
        let err = result.expect_err("the container exited");
        assert_eq!(exec_reason(&err), "PodFailed", "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "Pod {ns}/crashes: container main exited with code 3 (Error) before the command could run; \
                 its last output: could not reach the database"
            )
        );
        assert_gone(&client, &ns, "crashes").await
    })
    .await
}

#[tokio::test]
async fn a_missing_secret_and_an_unschedulable_pod_say_why_they_do_not_start() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("podexec-pending", |client, ns| async move {
        let spec = json!({ "containers": [{
            "name": "main",
            "image": "postgres:16",
            "command": ["sleep", "infinity"],
            "env": [{ "name": "PGPASSWORD", "valueFrom": { "secretKeyRef": { "name": "db-credentials", "key": "password" } } }],
        }] });
        let params = run_params(&ns, "no-secret", spec)?;
        let err = ExecPod::run(&client, &params, |pod| async move { pod.wait_running("main", START_TIMEOUT).await })
            .await
            .expect_err("the Secret is missing");
        assert_eq!(exec_reason(&err), "ContainerConfigError");
        let message = err.to_string();
        assert!(message.contains("CreateContainerConfigError"), "{message}");
        assert!(message.contains("db-credentials"), "{message}");
        assert_gone(&client, &ns, "no-secret").await?;

        // No node matches the selector; the test plays the scheduler and says so in the status.
        let spec = json!({
            "nodeSelector": { "disktype": "none-such" },
            "containers": [{ "name": "main", "image": "postgres:16", "command": ["sleep", "infinity"] }],
        });
        let params = run_params(&ns, "unschedulable", spec)?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let err = ExecPod::run(&client, &params, |pod| async move {
            let condition = json!({ "status": { "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match node selector.",
            }] } });
            pods.patch_status(pod.name(), &PatchParams::default(), &Patch::Merge(condition))
                .await
                .map_err(Error::from)?;
            pod.wait_running("main", Duration::from_secs(5)).await
        })
        .await
        .expect_err("no node can run it");
        assert_eq!(exec_reason(&err), "PodStartTimeout");
        assert_eq!(
            err.to_string(),
            format!(
                "Pod {ns}/unschedulable: container main was not running after 5s: the Pod is not scheduled: \
                 Unschedulable: 0/1 nodes are available: 1 node(s) didn't match node selector."
            )
        );
        assert_gone(&client, &ns, "unschedulable").await
    })
    .await
}

#[tokio::test]
async fn the_pod_has_the_runs_owner_and_labels_and_is_deleted_even_when_dropped() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("podexec-owner", |client, ns| async move {
        let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let owner: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": "nightly-1" } }))?;
        let owner = owners.create(&PostParams::default(), &owner).await?;
        let owner_ref = OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "nightly-1".into(),
            uid: owner.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let mut run = run_params(&ns, "nightly-1-exec", idle())?;
        run.template.metadata = Some(serde_json::from_value(
            json!({ "labels": { "app": "dump", "stowage.io/test": "theirs" } }),
        )?);
        run.owner = Some(owner_ref.clone());

        // A leftover Pod of the same name (an interrupted earlier attempt) is replaced.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let leftover: Pod =
            serde_json::from_value(json!({ "metadata": { "name": "nightly-1-exec" }, "spec": idle() }))?;
        let leftover_uid = pods.create(&PostParams::default(), &leftover).await?.metadata.uid;

        let pod = ExecPod::create(&client, &run).await?;
        let created = pods.get("nightly-1-exec").await?;
        assert_ne!(created.metadata.uid, leftover_uid, "the leftover Pod was replaced");
        assert_eq!(created.metadata.owner_references, Some(vec![owner_ref]));
        let labels = created.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("dump"));
        assert_eq!(
            labels.get("stowage.io/test").map(String::as_str),
            Some("nightly-1-exec")
        );
        assert_eq!(
            created.spec.and_then(|spec| spec.restart_policy).as_deref(),
            Some("Never")
        );
        pod.wait_running("main", START_TIMEOUT).await?;
        pod.delete().await?;
        assert_gone(&client, &ns, "nightly-1-exec").await?;

        // Dropped without delete(), as a cancelled reconcile would: deleted in the background.
        let pod = ExecPod::create(&client, &run).await?;
        pod.wait_running("main", START_TIMEOUT).await?;
        drop(pod);
        assert_gone(&client, &ns, "nightly-1-exec").await
    })
    .await
}

#[tokio::test]
async fn hooks_run_in_an_existing_pod_with_exit_code_output_and_timeout() -> anyhow::Result<()> {
    let bed = bed().await?;
    bed.with_namespace("podexec-hook", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let app: Pod = serde_json::from_value(json!({ "metadata": { "name": "app" }, "spec": {
            "containers": [{ "name": "db", "image": "postgres:16", "command": ["sleep", "infinity"] }],
        } }))?;
        pods.create(&PostParams::default(), &app).await?;
        wait_for("Pod app to be Running", || async {
            let pod = pods.get("app").await?;
            Ok((pod.status.and_then(|status| status.phase).as_deref() == Some("Running")).then_some(()))
        })
        .await?;

        let timeout = Duration::from_secs(120);
        let frozen = exec_in_pod(
            &client,
            &ns,
            "app",
            "db",
            ["sh", "-c", "echo frozen; echo note >&2"],
            timeout,
        )
        .await?;
        assert_eq!(frozen.exit_code, 0);
        assert_eq!(frozen.stdout, "frozen\n");
        assert_eq!(frozen.stderr_tail, "note\n");

        let failed = exec_in_pod(
            &client,
            &ns,
            "app",
            "db",
            ["sh", "-c", "echo busy >&2; exit 5"],
            timeout,
        )
        .await?;
        assert_eq!(failed.exit_code, 5);
        assert_eq!(failed.stderr_tail, "busy\n");

        // A chatty hook: the stdout kept is its end, and the command is not blocked by it.
        let chatty = exec_in_pod(
            &client,
            &ns,
            "app",
            "db",
            ["sh", "-c", "yes line | head -c 3000000; echo end"],
            timeout,
        )
        .await?;
        assert_eq!(chatty.exit_code, 0);
        assert_eq!(chatty.stdout.len(), stowage_operator::podexec::STDOUT_TAIL_BYTES);
        assert!(chatty.stdout.ends_with("line\nend\n"));

        let err = exec_in_pod(&client, &ns, "app", "db", ["sleep", "600"], Duration::from_secs(2))
            .await
            .expect_err("the hook outlives its timeout");
        assert_eq!(exec_reason(&err), "DeadlineExceeded");

        let err = exec_in_pod(&client, &ns, "app", "nope", ["true"], timeout)
            .await
            .expect_err("no such container");
        assert_eq!(exec_reason(&err), "ExecFailed");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_killed_restore_never_sees_the_end_of_its_input() -> anyhow::Result<()> {
    let bed = bed().await?;
    let host_dir = tempfile::tempdir()?;
    let host_path = host_dir.path().to_string_lossy().into_owned();
    bed.with_namespace("podexec-kill", |client, ns| async move {
        let spec = json!({
            "containers": [{
                "name": "main",
                "image": "postgres:16",
                "command": ["sleep", "infinity"],
                "volumeMounts": [{ "name": "out", "mountPath": "/out" }],
            }],
            "volumes": [{ "name": "out", "hostPath": { "path": host_path } }],
        });
        let params = run_params(&ns, "cut-off", spec)?;
        let written = ExecPod::run(&client, &params, |pod| async move {
            pod.wait_running("main", START_TIMEOUT).await?;
            // Marks its input complete only when it reads to the end of it, as a restore would.
            let script = "cat > /out/restored && touch /out/complete";
            let mut stdin = pod.exec_stdin("main", ["sh", "-c", script], deadline()).await?;
            let data = pattern(4 * 1024 * 1024);
            tokio::io::copy(&mut data.as_slice(), &mut stdin)
                .await
                .map_err(test_error)?;
            // The data path fails here: the command must die without seeing end of input.
            stdin.kill().await?;
            Ok::<_, Error>(data.len())
        })
        .await?;
        assert_gone(&client, &ns, "cut-off").await?;
        let complete = std::path::Path::new(&host_path).join("complete");
        assert!(!complete.exists(), "the restore command saw the end of its input");
        let restored = std::fs::metadata(std::path::Path::new(&host_path).join("restored"))?.len();
        assert!(restored <= written as u64, "restored {restored} of {written} bytes");
        Ok(())
    })
    .await
}
