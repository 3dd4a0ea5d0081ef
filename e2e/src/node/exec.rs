//! `pods/exec`: runs a command in a container and connects it to the client, as a kubelet does.
//!
//! The command runs in the container's mount namespace and environment, over SPDY or WebSocket
//! ([`super::streams`]). When the client closes its stdin, or goes away without closing it, the
//! command's stdin is closed and the command runs on to its own end: a kubelet does not kill it,
//! and neither do we. Its output then goes nowhere (as a container runtime keeps draining it), and
//! its exit is written to the node log. It dies early only with its container (the container's
//! process exits or the Pod stops), as it would in the container's PID namespace.
//!
//! With `tty=1` no terminal is allocated: stdout and stderr both reach the client's one output
//! stream, and resize messages are accepted and ignored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::NodeContext;
use super::containers::ContainerRuntime;
use super::kubelet_api::{Body, Query, text};
use super::process::{Stdios, exit_code};
use super::streams::{self, Connection, FRAME_SIZE, Input, Output, SessionEnd, Wanted};

/// A larger pipe than Linux's default 64 KiB lets one read fill a whole frame.
const PIPE_SIZE: i32 = 1024 * 1024;

/// Answers an exec request: checks it, answers the upgrade and runs the session in the background.
pub(super) fn handle(
    ctx: Arc<NodeContext>,
    mut request: Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &Query,
) -> Response<Body> {
    let command: Vec<String> = query.all("command").map(str::to_owned).collect();
    if command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "exec needs at least one command parameter");
    }
    let accepted = match streams::accept(&ctx, &mut request, (namespace, pod, container), query, "exec in") {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    let connect = accepted.connect;
    let session = Session {
        ctx: ctx.clone(),
        runtime: accepted.container,
        pod_stop: accepted.pod.stop.clone(),
        command,
        wanted: accepted.wanted,
        label: accepted.label,
    };
    tokio::spawn(async move {
        match connect.await {
            Ok(connection) => session.run(connection).await,
            Err(error) => ctx.log.line(format_args!(
                "exec {:?} in {}: no session: {error:#}",
                session.command, session.label
            )),
        }
    });
    accepted.response
}

struct Session {
    ctx: Arc<NodeContext>,
    runtime: Arc<ContainerRuntime>,
    pod_stop: CancellationToken,
    command: Vec<String>,
    wanted: Wanted,
    label: String,
}

