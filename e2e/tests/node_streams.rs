//! The node simulator's exec and attach as a kubelet serves them, through the real kube-apiserver:
//! over SPDY (Debian's kubectl 1.20, and a current kubectl told to use SPDY) and over WebSocket
//! (kube-rs, a current kubectl's default); large and slow streams both ways; and the kubelet's
//! behaviour when a client goes away mid-stream: the command's stdin is closed and the command
//! runs on to its own end.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use serde_json::json;
use stowage_e2e::bed::{bed, wait_for};
use stowage_e2e::support::{create, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A Pod whose one container idles; `volume` (a host directory) is mounted at /work.
async fn running_pod(client: &kube::Client, namespace: &str, name: &str, volume: &Path) -> anyhow::Result<Api<Pod>> {
    create::<Pod>(
        client,
        namespace,
        name,
        json!({
            "containers": [{
                "name": "main",
                "image": "busybox",
                "command": ["sleep", "infinity"],
                "volumeMounts": [{ "name": "work", "mountPath": "/work" }],
            }],
            "volumes": [{ "name": "work", "hostPath": { "path": volume.to_string_lossy() } }],
        }),
    )
    .await?;
    wait_for_phase(client, namespace, name, "Running").await?;
    Ok(Api::namespaced(client.clone(), namespace))
}

async fn wait_for_phase(client: &kube::Client, namespace: &str, name: &str, phase: &str) -> anyhow::Result<Pod> {
    wait_until::<Pod>(client, namespace, name, &format!("to be {phase}"), |pod| {
        pod.status.as_ref().and_then(|status| status.phase.as_deref()) == Some(phase)
    })
    .await
}

/// The exec clients under test that run as a kubectl process.
#[derive(Debug, Clone, Copy)]
enum Kubectl {
    /// Debian's kubectl 1.20: SPDY only.
    Debian,
    /// The kubectl on PATH (1.30+) with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false`: SPDY.
    CurrentOverSpdy,
    /// The kubectl on PATH, by default: WebSocket (v5.channel.k8s.io).
    CurrentOverWebSocket,
}

const ALL_KUBECTLS: [Kubectl; 3] = [Kubectl::Debian, Kubectl::CurrentOverSpdy, Kubectl::CurrentOverWebSocket];

impl Kubectl {
    fn command(self, kubeconfig: &Path) -> anyhow::Result<Command> {
        let program: PathBuf = match self {
            Kubectl::Debian => stowage_e2e::envtest::debian_kubectl()?,
            Kubectl::CurrentOverSpdy | Kubectl::CurrentOverWebSocket => "kubectl".into(),
        };
        let mut command = Command::new(program);
        command.arg("--kubeconfig").arg(kubeconfig);
        match self {
            Kubectl::CurrentOverSpdy => command.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
            _ => command.env_remove("KUBECTL_REMOTE_COMMAND_WEBSOCKETS"),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(command)
    }

    /// `kubectl exec -i` of `sh -c script` in Pod `pod`'s container `main`, started.
    fn exec(self, kubeconfig: &Path, namespace: &str, pod: &str, script: &str) -> anyhow::Result<Child> {
        let mut command = self.command(kubeconfig)?;
        command.args([
            "exec", "-i", "-n", namespace, pod, "-c", "main", "--", "sh", "-c", script,
        ]);
        command
            .spawn()
            .map_err(|error| anyhow::anyhow!("starting {self:?} kubectl (apt-get install kubernetes-client): {error}"))
    }
}

/// Runs `kubectl exec -i` to its end, feeding it `stdin`; returns its exit code, stdout, stderr.
async fn kubectl_exec(
    kubectl: Kubectl,
    kubeconfig: &Path,
    namespace: &str,
    script: &str,
    stdin: Vec<u8>,
) -> anyhow::Result<(Option<i32>, Vec<u8>, String)> {
    let mut child = kubectl.exec(kubeconfig, namespace, "streams", script)?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let writer = tokio::spawn(async move {
        input.write_all(&stdin).await?;
        input.shutdown().await
    });
    let output = child.wait_with_output().await?;
    writer.await??;
    Ok((
        output.status.code(),
        output.stdout,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn kubectl_exec_passes_output_and_exit_codes_over_spdy_and_websocket() -> anyhow::Result<()> {
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    let volume = tempfile::tempdir()?;
    bed.with_namespace("streams-kubectl", |client, ns| async move {
        running_pod(&client, &ns, "streams", volume.path()).await?;
        for kubectl in ALL_KUBECTLS {
            let script = "tr a-z A-Z; echo to-stderr >&2";
            let (code, stdout, stderr) =
                kubectl_exec(kubectl, &kubeconfig, &ns, script, b"through kubectl\n".to_vec()).await?;
            assert_eq!(code, Some(0), "{kubectl:?}: stderr {stderr:?}");
            assert_eq!(String::from_utf8_lossy(&stdout), "THROUGH KUBECTL\n", "{kubectl:?}");
            assert_eq!(stderr, "to-stderr\n", "{kubectl:?}");

            let (code, stdout, stderr) =
                kubectl_exec(kubectl, &kubeconfig, &ns, "echo partial; exit 3", Vec::new()).await?;
            assert_eq!(code, Some(3), "{kubectl:?} of `exit 3`: stderr {stderr:?}");
            assert_eq!(String::from_utf8_lossy(&stdout), "partial\n", "{kubectl:?}");
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn kubectl_exec_streams_100_mib_each_way_over_spdy() -> anyhow::Result<()> {
    const SIZE: usize = 100 * 1024 * 1024;
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    let volume = tempfile::tempdir()?;
    bed.with_namespace("streams-large", |client, ns| async move {
        running_pod(&client, &ns, "streams", volume.path()).await?;
        for kubectl in [Kubectl::Debian, Kubectl::CurrentOverSpdy] {
            let input: Vec<u8> = (0..SIZE).map(|index| (index % 251) as u8).collect();
            let (code, stdout, stderr) = kubectl_exec(kubectl, &kubeconfig, &ns, "cksum", input.clone()).await?;
            assert_eq!(code, Some(0), "{kubectl:?}: stderr {stderr:?}");
            let expected = local_cksum(input).await?;
            assert_eq!(
                String::from_utf8_lossy(&stdout),
                expected,
                "{kubectl:?}: what the command read from stdin"
            );

            let script = format!("head -c {SIZE} /dev/zero | tr '\\0' x");
            let (code, stdout, stderr) = kubectl_exec(kubectl, &kubeconfig, &ns, &script, Vec::new()).await?;
            assert_eq!(code, Some(0), "{kubectl:?}: stderr {stderr:?}");
            assert_eq!(stdout.len(), SIZE, "{kubectl:?}: bytes of stdout");
            assert!(
                stdout.iter().all(|byte| *byte == b'x'),
                "{kubectl:?}: stdout is the command's output"
            );
        }
        Ok(())
    })
    .await
}

/// `cksum` of `data` on this host, to compare with what the Pod's `cksum` saw.
async fn local_cksum(data: Vec<u8>) -> anyhow::Result<String> {
    let mut child = Command::new("cksum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("stdin is piped");
    let writer = tokio::spawn(async move { input.write_all(&data).await });
    let output = child.wait_with_output().await?;
    writer.await??;
    Ok(String::from_utf8(output.stdout)?)
}

/// A conversation: every line the test sends comes back before the next is sent, so neither side
/// may buffer a stream until its end.
#[tokio::test]
async fn slow_streams_flow_line_by_line_over_spdy_and_websocket() -> anyhow::Result<()> {
    const ECHO: &str = "while read line; do echo \"got $line\"; echo \"err $line\" >&2; done; echo bye";
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    let volume = tempfile::tempdir()?;
    bed.with_namespace("streams-slow", |client, ns| async move {
        let pods = running_pod(&client, &ns, "streams", volume.path()).await?;
        for kubectl in ALL_KUBECTLS {
            let mut child = kubectl.exec(&kubeconfig, &ns, "streams", ECHO)?;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
            let mut stderr = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
            for round in 0..5 {
                stdin.write_all(format!("line{round}\n").as_bytes()).await?;
                stdin.flush().await?;
                assert_eq!(
                    stdout.next_line().await?,
                    Some(format!("got line{round}")),
                    "{kubectl:?}"
                );
                assert_eq!(
                    stderr.next_line().await?,
                    Some(format!("err line{round}")),
                    "{kubectl:?}"
                );
            }
            drop(stdin);
            assert_eq!(stdout.next_line().await?.as_deref(), Some("bye"), "{kubectl:?}");
            assert_eq!(child.wait().await?.code(), Some(0), "{kubectl:?}");
        }

        // kube-rs, over WebSocket.
        let params = AttachParams::default().stdin(true).stdout(true).stderr(true);
        let mut attached = pods.exec("streams", ["sh", "-c", ECHO], &params).await?;
        let mut stdin = attached.stdin().expect("stdin was requested");
        let mut stdout = BufReader::new(attached.stdout().expect("stdout was requested")).lines();
        let mut stderr = BufReader::new(attached.stderr().expect("stderr was requested")).lines();
        for round in 0..5 {
            stdin.write_all(format!("line{round}\n").as_bytes()).await?;
            stdin.flush().await?;
            assert_eq!(stdout.next_line().await?, Some(format!("got line{round}")), "kube-rs");
            assert_eq!(stderr.next_line().await?, Some(format!("err line{round}")), "kube-rs");
        }
        stdin.shutdown().await?;
        assert_eq!(stdout.next_line().await?.as_deref(), Some("bye"), "kube-rs");
        Ok(())
    })
    .await
}

/// A restore-like command: it stores its stdin, notes how much it got once stdin ends, and only
/// then finishes its work. Killed when its client goes away, it would leave no marker.
const RESTORE: &str = "cat > /work/out; echo \"eof after $(wc -c </work/out) bytes\" > /work/marker; \
                       sleep 2; echo done >> /work/marker";
/// What the client sends before it goes away: part of a larger stream.
const PARTIAL: usize = 3 * 1024 * 1024 + 17;

/// Waits until the command has stored all `PARTIAL` bytes sent so far, so the client's
/// disconnection cuts the stream exactly there.
async fn wait_for_partial_input(volume: &Path) -> anyhow::Result<()> {
    let out = volume.join("out");
    wait_for("the command to have read the partial stream", || async {
        let stored = std::fs::metadata(&out).map(|meta| meta.len()).unwrap_or(0);
        Ok((stored == PARTIAL as u64).then_some(()))
    })
    .await
}

/// Waits for the marker of a command that saw EOF after `PARTIAL` bytes and ran to its end.
async fn wait_for_command_end(volume: &Path) -> anyhow::Result<String> {
    let marker = volume.join("marker");
    wait_for("the command to finish after its client went away", || async {
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        Ok(text.ends_with("done\n").then_some(text))
    })
    .await
}

fn node_log(bed: &stowage_e2e::bed::TestBed) -> anyhow::Result<String> {
    let path = bed
        .info()
        .logs
        .get("node-simulator")
        .ok_or_else(|| anyhow::anyhow!("the bed lists no node-simulator log"))?;
    Ok(std::fs::read_to_string(path)?)
}

#[tokio::test]
async fn a_websocket_client_that_goes_away_leaves_the_command_running_with_stdin_at_eof() -> anyhow::Result<()> {
    let bed = bed().await?;
    let volume = tempfile::tempdir()?;
    let volume_path = volume.path().to_path_buf();
    bed.with_namespace("streams-ws-gone", |client, ns| async move {
        let pods = running_pod(&client, &ns, "streams", &volume_path).await?;
        let params = AttachParams::default().stdin(true).stdout(true).stderr(true);
        let mut attached = pods.exec("streams", ["sh", "-c", RESTORE], &params).await?;
        let mut stdin = attached.stdin().expect("stdin was requested");
        stdin.write_all(&vec![b'r'; PARTIAL]).await?;
        stdin.flush().await?;
        wait_for_partial_input(&volume_path).await?;
        // Drop the connection, not stdin: no close message, no close frame.
        attached.abort();
        drop(attached);
        let marker = wait_for_command_end(&volume_path).await?;
        assert_eq!(marker, format!("eof after {PARTIAL} bytes\ndone\n"));
        wait_for("the node log to record the command's exit", || async {
            let log = node_log(bed)?;
            let line = log
                .lines()
                .find(|line| line.contains(&ns) && line.contains("ended: Exited(0) (its client had gone)"));
            Ok(line.map(str::to_owned))
        })
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_spdy_client_killed_mid_stream_leaves_the_command_running_with_stdin_at_eof() -> anyhow::Result<()> {
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    for kubectl in [Kubectl::Debian, Kubectl::CurrentOverSpdy] {
        let volume = tempfile::tempdir()?;
        let volume_path = volume.path().to_path_buf();
        let kubeconfig = kubeconfig.clone();
        bed.with_namespace("streams-spdy-gone", |client, ns| async move {
            running_pod(&client, &ns, "streams", &volume_path).await?;
            let mut child = kubectl.exec(&kubeconfig, &ns, "streams", RESTORE)?;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin.write_all(&vec![b's'; PARTIAL]).await?;
            stdin.flush().await?;
            wait_for_partial_input(&volume_path).await?;
            // SIGKILL: kubectl neither half-closes stdin nor says goodbye; its connection drops.
            child.kill().await?;
            drop(stdin);
            let marker = wait_for_command_end(&volume_path).await?;
            assert_eq!(marker, format!("eof after {PARTIAL} bytes\ndone\n"), "{kubectl:?}");
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_exec_client_that_closes_stdin_still_gets_the_status() -> anyhow::Result<()> {
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    let volume = tempfile::tempdir()?;
    bed.with_namespace("streams-stdin-end", |client, ns| async move {
        running_pod(&client, &ns, "streams", volume.path()).await?;
        for kubectl in ALL_KUBECTLS {
            // The command outlives its stdin, and its exit code still reaches the client.
            let (code, stdout, stderr) = kubectl_exec(
                kubectl,
                &kubeconfig,
                &ns,
                "wc -c; sleep 1; echo after; exit 4",
                vec![b'z'; 1000],
            )
            .await?;
            assert_eq!(code, Some(4), "{kubectl:?}: stderr {stderr:?}");
            assert_eq!(
                String::from_utf8_lossy(&stdout).split_whitespace().collect::<Vec<_>>(),
                ["1000", "after"]
            );
        }
        Ok(())
    })
    .await
}

/// `kubectl attach -i` to a container with `stdin: true, stdinOnce: true`: the client talks to the
/// main process, and ending the client's stdin ends the process's stdin; the session lasts until
/// the container exits, and kubectl then exits 0.
#[tokio::test]
async fn kubectl_attach_talks_to_the_main_process_and_its_stdin_closes_once() -> anyhow::Result<()> {
    let bed = bed().await?;
    let kubeconfig = bed.kubeconfig_path().to_path_buf();
    bed.with_namespace("streams-attach", |client, ns| async move {
        for (index, kubectl) in ALL_KUBECTLS.into_iter().enumerate() {
            let name = format!("attached-{index}");
            create::<Pod>(
                &client,
                &ns,
                &name,
                json!({
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "main",
                        "image": "busybox",
                        "stdin": true,
                        "stdinOnce": true,
                        "command": ["sh", "-c", "while read line; do echo \"got $line\"; done; echo 'stdin ended'; sleep 1; echo bye"],
                    }],
                }),
            )
            .await?;
            wait_for_phase(&client, &ns, &name, "Running").await?;
            let mut command = kubectl.command(&kubeconfig)?;
            command.args(["attach", "-i", "-n", &ns, &name, "-c", "main"]);
            let mut child = command.spawn()?;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
            for round in 0..3 {
                stdin.write_all(format!("hello{round}\n").as_bytes()).await?;
                stdin.flush().await?;
                assert_eq!(stdout.next_line().await?, Some(format!("got hello{round}")), "{kubectl:?}");
            }
            drop(stdin);
            assert_eq!(stdout.next_line().await?.as_deref(), Some("stdin ended"), "{kubectl:?}");
            assert_eq!(stdout.next_line().await?.as_deref(), Some("bye"), "{kubectl:?}");
            let status = child.wait().await?;
            assert_eq!(status.code(), Some(0), "{kubectl:?} attach");
            wait_for_phase(&client, &ns, &name, "Succeeded").await?;
        }
        Ok(())
    })
    .await
}
