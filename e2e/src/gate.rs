//! A TCP hop between a controller and the API server that a test can hold shut.
//!
//! While the gate is held nothing passes either way: the controller's requests wait, and so do
//! the watch events it would receive. A test holds it to change the cluster in a way a
//! controller must never see half of, e.g. a run's object deleted and another created under its
//! name at once (`kubectl delete -f x.yaml && kubectl apply -f x.yaml`). Released, the
//! controller sees both at once, the way a busy controller sees a quick user. Nothing is lost:
//! the connections stay open and their bytes pass in order. The hop is below TLS, so the
//! controller still talks to the real API server with its real certificate.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The gate: open from the start, closed by [`Gate::hold`], reopened by [`Gate::release`].
/// Its connections end when it is dropped.
pub struct Gate {
    open: watch::Sender<bool>,
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A gate on a free local port that forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Gate> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (open, gate) = watch::channel(true);
        let task = tokio::spawn(async move {
            // Dropping the JoinSet with this task aborts every connection's pumps.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pump(client_read, server_write, gate.clone()),
                            pump(server_read, client_write, gate),
                        );
                    }
                });
            }
        });
        Ok(Gate { open, address, task })
    }

    /// From now on nothing passes: bytes read after this call wait for [`Gate::release`].
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Lets everything held pass, in order, and what follows.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// A client for the bed's API server (as `config` reaches it) whose every connection
    /// passes through this gate.
    pub fn client(&self, config: &kube::Config) -> anyhow::Result<kube::Client> {
        let mut config = config.clone();
        // The certificate names the host (127.0.0.1), not the port, so TLS still verifies.
        config.cluster_url = format!("https://{}", self.address).parse()?;
        kube::Client::try_from(config).context("a client through the gate")
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gate in front of the bed's API server, and a client (for a controller) that uses it.
pub async fn gated_client(bed: &crate::TestBed) -> anyhow::Result<(Gate, kube::Client)> {
    let url = &bed.config().cluster_url;
    let host = url.host().context("the API server's URL has no host")?;
    let port = url.port_u16().unwrap_or(443);
    let upstream = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .context("the API server's address")?;
    let gate = Gate::start(upstream).await?;
    let client = gate.client(bed.config())?;
    Ok((gate, client))
}

/// Copies `from` to `to`, each chunk once the gate is open; closes `to` at the end of `from`.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, mut gate: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if gate.wait_for(|open| *open).await.is_err() || to.write_all(&buffer[..read]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
