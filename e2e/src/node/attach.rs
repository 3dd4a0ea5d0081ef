//! `pods/attach`: connects a client to a running container's main process, as a kubelet does.
//!
//! The client gets the process's output from the moment it attaches (stdout and stderr, or with
//! `tty=1` both on stdout, as a terminal would merge them; no terminal is allocated and resize
//! messages are ignored) and, when the container's spec says `stdin: true`, writes to its stdin.
//! As with a container runtime's attach: when the client ends its stdin, a `stdinOnce` container's
//! stdin closes (its process reads EOF) and the session lasts until the container stops; without
//! `stdinOnce` the session ends there and the stdin stays open for the next client. A client that
//! goes away detaches; the container runs on. A client too slow for the container's output is
//! dropped, as a kubelet drops it. A container without stdin ignores what the client sends.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::sync::broadcast::error::RecvError;

use super::NodeContext;
use super::containers::{AttachedStdin, ContainerRuntime, OutputChunk};
use super::cri_log::LogStream;
use super::kubelet_api::{Body, Query};
use super::streams::{self, Connection, Input, Output, SessionEnd, Wanted};

/// Answers an attach request: checks it, answers the upgrade and runs the session in the
/// background.
pub(super) fn handle(
    ctx: Arc<NodeContext>,
    mut request: Request<Incoming>,
    namespace: &str,
    pod: &str,
    container: &str,
    query: &Query,
) -> Response<Body> {
    let accepted = match streams::accept(&ctx, &mut request, (namespace, pod, container), query, "attach to") {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    let (runtime, wanted, label) = (accepted.container, accepted.wanted, accepted.label);
    let connect = accepted.connect;
    tokio::spawn(async move {
        match connect.await {
            Ok(connection) => attach(&ctx, &runtime, wanted, &label, connection).await,
            Err(error) => ctx.log.line(format_args!("attach to {label}: no session: {error:#}")),
        }
    });
    accepted.response
}

/// Why an attach session ended.
#[derive(Debug)]
enum Detached {
    ContainerStopped,
    StdinEnded,
    ClientGone,
    TooSlow,
}

async fn attach(ctx: &NodeContext, runtime: &ContainerRuntime, wanted: Wanted, label: &str, connection: Connection) {
    let Connection {
        protocol,
        mut input,
        output,
        closed,
    } = connection;
    // Subscribed before anything else, so no output from here on is missed.
    let mut chunks = runtime.subscribe_output();
    let mut running = runtime.running.subscribe();
    let container_stopped = async move {
        let _ = running.wait_for(|running| !*running).await;
    };
    tokio::pin!(container_stopped);
    let mut stdin: Option<AttachedStdin> = if wanted.stdin { runtime.attach_stdin() } else { None };
    let stdin_once = runtime.stdin_once();
    ctx.log.line(format_args!(
        "attach to {label} ({}, stdin {})",
        protocol.name(),
        if stdin.is_some() { "attached" } else { "none" }
    ));
    let detached = loop {
        tokio::select! {
            chunk = chunks.recv() => match chunk {
                Ok(chunk) => {
                    let Some(item) = forwarded(chunk, wanted) else { continue };
                    if output.send(item).await.is_err() {
                        break Detached::ClientGone;
                    }
                }
                Err(RecvError::Lagged(_)) => break Detached::TooSlow,
                Err(RecvError::Closed) => break Detached::ContainerStopped,
            },
            event = input.recv() => match event {
                Some(Input::Stdin(data)) => {
                    // A closed stdin (the run ended, or stdinOnce closed it) drops the data.
                    if let Some(writer) = &stdin && writer.write(data).await.is_err() {
                        stdin = None;
                    }
                }
                // Dropping our hold closes a stdinOnce container's stdin.
                Some(Input::StdinEnd) if stdin_once => stdin = None,
                Some(Input::StdinEnd) => break Detached::StdinEnded,
                Some(Input::Resize) => {}
                None => break Detached::ClientGone,
            },
            () = &mut container_stopped => {
                // The run's last output may still be queued.
                while let Ok(chunk) = chunks.try_recv() {
                    if let Some(item) = forwarded(chunk, wanted) {
                        let _ = output.send(item).await;
                    }
                }
                break Detached::ContainerStopped;
            }
        }
    };
    drop(stdin);
    ctx.log.line(format_args!("attach to {label} ended: {detached:?}"));
    let end = match detached {
        Detached::TooSlow => SessionEnd::Failed("the attach client read too slowly and was dropped".into()),
        _ => SessionEnd::Exited(0),
    };
    if !matches!(detached, Detached::ClientGone) {
        for end_of_stream in [Output::StdoutEnd, Output::StderrEnd] {
            let _ = output.send(end_of_stream).await;
        }
        let _ = output.send(Output::Status(protocol.status(&end))).await;
    }
    drop(output);
    let _ = closed.await;
}

/// What the client gets of an output chunk: the streams it asked for; with a terminal, stderr
/// joins stdout.
fn forwarded(chunk: OutputChunk, wanted: Wanted) -> Option<Output> {
    match chunk.stream {
        LogStream::Stdout if wanted.stdout => Some(Output::Stdout(chunk.data)),
        LogStream::Stderr if wanted.stderr => Some(Output::Stderr(chunk.data)),
        LogStream::Stderr if wanted.tty && wanted.stdout => Some(Output::Stdout(chunk.data)),
        _ => None,
    }
}
