//! Talking to etcd: connect to each endpoint (TLS from PEM), choose the healthy member with
//! the highest revision, and open its snapshot stream. etcd ends every snapshot with the
//! SHA-256 of everything before it; [`SnapshotReader`] checks it as the bytes pass and fails
//! the stream at its end when it does not match, so core never commits a damaged snapshot.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::{Error, Result};

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(15);
/// etcd's snapshot trailer: a SHA-256.
const TRAILER: usize = 32;

/// etcd client TLS material as PEM text, from the Secret's `ca.crt`, `client.crt` and
/// `client.key`. `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct TlsPem {
    /// The CA that signed etcd's serving certificate.
    pub ca: String,
    /// The client certificate and its key, when etcd requires client certificates.
    pub client: Option<(String, String)>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("client_certificate", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// The etcd cluster to back up: its client URLs and, for https, the TLS material.
#[derive(Clone, Debug, Default)]
pub struct EtcdTarget {
    /// Client URLs, `http://…` or `https://…`.
    pub endpoints: Vec<String>,
    /// TLS material for the https endpoints.
    pub tls: Option<TlsPem>,
}

/// What one member said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The endpoint that answered.
    pub endpoint: String,
    pub cluster_id: u64,
    pub member_id: u64,
    /// The member's current revision.
    pub revision: i64,
    /// etcd server version, e.g. "3.4.23".
    pub version: String,
    /// Size of the member's database in bytes.
    pub db_size: i64,
    /// True when this member is the raft leader.
    pub is_leader: bool,
    /// Errors the member reports about itself (alarms); a healthy member has none.
    pub errors: Vec<String>,
}

impl MemberStatus {
    /// Cluster id as hex, as etcdctl prints it.
    pub fn cluster_id_hex(&self) -> String {
        format!("{:x}", self.cluster_id)
    }

    /// Member id as hex, as etcdctl prints it.
    pub fn member_id_hex(&self) -> String {
        format!("{:x}", self.member_id)
    }
}

/// An open snapshot stream of one member.
pub struct Snapshot {
    /// The member being snapshotted.
    pub member: MemberStatus,
    /// The revision etcd reported with the snapshot (or the member's status revision before
    /// it, when the snapshot carries none).
    pub revision: i64,
    /// The raw snapshot bytes as etcd sends them, trailer included. Wrap it in a
    /// [`SnapshotReader`] to read it with its checksum verified.
    pub stream: BoxStream<'static, io::Result<Bytes>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("member", &self.member)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl EtcdTarget {
    /// Asks every endpoint for its status and chooses the healthy member with the highest
    /// revision (the leader among equals). Fails with every endpoint's problem when none will do.
    pub async fn choose_member(&self) -> Result<MemberStatus> {
        if self.endpoints.is_empty() {
            return Err(Error::Unreachable("no endpoints given".into()));
        }
        let statuses = futures::future::join_all(self.endpoints.iter().map(|e| self.status(e))).await;
        choose(statuses)
    }

    /// The status of the member at `endpoint`.
    pub async fn status(&self, endpoint: &str) -> Result<MemberStatus> {
        let mut client = self.connect(endpoint, Some(STATUS_TIMEOUT)).await?;
        let status = client
            .status()
            .await
            .map_err(|e| self.classify(endpoint, "status request", &e))?;
        let header = status.header();
        let member_id = header.map_or(0, |h| h.member_id());
        Ok(MemberStatus {
            endpoint: endpoint.to_string(),
            cluster_id: header.map_or(0, |h| h.cluster_id()),
            member_id,
            revision: header.map_or(0, |h| h.revision()),
            version: status.version().to_string(),
            db_size: status.db_size(),
            is_leader: member_id != 0 && status.leader() == member_id,
            errors: status.errors().to_vec(),
        })
    }

