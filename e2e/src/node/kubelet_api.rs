//! The kubelet's HTTPS API, as far as the API server uses it for `pods/exec`, `pods/attach` and
//! `pods/log`.
//!
//! The API server forwards `pods/exec` of a Pod bound to this node to
//! `https://127.0.0.1:<port>/exec/<namespace>/<pod>/<container>?command=…` with the client's
//! upgrade headers (SPDY/3.1 or WebSocket; a current API server always asks for SPDY), `pods/attach`
//! to `/attach/<namespace>/<pod>/<container>`, and `pods/log` to
//! `/containerLogs/<namespace>/<pod>/<container>`.
//! It does not verify the node's serving certificate, so a fresh self-signed one will do.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::{NodeContext, attach, container_logs, exec};

/// Every response body this server sends.
pub(super) type Body = BoxBody<Bytes, std::io::Error>;

/// The query of a request, percent-decoded, in order (`command` repeats).
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
            .collect();
        Query(pairs)
    }

    pub(super) fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: `1` or `true`.
    pub(super) fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }
}

/// Decodes `%XX` escapes and `+` (Go's url.Values encodes spaces as `+`).
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts the kubelet API on a free loopback port; returns the port and the accept loop's task.
pub(super) async fn serve(ctx: Arc<NodeContext>) -> anyhow::Result<(u16, JoinHandle<()>)> {
    let acceptor = tls_acceptor()?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the kubelet API port")?;
    let port = listener.local_addr()?.port();
    Ok((port, tokio::spawn(accept_loop(ctx, listener, acceptor))))
}

fn tls_acceptor() -> anyhow::Result<TlsAcceptor> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .context("generating the kubelet serving certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .context("configuring TLS for the kubelet API")?;
    // Only HTTP/1.1: exec needs its Upgrade mechanism.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(ctx: Arc<NodeContext>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let accepted = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(error) => {
                ctx.log.line(format_args!("kubelet API accept failed: {error}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    ctx.log.line(format_args!("kubelet API TLS handshake failed: {error}"));
                    return;
                }
            };
            let service_ctx = ctx.clone();
            let service = service_fn(move |request| {
                let ctx = service_ctx.clone();
                async move { Ok::<_, Infallible>(route(ctx, request).await) }
            });
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                ctx.log.line(format_args!("kubelet API connection failed: {error}"));
            }
        });
    }
}

async fn route(ctx: Arc<NodeContext>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = Query::parse(request.uri().query());
    ctx.log
        .line(format_args!("kubelet API: {} {}", request.method(), request.uri()));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["exec", namespace, pod, container] | ["exec", namespace, pod, _, container] => {
            exec::handle(ctx.clone(), request, namespace, pod, container, &query)
        }
        ["attach", namespace, pod, container] | ["attach", namespace, pod, _, container] => {
            attach::handle(ctx.clone(), request, namespace, pod, container, &query)
        }
        ["containerLogs", namespace, pod, container] => {
            container_logs::handle(&ctx, namespace, pod, container, &query).await
        }
        ["healthz"] => text(StatusCode::OK, "ok"),
        _ => text(
            StatusCode::NOT_FOUND,
            &format!("the node simulator does not serve {path}"),
        ),
    }
}

/// A plain-text response, for errors the API server passes back to the client.
/// A pod and one of its containers, as a kubelet request names them.
pub(super) type FoundContainer = (Arc<super::pods::PodRuntime>, Arc<super::containers::ContainerRuntime>);

/// The running container a kubelet request names, or the 404 that says which part is missing.
pub(super) fn find_container(
    ctx: &NodeContext,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<FoundContainer, Box<Response<Body>>> {
    let pod_runtime = ctx.pod(namespace, pod).ok_or_else(|| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            &format!("pod {namespace}/{pod} is not running on this node"),
        ))
    })?;
    let container_runtime = super::lock(&pod_runtime.containers)
        .get(container)
        .cloned()
        .ok_or_else(|| {
            Box::new(text(
                StatusCode::NOT_FOUND,
                &format!("container {container} not found in pod {namespace}/{pod}"),
            ))
        })?;
    Ok((pod_runtime, container_runtime))
}

pub(super) fn text(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response
}

#[cfg(test)]
mod tests {
    use super::{Query, percent_decode};

    #[test]
    fn decodes_queries_as_go_encodes_them() {
        assert_eq!(percent_decode("sh+-c"), "sh -c");
        assert_eq!(percent_decode("a%3Db%26c%2"), "a=b&c%2");
        let query = Query::parse(Some("command=sh&command=-c&command=echo+%22hi%22&input=1&output=true"));
        assert_eq!(query.all("command").collect::<Vec<_>>(), ["sh", "-c", "echo \"hi\""]);
        assert!(query.flag("input") && query.flag("output") && !query.flag("error"));
    }
}
