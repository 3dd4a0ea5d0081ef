//! Restore: the manifest first (no manifest, no restore), then a streaming GET
//! → stored tally → age → decompression → plaintext tally → the sink, with
//! sizes and SHA-256 of both sides checked against the manifest at the end.
//!
//! Three threads share the work: the download (which hashes the stored bytes),
//! the decoding thread (age and decompression) and the writer (which hashes the
//! plaintext). Hashing on the decoding thread made it the bottleneck: on
//! incompressible data two SHA-256 passes cost more than decryption.
//!
//! The sink is shut down (end-of-file) only after every check passed. On any
//! error it is left as it is: a consumer such as a restore command never sees
//! a clean end of its input, and the caller kills it.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::{GetResult, GetResultPayload, ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::bridge::{CHUNK, ChannelReader, SOURCE_CHUNK};
use crate::compress::decompressor;
use crate::crypt::Identities;
use crate::error::{Error, Result};
use crate::layout::{Layout, object_path};
use crate::record::Manifest;
use crate::tally::{Progress, Tally};

/// What to restore, with which keys.
#[derive(Debug)]
pub struct RestoreRequest {
    /// The store to read from.
    pub store: Arc<dyn ObjectStore>,
    /// Object key of the payload.
    pub path: String,
    /// Private keys; may be empty for plaintext artifacts.
    pub identities: Arc<Identities>,
    /// Live byte counts, for status and metrics.
    pub progress: Progress,
}

impl RestoreRequest {
    /// A request without keys.
    pub fn new(store: Arc<dyn ObjectStore>, path: impl Into<String>) -> Self {
        RestoreRequest {
            store,
            path: path.into(),
            identities: Arc::new(Identities::none()),
            progress: Progress::default(),
        }
    }
}

/// Reads and checks the manifest of the payload at `path`.
pub async fn read_manifest(store: &dyn ObjectStore, path: &str) -> Result<Manifest> {
    let manifest_path = Layout::manifest_key(path);
    let location = object_path(&manifest_path)?;
    let bytes = match store.get(&location).await {
        Ok(result) => result
            .bytes()
            .await
            .map_err(|e| Error::storage("manifest read", &location, e))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::ManifestMissing {
                path: path.to_string(),
                manifest: manifest_path,
            });
        }
        Err(e) => return Err(Error::storage("manifest read", &location, e)),
    };
    let manifest = Manifest::from_slice(&manifest_path, &bytes)?;
    if manifest.artifact.path != path {
        return Err(Error::ManifestInvalid {
            manifest: manifest_path,
            reason: format!("it describes {}, not this payload", manifest.artifact.path),
        });
    }
    Ok(manifest)
}