    /// Opens the snapshot stream of `member`.
    pub async fn snapshot(&self, member: MemberStatus) -> Result<Snapshot> {
        let endpoint = member.endpoint.clone();
        // No request timeout: it would cut a large snapshot short.
        let mut client = self.connect(&endpoint, None).await?;
        let mut streaming = client
            .snapshot()
            .await
            .map_err(|e| self.classify(&endpoint, "snapshot request", &e))?;
        let mut first = streaming
            .message()
            .await
            .map_err(|e| self.classify(&endpoint, "snapshot stream", &e))?
            .ok_or_else(|| Error::Snapshot {
                endpoint: endpoint.clone(),
                message: "the member closed the snapshot stream without sending anything".into(),
            })?;
        let revision = first
            .take_header()
            .map(|h| h.revision())
            .filter(|&r| r > 0)
            .unwrap_or(member.revision);
        let first_blob = Bytes::copy_from_slice(first.blob());
        let rest = futures::stream::try_unfold((client, streaming), move |(client, mut streaming)| {
            let endpoint = endpoint.clone();
            async move {
                match streaming.message().await {
                    Ok(Some(message)) => Ok(Some((Bytes::copy_from_slice(message.blob()), (client, streaming)))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(Error::Snapshot {
                        endpoint,
                        message: error_chain(&e),
                    }
                    .into_io()),
                }
            }
        });
        let stream = futures::stream::once(async move { Ok(first_blob) }).chain(rest).boxed();
        Ok(Snapshot {
            member,
            revision,
            stream,
        })
    }

    async fn connect(&self, endpoint: &str, timeout: Option<Duration>) -> Result<etcd_client::Client> {
        install_crypto_provider();
        let mut options = etcd_client::ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(timeout) = timeout {
            options = options.with_timeout(timeout);
        }
        if endpoint.starts_with("https://") {
            let tls = self.tls.as_ref().ok_or_else(|| {
                Error::InvalidCredentials(format!(
                    "endpoint {endpoint} uses https but no TLS credentials were given: set credentialsSecretRef to a Secret with ca.crt, client.crt and client.key, or use an http endpoint"
                ))
            })?;
            options = options.with_tls(tls_options(tls)?);
        } else if !endpoint.starts_with("http://") {
            return Err(Error::InvalidCredentials(format!(
                "endpoint {endpoint:?} is not a URL: write it as https://HOST:PORT or http://HOST:PORT"
            )));
        }
        etcd_client::Client::connect([endpoint], Some(options))
            .await
            .map_err(|e| self.classify(endpoint, "connecting", &e))
    }

    /// Sorts a client error into unreachable, TLS failure or a broken snapshot.
    fn classify(&self, endpoint: &str, what: &str, error: &etcd_client::Error) -> Error {
        let text = error_chain(error);
        let lower = text.to_ascii_lowercase();
        let tls_words = ["certificate", "handshake", "tls", "unknownissuer", "badsignature"];
        if endpoint.starts_with("https://") && tls_words.iter().any(|w| lower.contains(w)) {
            return Error::Tls(format!(
                "{endpoint}: {what}: {text} (check ca.crt, client.crt and client.key)"
            ));
        }
        if what.starts_with("snapshot") {
            return Error::Snapshot {
                endpoint: endpoint.to_string(),
                message: format!("{what}: {text}"),
            };
        }
        Error::Unreachable(format!("{endpoint}: {what}: {text}"))
    }
}

/// Chooses the healthy member with the highest revision; the leader wins a tie, then the
/// first endpoint. When none is usable, the error lists what each endpoint said.
pub fn choose(statuses: Vec<Result<MemberStatus>>) -> Result<MemberStatus> {
    let mut problems = Vec::new();
    let mut best: Option<MemberStatus> = None;
    let mut tls_failed = false;
    let mut answered = false;
    for status in statuses {
        match status {
            Ok(member) if member.errors.is_empty() => {
                answered = true;
                let better = best
                    .as_ref()
                    .is_none_or(|b| (member.revision, member.is_leader) > (b.revision, b.is_leader));
                if better {
                    best = Some(member);
                }
            }
            Ok(member) => {
                answered = true;
                problems.push(format!("{} reports {}", member.endpoint, member.errors.join("; ")));
            }
            Err(error) => {
                if let Error::InvalidCredentials(_) = error {
                    return Err(error);
                }
                tls_failed |= matches!(error, Error::Tls(_));
                problems.push(match error {
                    Error::Unreachable(detail) | Error::Tls(detail) | Error::Unhealthy(detail) => detail,
                    other => other.to_string(),
                });
            }
        }
    }
    match best {
        Some(member) => Ok(member),
        None if tls_failed => Err(Error::Tls(problems.join("; "))),
        None if answered => Err(Error::Unhealthy(problems.join("; "))),
        None => Err(Error::Unreachable(problems.join("; "))),
    }
}

fn tls_options(tls: &TlsPem) -> Result<etcd_client::TlsOptions> {
    let looks_like_pem = |text: &str| text.contains("-----BEGIN ");
    if !looks_like_pem(&tls.ca) {
        return Err(Error::InvalidCredentials("ca.crt is not a PEM certificate".into()));
    }
    let mut options = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
    if let Some((cert, key)) = &tls.client {
        if !looks_like_pem(cert) {
            return Err(Error::InvalidCredentials("client.crt is not a PEM certificate".into()));
        }
        if !looks_like_pem(key) {
            return Err(Error::InvalidCredentials("client.key is not a PEM private key".into()));
        }
        options = options.identity(etcd_client::Identity::from_pem(cert, key));
    }
    Ok(options)
}

/// rustls needs one process-wide crypto provider when several are compiled in; the workspace
/// settles on aws-lc-rs.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client error with its causes, one after the other: tonic's own message ("transport
/// error") says little without them, and its status prints its source as debug output.
fn error_chain(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = status.message().to_string();
            append_causes(&mut text, std::error::Error::source(status));
            text
        }
        other => {
            let mut text = other.to_string();
            append_causes(&mut text, std::error::Error::source(other));
            text
        }
    }
}

