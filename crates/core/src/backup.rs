//! Backup: an async source → plaintext tally → compression → age → stored
//! tally → multipart upload, then the manifest as the commit marker.
//!
//! Compression and encryption run on a blocking thread as a chain of
//! `std::io::Write` stages (flate2, zstd and age are synchronous encoders, and
//! the work is CPU-bound); bounded channels connect it to the async source and
//! to the uploader, so memory stays flat and backpressure runs end to end.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::bridge::{ChannelWriter, SOURCE_CHUNK};
use crate::compress::{FinishWrite, compressor};
use crate::crypt::Recipients;
use crate::error::{Error, Result};
use crate::layout::{Layout, object_path};
use crate::record::{Artifact, Compression, MANIFEST_FORMAT_VERSION, Manifest};
use crate::tally::{Progress, TallyWriter};
use crate::upload::{UploadOptions, Uploader};

/// What to back up where, and how.
#[derive(Debug)]
pub struct BackupRequest {
    /// The store to write to.
    pub store: Arc<dyn ObjectStore>,
    /// Object key of the payload (build it with [`Layout`]).
    pub path: String,
    /// The kind of backup, recorded in the manifest (e.g. "ExecBackup").
    pub kind: String,
    /// What is being backed up, in words, recorded in the manifest.
    pub source: String,
    /// Compression settings.
    pub compression: Compression,
    /// Recipients to encrypt to; empty for plaintext.
    pub recipients: Arc<Recipients>,
    /// Upload tuning.
    pub upload: UploadOptions,
    /// Live byte counts, for status and metrics.
    pub progress: Progress,
}

impl BackupRequest {
    /// A request with default compression (gzip 6), no encryption and default upload tuning.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        path: impl Into<String>,
        kind: impl Into<String>,
        source: impl Into<String>,
    ) -> Self {
        BackupRequest {
            store,
            path: path.into(),
            kind: kind.into(),
            source: source.into(),
            compression: Compression::default(),
            recipients: Arc::new(Recipients::default()),
            upload: UploadOptions::default(),
            progress: Progress::default(),
        }
    }
}

/// Streams `source` to storage and writes its manifest: the whole backup.
pub async fn backup<R: AsyncRead + Unpin + Send>(request: BackupRequest, source: R) -> Result<Artifact> {
    stream_payload(request, source).await?.commit(BTreeMap::new()).await
}

/// A payload that is fully uploaded but not yet committed: until
/// [`Staged::commit`] writes the manifest it counts as incomplete. Callers that
/// learn something only at the end of the stream (an etcd snapshot's own
/// checksum, object counts) check it here, then commit or discard.
#[derive(Debug)]
pub struct Staged {
    store: Arc<dyn ObjectStore>,
    kind: String,
    source: String,
    artifact: Artifact,
}

impl Staged {
    /// The artifact as it will be recorded (completion time is set on commit).
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// Writes the manifest, marking the artifact complete.
    pub async fn commit(mut self, details: BTreeMap<String, serde_json::Value>) -> Result<Artifact> {
        self.artifact.completed_at = Utc::now();
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            kind: self.kind,
            source: self.source,
            artifact: self.artifact.clone(),
            details,
        };
        let json = serde_json::to_vec_pretty(&manifest)?;
        let path = object_path(&self.artifact.manifest_path)?;
        self.store
            .put(&path, PutPayload::from(json))
            .await
            .map_err(|e| Error::storage("manifest upload", &path, e))?;
        Ok(self.artifact)
    }

    /// Deletes the uncommitted payload.
    pub async fn discard(self) -> Result<()> {
        let path = object_path(&self.artifact.path)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::storage("delete", &path, e)),
        }
    }
}

/// Messages to the encoding thread. A channel that closes without `End` means
/// the source failed: the thread then stops without writing trailers.
enum Input {
    Data(Bytes),
    End,
}

