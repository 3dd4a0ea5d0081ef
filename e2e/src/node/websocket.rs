//! Exec and attach over WebSocket, with the channel.k8s.io protocols kube-rs and kubectl speak.
//!
//! Every binary message starts with a channel byte: 0 stdin (client → node), 1 stdout, 2 stderr,
//! 3 the final status (v4 and v5: a JSON `Status`; v1: an error text), 4 terminal resize, and in
//! v5 255 "close channel N" (the client's stdin EOF without closing the socket).

use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self as ws, Message};
use tokio_util::sync::CancellationToken;

use super::kubelet_api::{Body, text};
use super::streams::{Connection, FRAMES_IN_FLIGHT, Input, Output, Protocol, Upgraded, asks_upgrade_to, offers};

type Socket = WebSocketStream<Upgraded>;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What a kubelet offers over WebSocket, most capable first.
const SUPPORTED: [Protocol; 3] = [Protocol::V5, Protocol::V4, Protocol::V1];

pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    asks_upgrade_to(headers, "websocket")
}

/// The `101` answer and the protocol, or why not. Offering no protocol means v1, as in Kubernetes.
pub(super) fn handshake(headers: &HeaderMap) -> Result<(Response<Body>, Protocol), Box<Response<Body>>> {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade without Sec-WebSocket-Key",
        )));
    };
    let offered = offers(headers, header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = if offered.is_empty() {
        None
    } else {
        let Some(protocol) = Protocol::negotiate(&offered, &SUPPORTED) else {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "no supported WebSocket protocol among {offered:?}: offer v5.channel.k8s.io or v4.channel.k8s.io"
                ),
            )));
        };
        Some(protocol)
    };
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        response_headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        response_headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol.name()),
        );
    }
    Ok((response, protocol.unwrap_or(Protocol::V1)))
}

/// Starts the WebSocket's reader and writer over the upgraded connection.
pub(super) async fn connect(upgraded: Upgraded, protocol: Protocol) -> Connection {
    let socket = WebSocketStream::from_raw_socket(upgraded, Role::Server, Some(WebSocketConfig::default())).await;
    let (sink, stream) = socket.split();
    let (input_tx, input) = mpsc::channel(FRAMES_IN_FLIGHT);
    let (output, output_rx) = mpsc::channel(FRAMES_IN_FLIGHT);
    let client_gone = CancellationToken::new();
    tokio::spawn(read(stream, input_tx, protocol, client_gone.clone()));
    let closed = tokio::spawn(write(sink, output_rx, client_gone));
    Connection {
        protocol,
        input,
        output,
        closed,
    }
}

/// Passes stdin, its end and resizes on until the client closes the socket or it breaks.
async fn read(
    mut stream: SplitStream<Socket>,
    input: mpsc::Sender<Input>,
    protocol: Protocol,
    client_gone: CancellationToken,
) {
    while let Some(Ok(message)) = stream.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            _ => continue,
        };
        let event = match (data.first(), data.get(1)) {
            (Some(&STDIN), Some(_)) => Input::Stdin(data.slice(1..)),
            (Some(&RESIZE), Some(_)) => Input::Resize,
            (Some(&CLOSE), Some(&STDIN)) if protocol == Protocol::V5 => Input::StdinEnd,
            _ => continue,
        };
        // A session that no longer reads input still needs to learn when the client goes.
        let _ = input.send(event).await;
    }
    client_gone.cancel();
}

/// Sends output as channel messages; after the status, a normal close.
async fn write(
    mut sink: SplitSink<Socket, Message>,
    mut output: mpsc::Receiver<Output>,
    client_gone: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            next = output.recv() => next,
            () = client_gone.cancelled() => return,
        };
        let Some(first) = next else { break };
        let mut batch = vec![first];
        while let Ok(more) = output.try_recv() {
            batch.push(more);
        }
        let mut status = None;
        for item in batch {
            let message = match item {
                Output::Stdout(data) => channel_message(STDOUT, &data),
                Output::Stderr(data) => channel_message(STDERR, &data),
                Output::StdoutEnd | Output::StderrEnd => continue,
                Output::Status(payload) => {
                    status = Some(payload);
                    break;
                }
            };
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        if let Some(payload) = status {
            let _ = finish(&mut sink, payload).await;
            // Let the client's close frame arrive before the connection drops.
            let _ = tokio::time::timeout(Duration::from_secs(5), client_gone.cancelled()).await;
            return;
        }
    }
    let _ = finish(&mut sink, None).await;
}

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(Bytes::from(frame))
}

/// Sends the status, then a normal close (code 1000): kubectl (1.29+, WebSocket) reports a close
/// without a code as an abnormal end and exits 1 even when the command succeeded.
async fn finish(sink: &mut SplitSink<Socket, Message>, status: Option<Bytes>) -> Result<(), ws::Error> {
    if let Some(status) = status {
        sink.send(channel_message(STATUS, &status)).await?;
    }
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    sink.send(Message::Close(Some(normal))).await?;
    sink.close().await
}