impl Session {
    async fn run(self, connection: Connection) {
        let Connection {
            protocol,
            input,
            output,
            closed,
        } = connection;
        let piped = |wanted: bool| {
            if wanted {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let stdios = Stdios {
            stdin: piped(self.wanted.stdin),
            stdout: piped(self.wanted.stdout),
            // A terminal shows stderr too: it goes to the client's one output stream.
            stderr: piped(self.wanted.stderr || (self.wanted.tty && self.wanted.stdout)),
        };
        let mut process = match self.runtime.context.spawn(&self.ctx, &self.command, stdios) {
            Ok(process) => process,
            Err(error) => {
                self.ctx.log.line(format_args!(
                    "exec {:?} in {} failed to start: {error:#}",
                    self.command, self.label
                ));
                let end = SessionEnd::Failed(format!("{error:#}"));
                let _ = output.send(Output::Status(protocol.status(&end))).await;
                drop(output);
                let _ = closed.await;
                return;
            }
        };
        self.ctx.log.line(format_args!(
            "exec {:?} in {} (pid {}, {})",
            self.command,
            self.label,
            process.pgid,
            protocol.name()
        ));

        let mut pumps = Vec::new();
        if let Some(stdout) = process.child.stdout.take() {
            enlarge_pipe(&stdout);
            pumps.push(tokio::spawn(pump(
                stdout,
                output.clone(),
                Output::Stdout,
                Output::StdoutEnd,
            )));
        }
        if let Some(stderr) = process.child.stderr.take() {
            enlarge_pipe(&stderr);
            let pump_stderr = if self.wanted.tty {
                pump(stderr, output.clone(), Output::Stdout, Output::StdoutEnd)
            } else {
                pump(stderr, output.clone(), Output::Stderr, Output::StderrEnd)
            };
            pumps.push(tokio::spawn(pump_stderr));
        }
        let client_gone = CancellationToken::new();
        let feeder = tokio::spawn(feed_stdin(input, process.child.stdin.take(), client_gone.clone()));
        let gone_ctx = self.ctx.clone();
        let gone_note = format!("exec {:?} in {}", self.command, self.label);
        let gone_token = client_gone.clone();
        let gone_log = tokio::spawn(async move {
            gone_token.cancelled().await;
            gone_ctx.log.line(format_args!(
                "{gone_note}: the client went away; stdin closed, the command runs on"
            ));
        });

        // The command runs to its own end; only its container's end cuts it short.
        let mut running = self.runtime.running.subscribe();
        let container_stopped = async {
            let _ = running.wait_for(|running| !*running).await;
        };
        let end = tokio::select! {
            status = process.child.wait() => match status {
                Ok(status) => SessionEnd::Exited(exit_code(&status)),
                Err(error) => SessionEnd::Failed(format!("waiting for the command: {error}")),
            },
            () = self.pod_stop.cancelled() => self.stop(&mut process, "the pod is stopping").await,
            () = container_stopped => self.stop(&mut process, "its container stopped").await,
        };
        process.reap_group(&self.ctx);
        for pump in pumps {
            let _ = pump.await;
        }
        let client_was_gone = client_gone.is_cancelled();
        // From here on the input ends because we close the connection, not because the client left.
        gone_log.abort();
        self.ctx.log.line(format_args!(
            "exec {:?} in {} ended: {end:?}{}",
            self.command,
            self.label,
            if client_was_gone { " (its client had gone)" } else { "" }
        ));
        let _ = output.send(Output::Status(protocol.status(&end))).await;
        drop(output);
        let _ = closed.await;
        feeder.abort();
    }

    async fn stop(&self, process: &mut super::process::Process, why: &str) -> SessionEnd {
        let _ = process.terminate(&self.ctx, Duration::ZERO).await;
        SessionEnd::Failed(format!("command in {} killed: {why}", self.label))
    }
}

/// Copies one output stream into frames. Once the client is gone the output is read and dropped,
/// so the command never blocks on a full pipe.
pub(super) async fn pump(
    mut source: impl AsyncRead + Unpin,
    output: mpsc::Sender<Output>,
    data: fn(Bytes) -> Output,
    end: Output,
) {
    let mut buffer = vec![0_u8; FRAME_SIZE];
    let mut client_gone = false;
    loop {
        let read = match source.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if !client_gone
            && output
                .send(data(Bytes::copy_from_slice(&buffer[..read])))
                .await
                .is_err()
        {
            client_gone = true;
        }
    }
    if !client_gone {
        let _ = output.send(end).await;
    }
}

/// Feeds stdin to the command until the client ends it or goes away; then closes the command's
/// stdin (EOF) and, if the client went away, says so through `client_gone`.
pub(super) async fn feed_stdin(
    mut input: mpsc::Receiver<Input>,
    mut stdin: Option<ChildStdin>,
    client_gone: CancellationToken,
) {
    while let Some(event) = input.recv().await {
        match event {
            Input::Stdin(data) => {
                if let Some(writer) = stdin.as_mut()
                    && writer.write_all(&data).await.is_err()
                {
                    // The command closed its stdin; drop what it does not read.
                    stdin = None;
                }
            }
            Input::StdinEnd => {
                if let Some(mut writer) = stdin.take() {
                    let _ = writer.shutdown().await;
                }
            }
            Input::Resize => {}
        }
    }
    drop(stdin);
    client_gone.cancel();
}

/// Best effort: a bigger pipe means fewer, larger frames.
fn enlarge_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}
