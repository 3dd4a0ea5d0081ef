//! Shared helpers for the core integration tests: real backends, real keys,
//! and a sink that records whether it was told the stream ended.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};

use object_store::ObjectStore;
use sha2::{Digest, Sha256};
use stowage_core::storage;
use stowage_core::testing::{S3Server, filesystem_spec};
use tokio::io::AsyncWrite;

/// The two backends every storage test runs against.
pub struct Backends {
    pub s3: S3Server,
    pub fs_dir: tempfile::TempDir,
}

impl Backends {
    pub async fn start() -> Backends {
        let s3 = S3Server::start("stowage").await.unwrap_or_else(|e| panic!("{e}"));
        Backends {
            s3,
            fs_dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn stores(&self) -> Vec<(&'static str, Arc<dyn ObjectStore>)> {
        let fs = storage::build(&filesystem_spec(self.fs_dir.path()), &Default::default()).unwrap();
        vec![("s3s-fs", self.s3.store()), ("filesystem", fs)]
    }
}

/// An age X25519 key pair: (identity file text, recipient).
pub fn age_key() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    (
        identity.to_string().expose_secret().to_string(),
        identity.to_public().to_string(),
    )
}

/// An OpenSSH key pair made by ssh-keygen: (private key text, public key line).
pub fn ssh_key(kind: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-C", "test@stowage", "-f"])
        .arg(&path)
        .args(if kind == "rsa" { &["-b", "2048"][..] } else { &[][..] })
        .status()
        .expect("ssh-keygen not found: apt-get install openssh-client");
    assert!(status.success());
    (
        std::fs::read_to_string(&path).unwrap(),
        std::fs::read_to_string(path.with_extension("pub")).unwrap(),
    )
}

/// Path of a stock tool, failing with an install hint when it is missing.
pub fn tool(name: &str, package: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(path.exists(), "{name} not found: apt-get install {package}");
    path
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An in-memory sink that remembers whether it was shut down (end-of-file).
#[derive(Default)]
pub struct RecordingSink {
    pub data: Vec<u8>,
    pub shut_down: bool,
}

impl AsyncWrite for RecordingSink {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.data.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shut_down = true;
        Poll::Ready(Ok(()))
    }
}
