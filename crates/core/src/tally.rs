//! Counting and hashing the bytes that pass a point of the pipeline.
//!
//! A [`Tally`] is shared (`Arc`) so a controller can read progress while the
//! pipeline runs, and so the digest can be taken after the stage that fed it
//! has been consumed by `finish`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// Byte count and running SHA-256 of a stream.
#[derive(Default)]
pub struct Tally {
    bytes: AtomicU64,
    hasher: Mutex<Sha256>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally").field("bytes", &self.bytes()).finish()
    }
}

impl Tally {
    /// Bytes counted so far; safe to read while the pipeline runs.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn update(&self, data: &[u8]) {
        // A poisoned lock only means another thread panicked mid-update; the
        // pipeline is failing anyway, so keep counting rather than panic again.
        let mut hasher = self.hasher.lock().unwrap_or_else(|p| p.into_inner());
        hasher.update(data);
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    }

    /// Total bytes and hex SHA-256 of everything counted.
    pub fn finish(&self) -> (u64, String) {
        let hasher = self.hasher.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.bytes(), hex::encode(hasher.finalize()))
    }
}

/// Progress of a running backup or restore, readable at any time: clone it,
/// hand one clone to the pipeline and poll the other.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Bytes of plaintext (before compression and encryption, or after restoring).
    pub plaintext: Arc<Tally>,
    /// Bytes as stored (after compression and encryption).
    pub stored: Arc<Tally>,
}

/// A writer stage that tallies what it forwards.
pub(crate) struct TallyWriter<W> {
    inner: W,
    tally: Arc<Tally>,
}

impl<W> TallyWriter<W> {
    pub(crate) fn new(inner: W, tally: Arc<Tally>) -> Self {
        TallyWriter { inner, tally }
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }

    pub(crate) fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Counts bytes that reach the stage below by another way than `write`.
    pub(crate) fn tally(&self, data: &[u8]) {
        self.tally.update(data);
    }
}

impl<W: Write> Write for TallyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_match_sha256sum() {
        let tally = Arc::new(Tally::default());
        let mut w = TallyWriter::new(Vec::new(), tally.clone());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world\n").unwrap();
        assert_eq!(w.into_inner(), b"hello world\n");
        let (bytes, sha) = tally.finish();
        assert_eq!(bytes, 12);
        // printf 'hello world\n' | sha256sum
        assert_eq!(sha, "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447");
    }
}
