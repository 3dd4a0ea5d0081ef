//! The client of an exec or attach session, whatever carries it: SPDY/3.1 or WebSocket.
//!
//! A kubelet accepts both on `/exec` and `/attach`: kubectl before 1.30 and a current API server
//! (which translates its clients' WebSocket into SPDY) speak SPDY, kube-rs and kubectl 1.30+
//! reach a v1.20 API server's node over WebSocket. Either way a session gets a [`Connection`]:
//! stdin data, stdin's end and resize messages in; stdout, stderr and the final status out.
//! Output is cut into frames of at most [`FRAME_SIZE`] and at most [`FRAMES_IN_FLIGHT`] wait for
//! the client, so a slow reader slows the command down instead of filling our memory.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::NodeContext;
use super::containers::ContainerRuntime;
use super::kubelet_api::{Body, Query, find_container, text};
use super::pods::PodRuntime;
use super::{spdy, websocket};

/// Bytes read from the command's stdout or stderr (or the client's stdin) per frame.
pub(super) const FRAME_SIZE: usize = 256 * 1024;
/// Frames waiting for the other side; with FRAME_SIZE this bounds the memory of one session.
pub(super) const FRAMES_IN_FLIGHT: usize = 8;

/// The channel.k8s.io stream protocol versions a kubelet speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Protocol {
    /// `channel.k8s.io`: the status is an error text, nothing on success.
    V1,
    /// `v2.channel.k8s.io`: v1 without its stream-setup quirks.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the status is a JSON `Status` carrying the exit code.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only): v4 plus a "close channel" message for stdin's end.
    V5,
}

impl Protocol {
    pub(super) fn name(self) -> &'static str {
        match self {
            Protocol::V1 => "channel.k8s.io",
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }

    /// The first of the client's offers that `supported` holds, as Kubernetes negotiates.
    pub(super) fn negotiate(offers: &[String], supported: &[Protocol]) -> Option<Protocol> {
        offers
            .iter()
            .find_map(|offer| supported.iter().copied().find(|protocol| protocol.name() == offer))
    }

    /// What the status stream carries when the session ends: `None` means nothing (v1-v3 say
    /// nothing on success).
    pub(super) fn status(self, end: &SessionEnd) -> Option<Bytes> {
        let text = match (end, self >= Protocol::V4) {
            (SessionEnd::Exited(0), false) => return None,
            (SessionEnd::Exited(code), false) => {
                format!("command terminated with non-zero exit code: exit status {code}")
            }
            (SessionEnd::Failed(message), false) => message.clone(),
            (SessionEnd::Exited(0), true) => json!({ "metadata": {}, "status": "Success" }).to_string(),
            (SessionEnd::Exited(code), true) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": { "causes": [{ "reason": "ExitCode", "message": code.to_string() }] },
            })
            .to_string(),
            (SessionEnd::Failed(message), true) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "code": 500,
            })
            .to_string(),
        };
        Some(Bytes::from(text))
    }
}

/// How a session ended, for the status stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionEnd {
    Exited(i32),
    Failed(String),
}

/// The streams a request asks for (`input`, `output`, `error`, `tty` = `1`).
#[derive(Debug, Clone, Copy)]
pub(super) struct Wanted {
    pub(super) stdin: bool,
    pub(super) stdout: bool,
    pub(super) stderr: bool,
    pub(super) tty: bool,
}

impl Wanted {
    pub(super) fn from_query(query: &Query) -> Result<Self, Box<Response<Body>>> {
        let tty = query.flag("tty");
        let wanted = Wanted {
            stdin: query.flag("input"),
            stdout: query.flag("output"),
            // A terminal has one output stream: a kubelet drops stderr when tty is set.
            stderr: query.flag("error") && !tty,
            tty,
        };
        if !wanted.stdin && !wanted.stdout && !wanted.stderr {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "you must specify at least 1 of stdin, stdout, stderr",
            )));
        }
        Ok(wanted)
    }
}

/// What the client sends.
#[derive(Debug)]
pub(super) enum Input {
    Stdin(Bytes),
    /// The client closed its stdin (SPDY FIN or reset, WebSocket v5 close message).
    StdinEnd,
    /// A terminal size message; we run no terminal, so sessions ignore it.
    Resize,
}

/// What the node sends.
#[derive(Debug)]
pub(super) enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    StdoutEnd,
    StderrEnd,
    /// The last word: the status stream's content (if any); then the transport closes.
    Status(Option<Bytes>),
}

/// A client, once its streams are set up.
pub(super) struct Connection {
    pub(super) protocol: Protocol,
    /// `None` once the client is gone: it closed the connection or the connection broke.
    pub(super) input: mpsc::Receiver<Input>,
    /// Fails once the client is gone; then output has nowhere to go.
    pub(super) output: mpsc::Sender<Output>,
    /// Ends when the transport is done with the connection.
    pub(super) closed: JoinHandle<()>,
}

