//! Exec and attach over SPDY/3.1, as a kubelet serves them to kubectl and to the API server.
//!
//! The client upgrades with `Upgrade: SPDY/3.1` and offers stream protocols in
//! `X-Stream-Protocol-Version`; we take its first offer among v4, v3, v2 and v1 (a kubelet speaks
//! v5 over WebSocket only). The client then opens one stream per channel with SYN_STREAM frames
//! whose headers carry `streamtype`: `error`, `stdin`, `stdout`, `stderr`, and with a terminal
//! from v3 on `resize`. We answer each with SYN_REPLY and, like a kubelet, start the session once
//! every stream the request asked for exists (or give up after 30 seconds). stdin's FIN or reset
//! is its end. When the session ends, the status goes on the error stream, every stream is reset
//! and a GOAWAY closes the connection, as a kubelet's `conn.Close()` does.
//!
//! Like Kubernetes' spdystream, we answer PINGs, ignore SETTINGS and WINDOW_UPDATE (SPDY/3.1 flow
//! control is never enforced there; the TCP connection's own backpressure bounds what is in
//! flight), and ignore control frame types we do not know.

mod frame;
mod header_block;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::frame::{Frame, FrameReader};
use self::header_block::HeaderEncoder;
use super::NodeContext;
use super::kubelet_api::{Body, text};
use super::streams::{
    Connection, FRAME_SIZE, FRAMES_IN_FLIGHT, Input, Output, Protocol, Upgraded, Wanted, asks_upgrade_to, offers,
};

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";
/// What a kubelet speaks over SPDY, most capable first.
const SUPPORTED: [Protocol; 4] = [Protocol::V4, Protocol::V3, Protocol::V2, Protocol::V1];
/// A kubelet's default `streamCreationTimeout`.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    asks_upgrade_to(headers, "SPDY/3.1")
}

/// The `101` answer and the negotiated protocol, or the `403` a kubelet gives when none fits.
/// A client that offers no protocol gets v1, as Kubernetes 1.0 clients did.
pub(super) fn handshake(headers: &HeaderMap) -> Result<(Response<Body>, Protocol), Box<Response<Body>>> {
    let offered = offers(headers, PROTOCOL_HEADER);
    let protocol = if offered.is_empty() {
        None
    } else {
        let Some(protocol) = Protocol::negotiate(&offered, &SUPPORTED) else {
            let mut refusal = text(
                StatusCode::FORBIDDEN,
                &format!(
                    "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {:?}",
                    SUPPORTED.map(Protocol::name)
                ),
            );
            for protocol in SUPPORTED {
                refusal.headers_mut().append(
                    HeaderName::from_static(ACCEPTED_PROTOCOLS_HEADER),
                    HeaderValue::from_static(protocol.name()),
                );
            }
            return Err(Box::new(refusal));
        };
        Some(protocol)
    };
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(protocol) = protocol {
        response_headers.insert(
            HeaderName::from_static(PROTOCOL_HEADER),
            HeaderValue::from_static(protocol.name()),
        );
    }
    Ok((response, protocol.unwrap_or(Protocol::V1)))
}

/// A stream's role, from its `streamtype` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Kind {
    fn from_header(value: &str) -> Option<Self> {
        Some(match value {
            "error" => Kind::Error,
            "stdin" => Kind::Stdin,
            "stdout" => Kind::Stdout,
            "stderr" => Kind::Stderr,
            "resize" => Kind::Resize,
            _ => return None,
        })
    }

    /// The streams a request needs before its session starts, as a kubelet counts them.
    fn expected(wanted: Wanted, protocol: Protocol) -> Vec<Kind> {
        let mut kinds = vec![Kind::Error];
        let wanted_kinds = [
            (wanted.stdin, Kind::Stdin),
            (wanted.stdout, Kind::Stdout),
            (wanted.stderr, Kind::Stderr),
            (wanted.tty && protocol >= Protocol::V3, Kind::Resize),
        ];
        kinds.extend(wanted_kinds.iter().filter(|(asked, _)| *asked).map(|(_, kind)| *kind));
        kinds
    }
}

/// What the reader asks the writer to send.
enum Control {
    Reply { stream_id: u32, kind: Option<Kind> },
    Pong(u32),
    Refuse(u32),
    ProtocolError,
}

