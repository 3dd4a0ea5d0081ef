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

use crate::bridge::ChannelWriter;
use crate::compress::{FinishWrite, compressor};
use crate::crypt::Recipients;
use crate::error::{Error, Result};
use crate::gzip;
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
    /// How much the pipeline holds between the source and the upload.
    pub pipeline: PipelineOptions,
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
            pipeline: PipelineOptions::default(),
            progress: Progress::default(),
        }
    }
}

/// How much a backup holds between reading its source and uploading it: the depth of its
/// pipeline. The plaintext is about `block_size × (queued_blocks + pending_compressions + 2)`
/// (one block being read, one being handed to compression); the compressed bytes on their way
/// to the upload `256 KiB × (queued_blocks + 1)`; the upload's parts come on top
/// ([`UploadOptions`]).
///
/// The default reads far enough ahead to keep every core compressing when the source is
/// fast (a database dump, a volume): about 10 MiB on two cores. A slow source (an API
/// server listing objects at a few MB/s) never needs that depth, and on a busy machine it
/// would fill it anyway while the compressing threads wait for a core; a shallow pipeline
/// (e.g. [`PipelineOptions::shallow`]) holds a megabyte or two instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Plaintext read from the source at a time; with gzip also the plaintext of each member,
    /// the unit one core compresses (and a restore inflates). Smaller blocks cost a little
    /// compression ratio: each member starts without history. Kept within
    /// 64 KiB..=8 MiB. Default 1 MiB.
    pub block_size: usize,
    /// Blocks queued between stages (at least 1): read ahead of the compressing thread, and
    /// compressed chunks (256 KiB) waiting for the upload. Default 4.
    pub queued_blocks: usize,
    /// gzip blocks being compressed or waiting their turn to be written (at least 1);
    /// `None` (the default): two per compression worker, so every worker has its next block.
    pub pending_compressions: Option<usize>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            block_size: gzip::BLOCK,
            queued_blocks: 4,
            pending_compressions: None,
        }
    }
}

impl PipelineOptions {
    /// For sources slower than compression: 256 KiB blocks, one read ahead, two compressing.
    /// About 1.25 MiB of plaintext in the pipeline.
    pub fn shallow() -> Self {
        PipelineOptions {
            block_size: 256 * 1024,
            queued_blocks: 1,
            pending_compressions: Some(2),
        }
    }

    /// The block size in effect.
    pub(crate) fn effective_block_size(&self) -> usize {
        self.block_size.clamp(MIN_BLOCK, MAX_BLOCK)
    }

    /// gzip blocks pending at most with `workers` compressing threads.
    pub(crate) fn effective_pending(&self, workers: usize) -> usize {
        self.pending_compressions.unwrap_or(workers.max(1) * 2).max(1)
    }
}

/// Smallest block: below this the per-member and per-message overheads start to show.
const MIN_BLOCK: usize = 64 * 1024;
/// Largest block: a member of incompressible data must stay within what a restore accepts.
const MAX_BLOCK: usize = 8 * 1024 * 1024;

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

    let block_size = request.pipeline.effective_block_size();
    let queued = request.pipeline.queued_blocks.max(1);
    let (input_tx, input_rx) = mpsc::channel::<Input>(queued);
    let (output_tx, output_rx) = mpsc::channel::<Bytes>(queued);
    let encoder = {
        let compression = request.compression.clone();
        let pipeline = request.pipeline.clone();
        let recipients = request.recipients.clone();
        let progress = request.progress.clone();
        tokio::task::spawn_blocking(move || {
            encode(input_rx, output_tx, &compression, &pipeline, &recipients, &progress)
        })
    };
    let uploader = Uploader::new(request.store.clone(), path, request.upload.clone());
    let (read, (uploader, upload), encoded) = tokio::join!(
        read_source(source, input_tx, block_size),
        upload(uploader, output_rx),
        encoder
    );
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

/// Reads `source` in blocks of `block_size` (a gzip stage takes each as it is, uncopied).
async fn read_source<R: AsyncRead + Unpin>(mut source: R, tx: mpsc::Sender<Input>, block_size: usize) -> Result<()> {
    loop {
        let mut buf = BytesMut::with_capacity(block_size);
        while buf.len() < block_size {
            if source.read_buf(&mut buf).await.map_err(Error::Source)? == 0 {
                break;
            }
        }
        let end = buf.len() < block_size;
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
    pipeline: &PipelineOptions,
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
    let compressed = compressor(compression, pipeline, encrypted).map_err(stage_error("compression"))?;
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
