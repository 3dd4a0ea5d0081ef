//! A throwaway etcd server (Debian's etcd-server, 3.4) on free loopback ports in a temporary
//! directory, optionally requiring client certificates, killed when dropped. The etcd backup
//! controller's tests snapshot and restore it.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::pki::{CertFiles, CertificateAuthority};
use crate::process::{ManagedChild, free_port, wait_for_port};

const ETCD: &str = "/usr/bin/etcd";

#[derive(Debug, Default, Clone)]
pub struct EtcdOptions {
    /// Serve HTTPS and require a client certificate signed by the server's CA.
    pub tls: bool,
}

/// The files a client needs to talk to a TLS etcd: paths and PEM contents.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed both the server and the client certificate (`ca.crt`, `ca.key`).
    pub ca: CertFiles,
    /// The client certificate and key (`client.crt`, `client.key`).
    pub client: CertFiles,
}

/// A running etcd; killed (and its directory removed) when dropped.
#[derive(Debug)]
pub struct EtcdServer {
    // Field order is drop order: the process dies before its directory is removed.
    process: ManagedChild,
    endpoint: String,
    tls: Option<EtcdTls>,
    dir: TempDir,
}

impl EtcdServer {
    /// Starts etcd and waits until its client port accepts connections.
    pub fn start(options: EtcdOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(ETCD).is_file(),
            "etcd not found at {ETCD}: run `cargo xtask envtest install` or `apt-get install etcd-server`"
        );
        let dir = tempfile::Builder::new()
            .prefix("stowage-etcd-")
            .tempdir()
            .context("creating etcd's directory")?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let scheme = if options.tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");

        let mut command = Command::new(ETCD);
        command
            .arg("--name=fixture")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg("--unsafe-no-fsync")
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=fixture={peer_url}"));
        let tls = if options.tls {
            let ca = CertificateAuthority::create(dir.path(), "ca")?;
            let server = ca.issue_server(dir.path(), "server")?;
            let client = ca.issue_client(dir.path(), "client", "stowage-test-client")?;
            command
                .arg(format!("--cert-file={}", server.cert_path.display()))
                .arg(format!("--key-file={}", server.key_path.display()))
                .arg(format!("--trusted-ca-file={}", ca.files.cert_path.display()))
                .arg("--client-cert-auth");
            Some(EtcdTls { ca: ca.files, client })
        } else {
            None
        };
        let mut process = ManagedChild::spawn("etcd", command, &dir.path().join("etcd.log"))?;
        wait_for_port(&mut process, client_port, std::time::Duration::from_secs(60))?;
        Ok(Self {
            process,
            endpoint,
            tls,
            dir,
        })
    }

    /// The client URL, `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The CA and client certificate, when started with `tls: true`.
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// An etcd-client connection to this server, with the client certificate if TLS is on.
    pub async fn connect(&self) -> anyhow::Result<etcd_client::Client> {
        install_crypto_provider();
        let mut options = etcd_client::ConnectOptions::new();
        if let Some(tls) = &self.tls {
            let identity = etcd_client::Identity::from_pem(&tls.client.cert_pem, &tls.client.key_pem);
            let ca = etcd_client::Certificate::from_pem(&tls.ca.cert_pem);
            options = options.with_tls(etcd_client::TlsOptions::new().ca_certificate(ca).identity(identity));
        }
        etcd_client::Client::connect([self.endpoint.as_str()], Some(options))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.endpoint))
    }
}

/// rustls needs one process-wide crypto provider when several are compiled in; the workspace
/// settles on aws-lc-rs.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
