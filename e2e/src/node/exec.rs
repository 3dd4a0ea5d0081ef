//! `pods/exec` over WebSocket, with the channel.k8s.io protocols that kube-rs and kubectl speak.
//!
//! Every binary frame starts with a channel byte: 0 stdin (client → node), 1 stdout, 2 stderr,
//! 3 the final status (v4 and v5: a JSON `Status`; v1: an error text), 4 terminal resize, and in
//! v5 255 "close channel N" (the client's stdin EOF). The command runs in the container's mount
//! namespace and environment. Streams are copied in bounded frames, so a slow reader slows the
//! command down instead of filling our memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self as ws, Message};
use tokio_util::sync::CancellationToken;

use super::NodeContext;
use super::containers::ContainerRuntime;
use super::kubelet_api::{Body, Query, find_container, text};
use super::process::{Stdios, exit_code};

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Bytes read from the command's stdout or stderr per frame.
const FRAME_SIZE: usize = 256 * 1024;
/// Frames waiting to be sent; with FRAME_SIZE this bounds the memory of one session.
const FRAMES_IN_FLIGHT: usize = 8;
/// A larger pipe than Linux's default 64 KiB lets one read fill a whole frame.
const PIPE_SIZE: i32 = 1024 * 1024;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

/// The channel.k8s.io protocol versions we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `channel.k8s.io`: the status channel carries an error text, nothing on success.
    V1,
    /// `v4.channel.k8s.io`: the status channel carries a JSON Status with the exit code.
    V4,
    /// `v5.channel.k8s.io`: v4 plus close frames (stdin EOF without closing the socket).
    V5,
}

impl Protocol {
    /// The most capable protocol the client offers. Offering none means v1, as Kubernetes does.
    fn negotiate(headers: &HeaderMap) -> Option<(Protocol, Option<&'static str>)> {
        let offered: Vec<String> = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|protocol| protocol.trim().to_owned())
            .collect();
        if offered.is_empty() {
            return Some((Protocol::V1, None));
        }
        [
            (Protocol::V5, "v5.channel.k8s.io"),
            (Protocol::V4, "v4.channel.k8s.io"),
            (Protocol::V1, "channel.k8s.io"),
        ]
        .into_iter()
        .find(|(_, name)| offered.iter().any(|offer| offer == name))
        .map(|(protocol, name)| (protocol, Some(name)))
    }
}

/// Answers an exec request: checks it, switches to WebSocket and runs the session in the
/// background.
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
    let headers = request.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_websocket) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the node simulator serves exec over WebSocket (channel.k8s.io) only, not SPDY",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let Some((protocol, protocol_name)) = Protocol::negotiate(headers) else {
        return text(
            StatusCode::BAD_REQUEST,
            "no supported WebSocket protocol: offer v5.channel.k8s.io or v4.channel.k8s.io",
        );
    };
    let (pod_runtime, runtime) = match find_container(&ctx, namespace, pod, container) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if !*runtime.running.borrow() {
        return text(
            StatusCode::BAD_REQUEST,
            &format!("container {container} of pod {namespace}/{pod} is not running"),
        );
    }
    let session = Session {
        ctx: ctx.clone(),
        runtime,
        pod_stop: pod_runtime.stop.clone(),
        protocol,
        command,
        stdin: query.flag("input"),
        stdout: query.flag("output"),
        stderr: query.flag("error"),
        label: format!("{namespace}/{pod}/{container}"),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let config = WebSocketConfig::default();
                let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                session.run(socket).await;
            }
            Err(error) => ctx.log.line(format_args!("exec upgrade failed: {error}")),
        }
    });
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        response_headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(name) = protocol_name {
        response_headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(name));
    }
    response
}

struct Session {
    ctx: Arc<NodeContext>,
    runtime: Arc<ContainerRuntime>,
    pod_stop: CancellationToken,
    protocol: Protocol,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    label: String,
}