/// Waits for the client's streams; then the session can run.
pub(super) async fn connect(
    ctx: Arc<NodeContext>,
    upgraded: Upgraded,
    protocol: Protocol,
    wanted: Wanted,
    label: String,
) -> anyhow::Result<Connection> {
    let (read_half, write_half) = tokio::io::split(upgraded);
    let (control_tx, control) = mpsc::channel(64);
    let (input_tx, input) = mpsc::channel(FRAMES_IN_FLIGHT);
    let (output, output_rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    let (ready_tx, ready) = oneshot::channel();
    let client_gone = CancellationToken::new();
    let reader = Reader {
        frames: FrameReader::new(read_half, FRAME_SIZE),
        control: control_tx,
        input: input_tx,
        kinds: HashMap::new(),
        last_stream_id: 0,
        missing: Kind::expected(wanted, protocol),
        ready: Some(ready_tx),
    };
    let reader_ctx = ctx.clone();
    let reader_label = label.clone();
    let reader_gone = client_gone.clone();
    tokio::spawn(async move {
        if let Err(error) = reader.run().await {
            reader_ctx
                .log
                .line(format_args!("SPDY session of {reader_label}: {error:#}"));
        }
        reader_gone.cancel();
    });
    let writer = Writer {
        io: write_half,
        headers: HeaderEncoder::new()?,
        streams: HashMap::new(),
        last_stream_id: 0,
    };
    let closed = tokio::spawn(writer.run(control, output_rx, client_gone));
    match tokio::time::timeout(STREAM_CREATION_TIMEOUT, ready).await {
        Ok(Ok(())) => Ok(Connection {
            protocol,
            input,
            output,
            closed,
        }),
        Ok(Err(_)) => {
            closed.abort();
            anyhow::bail!("the client went away before it created its streams")
        }
        Err(_) => {
            closed.abort();
            anyhow::bail!("timed out waiting for client to create streams")
        }
    }
}

/// Reads the client's frames: sets streams up, passes stdin on, answers pings.
struct Reader<R> {
    frames: FrameReader<R>,
    control: mpsc::Sender<Control>,
    input: mpsc::Sender<Input>,
    kinds: HashMap<u32, Kind>,
    last_stream_id: u32,
    /// Streams the session still waits for; `ready` fires when none is left.
    missing: Vec<Kind>,
    ready: Option<oneshot::Sender<()>>,
}

impl<R: tokio::io::AsyncRead + Unpin> Reader<R> {
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let frame = match self.frames.next().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(error) => {
                    let _ = self.control.send(Control::ProtocolError).await;
                    return Err(error);
                }
            };
            match frame {
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers,
                } => self.open(stream_id, fin, &headers).await,
                Frame::Data { stream_id, data, fin } => self.data(stream_id, data, fin).await,
                // A reset stdin has no more to say: its end, as spdystream reads it.
                Frame::RstStream { stream_id } => {
                    if self.kinds.remove(&stream_id) == Some(Kind::Stdin) {
                        self.send_input(Input::StdinEnd).await;
                    }
                }
                // Odd ids are the client's pings; even ones would answer ours (we send none).
                Frame::Ping { id } if id % 2 == 1 => {
                    let _ = self.control.send(Control::Pong(id)).await;
                }
                Frame::Ping { .. } | Frame::GoAway | Frame::Ignored => {}
            }
        }
    }

    async fn open(&mut self, stream_id: u32, fin: bool, headers: &[(String, String)]) {
        // Client streams have odd, increasing ids; anything else is refused as spdystream does.
        if stream_id.is_multiple_of(2) || stream_id <= self.last_stream_id {
            let _ = self.control.send(Control::Refuse(stream_id)).await;
            return;
        }
        self.last_stream_id = stream_id;
        let kind = headers
            .iter()
            .find(|(name, _)| name == "streamtype")
            .and_then(|(_, value)| Kind::from_header(value));
        // The reply is queued before `ready` fires, so it reaches the client before any output.
        let _ = self.control.send(Control::Reply { stream_id, kind }).await;
        let Some(kind) = kind else { return };
        self.kinds.insert(stream_id, kind);
        if let Some(index) = self.missing.iter().position(|missing| *missing == kind) {
            self.missing.swap_remove(index);
            if self.missing.is_empty()
                && let Some(ready) = self.ready.take()
            {
                let _ = ready.send(());
            }
        }
        if fin && kind == Kind::Stdin {
            self.send_input(Input::StdinEnd).await;
        }
    }

    async fn data(&mut self, stream_id: u32, data: Bytes, fin: bool) {
        match self.kinds.get(&stream_id) {
            Some(Kind::Stdin) => {
                if !data.is_empty() {
                    self.send_input(Input::Stdin(data)).await;
                }
                if fin {
                    self.send_input(Input::StdinEnd).await;
                }
            }
            Some(Kind::Resize) if !data.is_empty() => self.send_input(Input::Resize).await,
            // The error, stdout and stderr streams only go to the client; a kubelet reads nothing
            // from them. Data for unknown streams is dropped, as spdystream drops it.
            _ => {}
        }
    }

    /// Waits while the session is busy (backpressure on the client); a session that stopped
    /// reading gets nothing more.
    async fn send_input(&mut self, input: Input) {
        let _ = self.input.send(input).await;
    }
}