/// What a transport's driver works with.
pub(super) type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A session request that passed a kubelet's checks: its container, its streams, the `101`
/// answer and the connection to come.
pub(super) struct Accepted {
    pub(super) pod: Arc<PodRuntime>,
    pub(super) container: Arc<ContainerRuntime>,
    pub(super) wanted: Wanted,
    /// `namespace/pod/container`, for the node log.
    pub(super) label: String,
    pub(super) response: Response<Body>,
    pub(super) connect: PendingConnection,
}

/// Checks an exec or attach request (`what`) for a running container and answers its upgrade;
/// or the error response a kubelet would give.
pub(super) fn accept(
    ctx: &Arc<NodeContext>,
    request: &mut Request<Incoming>,
    (namespace, pod, container): (&str, &str, &str),
    query: &Query,
    what: &str,
) -> Result<Accepted, Box<Response<Body>>> {
    let wanted = Wanted::from_query(query)?;
    let (pod_runtime, runtime) = find_container(ctx, namespace, pod, container)?;
    if !*runtime.running.borrow() {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            &format!("container {container} of pod {namespace}/{pod} is not running"),
        )));
    }
    let label = format!("{namespace}/{pod}/{container}");
    let (response, connect) = upgrade(ctx, request, wanted, format!("{what} {label}"))?;
    Ok(Accepted {
        pod: pod_runtime,
        container: runtime,
        wanted,
        label,
        response,
        connect,
    })
}

/// Answers an exec or attach request's upgrade: `101 Switching Protocols` and the future that
/// sets up the connection, or the error response a kubelet would give.
fn upgrade(
    ctx: &Arc<NodeContext>,
    request: &mut Request<Incoming>,
    wanted: Wanted,
    label: String,
) -> Result<(Response<Body>, PendingConnection), Box<Response<Body>>> {
    let headers = request.headers();
    let (response, transport) = if websocket::is_upgrade(headers) {
        let (response, protocol) = websocket::handshake(headers)?;
        (response, Transport::WebSocket(protocol))
    } else if spdy::is_upgrade(headers) {
        let (response, protocol) = spdy::handshake(headers)?;
        (response, Transport::Spdy(protocol))
    } else {
        return Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            &format!(
                "unable to upgrade: missing upgrade headers in request: {:?}",
                upgrade_headers(headers)
            ),
        )));
    };
    let upgrade = hyper::upgrade::on(request);
    let ctx = ctx.clone();
    let connect = async move {
        let upgraded = TokioIo::new(upgrade.await?);
        match transport {
            Transport::WebSocket(protocol) => Ok(websocket::connect(upgraded, protocol).await),
            Transport::Spdy(protocol) => spdy::connect(ctx, upgraded, protocol, wanted, label).await,
        }
    };
    Ok((response, Box::pin(connect)))
}

/// The client's connection once the upgrade is through and (SPDY) its streams exist.
pub(super) type PendingConnection = futures::future::BoxFuture<'static, anyhow::Result<Connection>>;

enum Transport {
    WebSocket(Protocol),
    Spdy(Protocol),
}

fn upgrade_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    [header::CONNECTION, header::UPGRADE]
        .iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            Some((name.to_string(), value.to_owned()))
        })
        .collect()
}

/// The offers in every value of header `name` (values may be comma-separated lists).
pub(super) fn offers(headers: &HeaderMap, name: impl header::AsHeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|offer| offer.trim().to_owned())
        .filter(|offer| !offer.is_empty())
        .collect()
}

/// Whether `Connection` lists `upgrade` and `Upgrade` is `protocol` (case-insensitively).
pub(super) fn asks_upgrade_to(headers: &HeaderMap, protocol: &str) -> bool {
    let connection_upgrade = offers(headers, header::CONNECTION)
        .iter()
        .any(|token| token.eq_ignore_ascii_case("upgrade"));
    let upgrade = offers(headers, header::UPGRADE)
        .iter()
        .any(|token| token.eq_ignore_ascii_case(protocol));
    connection_upgrade && upgrade
}

#[cfg(test)]
mod tests {
    use super::{Protocol, SessionEnd};

    #[test]
    fn negotiation_takes_the_clients_first_supported_offer() {
        let offers = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"].map(str::to_owned);
        let spdy = [Protocol::V4, Protocol::V3, Protocol::V2, Protocol::V1];
        assert_eq!(Protocol::negotiate(&offers, &spdy), Some(Protocol::V4));
        assert_eq!(Protocol::negotiate(&["x".to_owned()], &spdy), None);
    }

    #[test]
    fn v4_reports_exit_codes_as_a_status_and_v1_as_text() {
        let status = Protocol::V4.status(&SessionEnd::Exited(3)).unwrap_or_default();
        let status: serde_json::Value = serde_json::from_slice(&status).unwrap_or_default();
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert_eq!(Protocol::V1.status(&SessionEnd::Exited(0)), None);
        assert!(
            Protocol::V3
                .status(&SessionEnd::Exited(2))
                .is_some_and(|text| text.ends_with(b"2"))
        );
    }
}
