//! Test support (feature `testing`): a real S3 server (s3s-fs) on a loopback
//! port, and deterministic data generators for tests and benchmarks.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use object_store::ObjectStore;
use tokio::io::{AsyncRead, ReadBuf};

use crate::storage::{self, Credentials, FilesystemSpec, RetrySpec, S3Spec, StorageSpec, StorageType};

/// The s3s-fs version the project tests against (newer ones need a newer rustc).
pub const S3S_FS_VERSION: &str = "0.14.1";

/// Where `cargo xtask test` installs s3s-fs.
pub fn s3s_fs_install_root() -> PathBuf {
    cache_dir().join("tools").join(format!("s3s-fs-{S3S_FS_VERSION}"))
}

/// `$XDG_CACHE_HOME/stowage`, or `~/.cache/stowage`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("stowage")
}

/// Finds the s3s-fs binary: `$STOWAGE_S3S_FS`, the xtask cache, then `PATH`.
pub fn s3s_fs_binary() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("STOWAGE_S3S_FS") {
        return Ok(PathBuf::from(path));
    }
    let cached = s3s_fs_install_root().join("bin").join("s3s-fs");
    if cached.exists() {
        return Ok(cached);
    }
    if let Some(found) = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"))
        .find(|p| p.exists())
    {
        return Ok(found);
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "s3s-fs not found: run `cargo xtask test` (it installs it), or `cargo install s3s-fs --version {S3S_FS_VERSION} --features binary --locked --root {}`",
            s3s_fs_install_root().display()
        ),
    ))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running s3s-fs (signature-checking S3) with one bucket, killed on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    root: tempfile::TempDir,
    port: u16,
    bucket: String,
}

const ACCESS_KEY: &str = "stowage-test";
const SECRET_KEY: &str = "stowage-test-secret-key";

impl S3Server {
    /// Starts s3s-fs on a free loopback port with bucket `bucket`.
    pub async fn start(bucket: &str) -> io::Result<S3Server> {
        let root = tempfile::Builder::new().prefix("stowage-s3-").tempdir()?;
        std::fs::create_dir(root.path().join(bucket))?;
        let mut server = S3Server {
            child: None,
            root,
            port: free_port()?,
            bucket: bucket.to_string(),
        };
        server.restart().await?;
        Ok(server)
    }

    /// Starts the server again (same port, same data) after [`S3Server::kill`].
    pub async fn restart(&mut self) -> io::Result<()> {
        let binary = s3s_fs_binary()?;
        let log = std::fs::File::create(self.root.path().join("s3s-fs.log"))?;
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", binary.display())))?;
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(io::Error::other(format!(
                    "s3s-fs exited with {status}; see {}",
                    self.root.path().join("s3s-fs.log").display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(io::Error::other(format!(
            "s3s-fs did not listen on port {} within 10 s",
            self.port
        )))
    }

    /// Stops the server abruptly, as an outage would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The storage spec of this server (path-style, plain http).
    pub fn spec(&self) -> StorageSpec {
        StorageSpec {
            storage_type: StorageType::S3,
            s3: Some(S3Spec {
                bucket: self.bucket.clone(),
                endpoint: self.endpoint(),
                region: "us-east-1".into(),
                allow_http: true,
                force_path_style: true,
            }),
            ..StorageSpec::default()
        }
    }

    /// The credentials this server accepts.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ..Credentials::default()
        }
    }

    /// An object store for this server that fails fast instead of retrying for minutes.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let spec = StorageSpec {
            retry: Some(RetrySpec {
                max_retries: Some(0),
                timeout_seconds: Some(5),
            }),
            ..self.spec()
        };
        storage::build(&spec, &self.credentials()).expect("the test server's own spec is valid")
    }

    /// The server's URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The bucket's directory on disk.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.path().join(&self.bucket)
    }

    /// Multipart uploads that were started and neither completed nor aborted.
    pub fn open_uploads(&self) -> Vec<String> {
        list_names(self.root.path())
            .into_iter()
            .filter(|n| n.starts_with(".upload"))
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn list_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A filesystem storage spec rooted at `dir`.
pub fn filesystem_spec(dir: &Path) -> StorageSpec {
    StorageSpec {
        storage_type: StorageType::Filesystem,
        filesystem: Some(FilesystemSpec {
            path: dir.display().to_string(),
        }),
        ..StorageSpec::default()
    }
}

/// What a generated stream looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// SQL-dump-like text that gzip compresses to about a fifth.
    SqlDump,
    /// Incompressible bytes.
    Random,
}