/// Streams the artifact at `request.path` into `sink`, verified. Returns its manifest.
pub async fn restore<W: AsyncWrite + Unpin + Send>(request: RestoreRequest, sink: &mut W) -> Result<Manifest> {
    let manifest = read_manifest(request.store.as_ref(), &request.path).await?;
    let artifact = &manifest.artifact;
    if artifact.encrypted() && request.identities.is_empty() {
        return Err(Error::KeyRequired {
            recipients: artifact.recipients.join(", "),
        });
    }
    let location = object_path(&request.path)?;
    let payload = request
        .store
        .get(&location)
        .await
        .map_err(|e| Error::storage("download", &location, e))?;
    if payload.meta.size != artifact.stored_bytes {
        return Err(integrity(
            &request.path,
            format!(
                "the payload is {} bytes but its manifest recorded {}: truncated or replaced",
                payload.meta.size, artifact.stored_bytes
            ),
        ));
    }

    let (input_tx, input_rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let (output_tx, output_rx) = mpsc::channel::<Bytes>(4);
    let feed = feed(payload, location.clone(), input_tx, request.progress.stored.clone());
    let decoder = {
        let manifest = manifest.clone();
        let identities = request.identities.clone();
        tokio::task::spawn_blocking(move || decode(input_rx, output_tx, &manifest, &identities))
    };
    let write = async {
        let mut output_rx = output_rx;
        while let Some(chunk) = output_rx.recv().await {
            request.progress.plaintext.update(&chunk);
            sink.write_all(&chunk).await.map_err(Error::Sink)?;
        }
        Ok::<(), Error>(())
    };
    let ((), decoded, written) = tokio::join!(feed, decoder, write);
    let decoded = decoded.unwrap_or_else(|join| {
        Err(Error::Stage {
            stage: "decoding",
            source: io::Error::other(join),
        })
    });
    match (decoded, written) {
        (Err(e), _) => return Err(with_path(e, &request.path)),
        (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(())) => {}
    }

    let (stored_bytes, stored_sha256) = request.progress.stored.finish();
    if (stored_bytes, stored_sha256.as_str()) != (artifact.stored_bytes, artifact.stored_sha256.as_str()) {
        return Err(integrity(
            &request.path,
            format!(
                "stored SHA-256 {stored_sha256} ({stored_bytes} bytes) differs from the manifest's {} ({} bytes)",
                artifact.stored_sha256, artifact.stored_bytes
            ),
        ));
    }
    let (plaintext_bytes, plaintext_sha256) = request.progress.plaintext.finish();
    if (plaintext_bytes, plaintext_sha256.as_str()) != (artifact.plaintext_bytes, artifact.plaintext_sha256.as_str()) {
        return Err(integrity(
            &request.path,
            format!(
                "restored SHA-256 {plaintext_sha256} ({plaintext_bytes} bytes) differs from the manifest's {} ({} bytes)",
                artifact.plaintext_sha256, artifact.plaintext_bytes
            ),
        ));
    }
    sink.shutdown().await.map_err(Error::Sink)?;
    Ok(manifest)
}

/// Feeds the payload to the decoding thread in large chunks. A local file is
/// read directly, 1 MiB at a time: object_store's own stream for files reads
/// 8 KiB per blocking task, and on a restore from a filesystem store those
/// task hand-offs cost more CPU than decryption. A network stream's small
/// frames are coalesced for the same reason: one wake-up per chunk.
async fn feed(
    payload: GetResult,
    location: object_store::path::Path,
    tx: mpsc::Sender<io::Result<Bytes>>,
    stored: Arc<Tally>,
) {
    let storage_error = move |e| io::Error::other(Error::storage("download", &location, e));
    match payload.payload {
        GetResultPayload::File(file, _) => {
            let range = payload.range;
            // A failed read is sent to the decoder, which reports it; a panic
            // closes the channel early, which the decoder reports as truncation.
            let _ = tokio::task::spawn_blocking(move || {
                read_file(file, range, &tx, &stored).map_err(|e| {
                    let e = object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    };
                    let _ = tx.blocking_send(Err(storage_error(e)));
                })
            })
            .await;
        }
        GetResultPayload::Stream(mut stream) => {
            let mut chunk = BytesMut::with_capacity(CHUNK);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(bytes) => {
                        chunk.extend_from_slice(&bytes);
                        if chunk.len() >= CHUNK {
                            let full = chunk.split().freeze();
                            chunk.reserve(CHUNK);
                            stored.update(&full);
                            if tx.send(Ok(full)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(storage_error(e))).await;
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                stored.update(&chunk);
                let _ = tx.send(Ok(chunk.freeze())).await;
            }
        }
    }
}

fn read_file(
    mut file: std::fs::File,
    range: std::ops::Range<u64>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    stored: &Tally,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(range.start))?;
    let mut file = file.take(range.end - range.start);
    loop {
        let mut chunk = Vec::with_capacity(SOURCE_CHUNK);
        if (&mut file).take(SOURCE_CHUNK as u64).read_to_end(&mut chunk)? == 0 {
            return Ok(());
        }
        stored.update(&chunk);
        if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
            return Ok(()); // the decoder stopped; it reports why
        }
    }
}

fn integrity(path: &str, detail: String) -> Error {
    Error::Integrity {
        path: path.to_string(),
        detail,
    }
}

fn with_path(error: Error, path: &str) -> Error {
    match error {
        Error::Integrity { path: p, detail } if p.is_empty() => integrity(path, detail),
        other => other,
    }
}

fn decode(
    input: mpsc::Receiver<io::Result<Bytes>>,
    output: mpsc::Sender<Bytes>,
    manifest: &Manifest,
    identities: &Identities,
) -> Result<()> {
    let stored = BufReader::with_capacity(CHUNK, ChannelReader::new(input));
    let decrypted: Box<dyn Read + Send> = if manifest.artifact.encrypted() {
        identities.decryptor(stored, &manifest.artifact.recipients)?
    } else {
        Box::new(stored)
    };
    let mut plaintext = decompressor(
        manifest.artifact.compression.algorithm,
        decrypted,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )
    .map_err(read_error)?;
    loop {
        let mut buf = BytesMut::zeroed(SOURCE_CHUNK);
        let mut filled = 0;
        while filled < SOURCE_CHUNK {
            match plaintext.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        if output.blocking_send(buf.freeze()).is_err() {
            // The sink stopped; the writer reports why.
            return Ok(());
        }
    }
}

/// A storage failure travels through the reader chain as an `io::Error`
/// wrapping our own error: unwrap it so it is reported as what it is, and
/// treat every other read failure as damaged data.
fn read_error(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(Ok(ours)) = e.into_inner().map(|inner| inner.downcast::<Error>()) {
            return *ours;
        }
        return Error::Stage {
            stage: "decoding",
            source: io::Error::other("storage read failed"),
        };
    }
    Error::Integrity {
        path: String::new(),
        detail: format!("the payload does not decode: {e}"),
    }
}