/// Writes every frame we send, so one task owns the connection's write half and zlib context.
struct Writer<W> {
    io: WriteHalf<W>,
    headers: HeaderEncoder,
    streams: HashMap<Kind, u32>,
    last_stream_id: u32,
}

impl<W: tokio::io::AsyncRead + AsyncWrite + Unpin> Writer<W> {
    async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut output: mpsc::Receiver<Output>,
        client_gone: CancellationToken,
    ) {
        loop {
            // Replies first: a stream's SYN_REPLY must precede its data.
            let sent = tokio::select! {
                biased;
                Some(control) = control.recv() => self.control(control).await,
                item = output.recv() => match item {
                    Some(Output::Status(payload)) => {
                        let _ = self.close(payload).await;
                        break;
                    }
                    Some(item) => self.output(item).await,
                    None => {
                        let _ = self.close(None).await;
                        break;
                    }
                },
                () = client_gone.cancelled() => return,
            };
            if sent.is_err() {
                return;
            }
        }
        // Like a kubelet, leave the closing to the client once it has read our GOAWAY, but not
        // for long.
        let _ = tokio::time::timeout(Duration::from_secs(5), client_gone.cancelled()).await;
        let _ = self.io.shutdown().await;
    }

    async fn control(&mut self, control: Control) -> anyhow::Result<()> {
        let frame = match control {
            Control::Reply { stream_id, kind } => {
                self.last_stream_id = stream_id;
                if let Some(kind) = kind {
                    self.streams.insert(kind, stream_id);
                }
                frame::syn_reply(stream_id, &self.headers.encode(&[])?)?
            }
            Control::Pong(id) => frame::ping(id),
            Control::Refuse(stream_id) => frame::rst_stream(stream_id, frame::RST_PROTOCOL_ERROR),
            Control::ProtocolError => frame::goaway(self.last_stream_id, frame::GOAWAY_PROTOCOL_ERROR),
        };
        self.send(&frame).await
    }

    async fn output(&mut self, item: Output) -> anyhow::Result<()> {
        let (kind, payload, fin) = match item {
            Output::Stdout(data) => (Kind::Stdout, data, false),
            Output::Stderr(data) => (Kind::Stderr, data, false),
            Output::StdoutEnd => (Kind::Stdout, Bytes::new(), true),
            Output::StderrEnd => (Kind::Stderr, Bytes::new(), true),
            Output::Status(_) => unreachable!("the status closes the connection"),
        };
        // A stream the client did not open gets nothing (a session only writes what was asked).
        let Some(&stream_id) = self.streams.get(&kind) else {
            return Ok(());
        };
        self.send(&frame::data(stream_id, &payload, fin)).await
    }

    /// The status and its FIN on the error stream, a reset of every stream, GOAWAY.
    async fn close(&mut self, status: Option<Bytes>) -> anyhow::Result<()> {
        if let Some(&error_stream) = self.streams.get(&Kind::Error) {
            if let Some(status) = status {
                self.send(&frame::data(error_stream, &status, false)).await?;
            }
            self.send(&frame::data(error_stream, &[], true)).await?;
        }
        let mut stream_ids: Vec<u32> = self.streams.values().copied().collect();
        stream_ids.sort_unstable();
        for stream_id in stream_ids {
            self.send(&frame::rst_stream(stream_id, frame::RST_CANCEL)).await?;
        }
        self.send(&frame::goaway(self.last_stream_id, frame::GOAWAY_OK)).await
    }

    async fn send(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        self.io.write_all(frame).await.context("writing a SPDY frame")?;
        self.io.flush().await.context("flushing a SPDY frame")
    }
}