/// A deterministic, fast, endless-or-bounded generated stream (an `AsyncRead`
/// and a `std::io::Read`), so tests and benchmarks need no fixture files.
#[derive(Debug)]
pub struct Generated {
    pattern: Pattern,
    remaining: u64,
    state: u64,
    line: Vec<u8>,
    line_pos: usize,
    row: u64,
}

impl Generated {
    /// `len` bytes of `pattern`, the same for the same `seed`.
    pub fn new(pattern: Pattern, seed: u64, len: u64) -> Generated {
        Generated {
            pattern,
            remaining: len,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            line: Vec::new(),
            line_pos: 0,
            row: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*: fast and good enough for test data.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next_line(&mut self) {
        const WORDS: [&str; 16] = [
            "alpha",
            "delivered",
            "pending",
            "refund",
            "express",
            "berlin",
            "paris",
            "order",
            "customer",
            "invoice",
            "shipped",
            "returned",
            "premium",
            "standard",
            "warehouse",
            "tokyo",
        ];
        self.row += 1;
        let r = self.next_u64();
        let w = |shift: u32| WORDS[((r >> shift) & 15) as usize];
        let cents = (r >> 8) % 1_000_000;
        self.line.clear();
        use std::io::Write as _;
        let _ = writeln!(
            self.line,
            "INSERT INTO orders (id, customer_id, status, city, amount, note) VALUES ({}, {}, '{}', '{}', {}.{:02}, '{} {} {} {:x}');",
            self.row,
            (r >> 20) % 100_000,
            w(40),
            w(44),
            cents / 100,
            cents % 100,
            w(48),
            w(52),
            w(56),
            r & 0xffff_ffff,
        );
        self.line_pos = 0;
    }

    /// Fills `out` (as far as the remaining length allows); returns the bytes written.
    pub fn fill(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let out = &mut out[..n];
        match self.pattern {
            Pattern::Random => {
                for chunk in out.chunks_mut(8) {
                    let v = self.next_u64().to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
            }
            Pattern::SqlDump => {
                let mut filled = 0;
                while filled < n {
                    if self.line_pos == self.line.len() {
                        self.next_line();
                    }
                    let take = (n - filled).min(self.line.len() - self.line_pos);
                    out[filled..filled + take].copy_from_slice(&self.line[self.line_pos..self.line_pos + take]);
                    self.line_pos += take;
                    filled += take;
                }
            }
        }
        self.remaining -= n as u64;
        n
    }
}

impl io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.fill(buf))
    }
}

impl AsyncRead for Generated {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.fill(buf.initialize_unfilled());
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

/// An `AsyncWrite` that keeps only the count and SHA-256 of what it receives,
/// so tests and benchmarks can check gigabytes without holding them.
#[derive(Debug, Default)]
pub struct HashingSink {
    hasher: sha2::Sha256,
    bytes: u64,
    shut_down: bool,
}

impl HashingSink {
    /// Bytes received.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Hex SHA-256 of the bytes received.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        hex::encode(self.hasher.clone().finalize())
    }

    /// Whether the writer ended the stream (shutdown).
    pub fn was_shut_down(&self) -> bool {
        self.shut_down
    }
}

impl tokio::io::AsyncWrite for HashingSink {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        use sha2::Digest;
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut_down = true;
        Poll::Ready(Ok(()))
    }
}