/// Streams `source` into storage without writing the manifest.
pub async fn stream_payload<R: AsyncRead + Unpin + Send>(request: BackupRequest, source: R) -> Result<Staged> {
    request.compression.validate()?;
    let started_at = Utc::now();
    let path = object_path(&request.path)?;

    let (input_tx, input_rx) = mpsc::channel::<Input>(4);
    let (output_tx, output_rx) = mpsc::channel::<Bytes>(4);
    let encoder = {
        let compression = request.compression.clone();
        let recipients = request.recipients.clone();
        let progress = request.progress.clone();
        tokio::task::spawn_blocking(move || encode(input_rx, output_tx, &compression, &recipients, &progress))
    };
    let uploader = Uploader::new(request.store.clone(), path, request.upload.clone());
    let (read, (uploader, upload), encoded) =
        tokio::join!(read_source(source, input_tx), upload(uploader, output_rx), encoder);
    let encoded = encoded.unwrap_or_else(|join| {
        Err(EncodeError::Failed(Error::Stage {
            stage: "encoding",
            source: std::io::Error::other(join),
        }))
    });

    // The root cause wins: a failing stage makes its neighbours fail too.
    let failure = match (read, upload, encoded) {
        (_, Err(e), _) | (Err(e), _, _) | (_, _, Err(EncodeError::Failed(e))) => Some(e),
        (_, _, Err(EncodeError::Interrupted)) => Some(Error::Stage {
            stage: "encoding",
            source: std::io::Error::other("the pipeline stopped unexpectedly"),
        }),
        (Ok(()), Ok(()), Ok(())) => None,
    };
    if let Some(error) = failure {
        uploader.abort().await;
        return Err(error);
    }
    uploader.finish().await?;

    let (plaintext_bytes, plaintext_sha256) = request.progress.plaintext.finish();
    let (stored_bytes, stored_sha256) = request.progress.stored.finish();
    Ok(Staged {
        store: request.store,
        kind: request.kind,
        source: request.source,
        artifact: Artifact {
            manifest_path: Layout::manifest_key(&request.path),
            path: request.path,
            stored_bytes,
            stored_sha256,
            plaintext_bytes,
            plaintext_sha256,
            compression: request.compression,
            recipients: request.recipients.names().to_vec(),
            started_at,
            completed_at: started_at,
        },
    })
}

async fn read_source<R: AsyncRead + Unpin>(mut source: R, tx: mpsc::Sender<Input>) -> Result<()> {
    loop {
        let mut buf = BytesMut::with_capacity(SOURCE_CHUNK);
        while buf.len() < SOURCE_CHUNK {
            if source.read_buf(&mut buf).await.map_err(Error::Source)? == 0 {
                break;
            }
        }
        let end = buf.len() < SOURCE_CHUNK;
        if !buf.is_empty() && tx.send(Input::Data(buf.freeze())).await.is_err() {
            return Ok(()); // downstream failed; its error is the one to report
        }
        if end {
            let _ = tx.send(Input::End).await;
            return Ok(());
        }
    }
}

async fn upload(mut uploader: Uploader, mut rx: mpsc::Receiver<Bytes>) -> (Uploader, Result<()>) {
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = uploader.push(chunk).await {
            return (uploader, Err(e));
        }
    }
    (uploader, Ok(()))
}

enum EncodeError {
    /// Stopped because a neighbouring stage failed; that stage reports why.
    Interrupted,
    Failed(Error),
}

fn encode(
    mut input: mpsc::Receiver<Input>,
    output: mpsc::Sender<Bytes>,
    compression: &Compression,
    recipients: &Recipients,
    progress: &Progress,
) -> Result<(), EncodeError> {
    let stage_error = |stage: &'static str| {
        move |source: std::io::Error| {
            if source.kind() == std::io::ErrorKind::BrokenPipe {
                EncodeError::Interrupted
            } else {
                EncodeError::Failed(Error::Stage { stage, source })
            }
        }
    };
    let sink: Box<dyn FinishWrite> = Box::new(TallyWriter::new(
        Box::new(ChannelWriter::new(output)) as Box<dyn FinishWrite>,
        progress.stored.clone(),
    ));
    let encrypted = recipients.encryptor(sink).map_err(EncodeError::Failed)?;
    let compressed = compressor(compression, encrypted).map_err(stage_error("compression"))?;
    let mut chain: Box<dyn FinishWrite> = Box::new(TallyWriter::new(compressed, progress.plaintext.clone()));
    loop {
        match input.blocking_recv() {
            Some(Input::Data(chunk)) => chain
                .write_chunk(chunk)
                .map_err(stage_error("compression and encryption"))?,
            Some(Input::End) => {
                return chain
                    .finish()
                    .map_err(stage_error("finishing compression and encryption"));
            }
            None => return Err(EncodeError::Interrupted),
        }
    }
}