impl Session {
    async fn run(self, socket: Socket) {
        let (mut sink, stream) = socket.split();
        let piped = |wanted: bool| {
            if wanted {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let stdios = Stdios {
            stdin: piped(self.stdin),
            stdout: piped(self.stdout),
            stderr: piped(self.stderr),
        };
        let mut process = match self.runtime.context.spawn(&self.ctx, &self.command, stdios) {
            Ok(process) => process,
            Err(error) => {
                self.ctx.log.line(format_args!(
                    "exec {:?} in {} failed to start: {error:#}",
                    self.command, self.label
                ));
                let status = self.status_frame(Err(format!("{error:#}")));
                let _ = finish(&mut sink, status).await;
                return;
            }
        };
        self.ctx.log.line(format_args!(
            "exec {:?} in {} (pid {})",
            self.command, self.label, process.pgid
        ));

        let (frames_tx, mut frames) = mpsc::channel::<Message>(FRAMES_IN_FLIGHT);
        if let Some(stdout) = process.child.stdout.take() {
            enlarge_pipe(&stdout);
            tokio::spawn(pump(stdout, STDOUT, frames_tx.clone()));
        }
        if let Some(stderr) = process.child.stderr.take() {
            enlarge_pipe(&stderr);
            tokio::spawn(pump(stderr, STDERR, frames_tx.clone()));
        }
        drop(frames_tx);
        let client_gone = CancellationToken::new();
        let reader = tokio::spawn(feed_stdin(
            stream,
            process.child.stdin.take(),
            self.protocol,
            client_gone.clone(),
        ));

        // Forward output until both streams end; stop early if the client or the Pod goes away.
        let forwarded: Result<(), &str> = loop {
            tokio::select! {
                frame = frames.recv() => match frame {
                    None => break Ok(()),
                    Some(frame) => if send_batch(&mut sink, frame, &mut frames).await.is_err() {
                        break Err("the client went away");
                    },
                },
                () = client_gone.cancelled() => break Err("the client closed the connection"),
                () = self.pod_stop.cancelled() => break Err("the pod is stopping"),
            }
        };
        let exit = match forwarded {
            Ok(()) => tokio::select! {
                status = process.child.wait() => status.map(|status| exit_code(&status)).map_err(|e| e.to_string()),
                () = self.pod_stop.cancelled() => Err("the pod is stopping".to_owned()),
                () = client_gone.cancelled() => Err("the client closed the connection".to_owned()),
            },
            Err(reason) => Err(reason.to_owned()),
        };
        if exit.is_err() {
            let _ = process.terminate(&self.ctx, Duration::ZERO).await;
        }
        process.reap_group(&self.ctx);
        self.ctx.log.line(format_args!(
            "exec {:?} in {} ended: {exit:?}",
            self.command, self.label
        ));
        let _ = finish(&mut sink, self.status_frame(exit)).await;
        // Let the client's close frame arrive before the connection drops.
        let _ = tokio::time::timeout(Duration::from_secs(5), client_gone.cancelled()).await;
        reader.abort();
    }

    /// The status channel's last word: the command's exit code, or why it did not run.
    fn status_frame(&self, exit: Result<i32, String>) -> Option<Message> {
        let status = match (&exit, self.protocol) {
            (Ok(0), Protocol::V1) => return None,
            (Ok(code), Protocol::V1) => format!("command terminated with non-zero exit code: exit code {code}"),
            (Err(message), Protocol::V1) => message.clone(),
            (Ok(0), _) => json!({ "metadata": {}, "status": "Success" }).to_string(),
            (Ok(code), _) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command {:?}, exit code {code}", self.command),
                "reason": "NonZeroExitCode",
                "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
            })
            .to_string(),
            (Err(message), _) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
            })
            .to_string(),
        };
        Some(channel_frame(STATUS, status.as_bytes()))
    }
}

fn channel_frame(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(Bytes::from(frame))
}

/// Sends `first` and whatever else is already waiting, then flushes once.
async fn send_batch(
    sink: &mut SplitSink<Socket, Message>,
    first: Message,
    frames: &mut mpsc::Receiver<Message>,
) -> Result<(), ws::Error> {
    sink.feed(first).await?;
    while let Ok(frame) = frames.try_recv() {
        sink.feed(frame).await?;
    }
    sink.flush().await
}

/// Sends the status, then a normal close (code 1000): kubectl (1.29+, WebSocket) reports a close
/// without a code as an abnormal end and exits 1 even when the command succeeded.
async fn finish(sink: &mut SplitSink<Socket, Message>, status: Option<Message>) -> Result<(), ws::Error> {
    if let Some(status) = status {
        sink.send(status).await?;
    }
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    sink.send(Message::Close(Some(normal))).await?;
    sink.close().await
}

/// Copies one output stream into frames of its channel.
async fn pump(mut output: impl AsyncRead + Unpin, channel: u8, frames: mpsc::Sender<Message>) {
    let mut buffer = vec![0_u8; FRAME_SIZE + 1];
    buffer[0] = channel;
    loop {
        let read = match output.read(&mut buffer[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let frame = Message::Binary(Bytes::copy_from_slice(&buffer[..=read]));
        if frames.send(frame).await.is_err() {
            return;
        }
    }
}

/// Feeds channel 0 to the command's stdin until the client closes it (v5 close frame) or the
/// connection; then signals `client_gone` if the connection ended.
async fn feed_stdin(
    mut stream: SplitStream<Socket>,
    mut stdin: Option<ChildStdin>,
    protocol: Protocol,
    client_gone: CancellationToken,
) {
    while let Some(message) = stream.next().await {
        let Ok(message) = message else { break };
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        match data.first() {
            Some(&STDIN) if data.len() > 1 => {
                if let Some(writer) = stdin.as_mut()
                    && writer.write_all(&data[1..]).await.is_err()
                {
                    // The command closed its stdin; drop what it does not read.
                    stdin = None;
                }
            }
            Some(&CLOSE) if protocol == Protocol::V5 && data.get(1) == Some(&STDIN) => {
                if let Some(mut writer) = stdin.take() {
                    let _ = writer.shutdown().await;
                }
            }
            _ => {}
        }
    }
    drop(stdin);
    client_gone.cancel();
}

/// Best effort: a bigger pipe means fewer, larger frames.
fn enlarge_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}
