//! A kube client whose requests share one HTTP/2 connection.
//!
//! kube's own client speaks HTTP/1.1 only, so every request in flight holds a connection of
//! its own: a scheduler whose thousand schedules tick together opened a thousand TLS
//! connections and kept them in its pool (1,008 sockets, most of its memory), and the API
//! server paid a handshake, a goroutine and buffers for each. client-go multiplexes over
//! HTTP/2; this does the same, under kube's own layers (base URI, authentication, extra
//! headers). Pod exec needs HTTP/1.1 (a WebSocket upgrade), so only controllers that never
//! exec use it (see [`crate::runner::Transport`]).

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client for `config` whose requests are streams of one HTTP/2 connection.
pub fn client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // hyper-rustls announces h2 in ALPN itself.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http2()
        .wrap_connector(http);
    let transport = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        // Windows that grow with the connection's throughput: a large list page is not
        // held back by a fixed 2 MiB stream window.
        .http2_adaptive_window(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(transport);
    Ok(kube::Client::new(service, config.default_namespace))
}