fn append_causes(text: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
}

/// Reads a snapshot stream while hashing everything but its last 32 bytes, and fails at the
/// end of the stream (instead of reporting end-of-file) when those 32 bytes are not the
/// SHA-256 of the rest. The bytes themselves pass through unchanged, trailer included, so the
/// stored file is exactly what `etcdctl snapshot save` writes and `snapshot restore` checks.
pub struct SnapshotReader<S> {
    stream: S,
    chunk: Bytes,
    hasher: Sha256,
    /// The last bytes seen (at most 32), not hashed yet: they may be the trailer.
    held: Vec<u8>,
    total: u64,
    finished: bool,
    verified: Arc<AtomicBool>,
}

impl<S> SnapshotReader<S> {
    /// Wraps a stream of snapshot chunks.
    pub fn new(stream: S) -> Self {
        SnapshotReader {
            stream,
            chunk: Bytes::new(),
            hasher: Sha256::new(),
            held: Vec::with_capacity(TRAILER),
            total: 0,
            finished: false,
            verified: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that turns true once the whole stream was read and its checksum matched.
    pub fn verified(&self) -> Arc<AtomicBool> {
        self.verified.clone()
    }

    fn absorb(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= TRAILER {
            self.hasher.update(&self.held);
            self.hasher.update(&data[..data.len() - TRAILER]);
            self.held.clear();
            self.held.extend_from_slice(&data[data.len() - TRAILER..]);
        } else {
            self.held.extend_from_slice(data);
            if self.held.len() > TRAILER {
                let excess = self.held.len() - TRAILER;
                self.hasher.update(&self.held[..excess]);
                self.held.drain(..excess);
            }
        }
    }

    fn verify(&self) -> Result<()> {
        if self.total < TRAILER as u64 {
            return Err(Error::Integrity(format!(
                "the snapshot stream ended after {} bytes, before etcd's 32-byte SHA-256 trailer",
                self.total
            )));
        }
        let computed = self.hasher.clone().finalize();
        if computed.as_slice() != self.held.as_slice() {
            return Err(Error::Integrity(format!(
                "the SHA-256 of the {} snapshot bytes received is {}, but etcd's trailer says {}: the snapshot was damaged on its way; no manifest was written",
                self.total - TRAILER as u64,
                hex::encode(computed),
                hex::encode(&self.held)
            )));
        }
        Ok(())
    }
}

impl<S> std::fmt::Debug for SnapshotReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("total", &self.total)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<S> AsyncRead for SnapshotReader<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.chunk.is_empty() {
                let n = this.chunk.len().min(buf.remaining());
                buf.put_slice(&this.chunk[..n]);
                this.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.finished {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.stream.poll_next_unpin(cx)) {
                Some(Ok(data)) => {
                    this.absorb(&data);
                    this.chunk = data;
                }
                Some(Err(error)) => return Poll::Ready(Err(error)),
                None => {
                    this.verify().map_err(Error::into_io)?;
                    this.finished = true;
                    this.verified.store(true, Ordering::Release);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn with_trailer(body: &[u8]) -> Vec<u8> {
        let mut data = body.to_vec();
        data.extend_from_slice(&Sha256::digest(body));
        data
    }

    async fn read_all(chunks: Vec<Vec<u8>>) -> io::Result<Vec<u8>> {
        let stream = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
        let mut reader = SnapshotReader::new(stream);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        assert!(reader.verified().load(Ordering::Acquire));
        Ok(out)
    }

    #[tokio::test]
    async fn a_good_stream_passes_through_unchanged_however_it_is_chunked() {
        let data = with_trailer(&(0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        for size in [1, 7, 31, 32, 33, 512, 4096, 100_000] {
            let chunks = data.chunks(size).map(<[u8]>::to_vec).collect();
            assert_eq!(read_all(chunks).await.unwrap(), data, "chunk size {size}");
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_fails_the_stream_with_an_integrity_error() {
        let mut data = with_trailer(&[7u8; 5000]);
        data[1234] ^= 0x01;
        let error = read_all(data.chunks(1000).map(<[u8]>::to_vec).collect())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("integrity check failed"), "{error}");
        let ours = error.get_ref().and_then(|e| e.downcast_ref::<Error>()).unwrap();
        assert_eq!(ours.reason(), "IntegrityError");
    }

    #[tokio::test]
    async fn a_stream_shorter_than_the_trailer_fails() {
        let error = read_all(vec![vec![1, 2, 3]]).await.unwrap_err();
        assert!(error.to_string().contains("ended after 3 bytes"), "{error}");
    }

    fn member(endpoint: &str, revision: i64, is_leader: bool) -> MemberStatus {
        MemberStatus {
            endpoint: endpoint.into(),
            cluster_id: 1,
            member_id: 2,
            revision,
            version: "3.4.23".into(),
            db_size: 0,
            is_leader,
            errors: Vec::new(),
        }
    }

    #[test]
    fn the_healthy_member_with_the_highest_revision_wins() {
        let alarmed = MemberStatus {
            errors: vec!["NOSPACE".into()],
            ..member("c", 99, false)
        };
        let chosen = choose(vec![
            Ok(member("a", 10, false)),
            Err(Error::Unreachable("b: refused".into())),
            Ok(alarmed),
            Ok(member("d", 12, false)),
            Ok(member("e", 12, true)),
        ])
        .unwrap();
        assert_eq!(chosen.endpoint, "e");
    }

    #[test]
    fn no_usable_member_says_why_for_each_endpoint() {
        let error = choose(vec![
            Err(Error::Unreachable("a: refused".into())),
            Err(Error::Unreachable("b: timed out".into())),
        ])
        .unwrap_err();
        assert_eq!(error.reason(), "EtcdUnreachable");
        assert!(error.to_string().contains("a: refused") && error.to_string().contains("b: timed out"));
        let error = choose(vec![Err(Error::Tls("a: UnknownIssuer".into()))]).unwrap_err();
        assert_eq!(error.reason(), "EtcdTLSFailed");
    }
}
