//! Stowage's data path.
//!
//! A source is an `AsyncRead` handed to [`backup()`], which compresses,
//! encrypts, hashes and uploads it and writes a manifest as the commit marker;
//! [`restore()`] is the mirror, verifying everything against the manifest.
//! Controllers never touch bytes themselves. This crate knows nothing of
//! Kubernetes.

pub mod backup;
mod bridge;
pub mod catalog;
mod compress;
pub mod crypt;
pub mod error;
pub mod etcd_details;
pub mod golayout;
mod gzip;
pub mod layout;
mod pool;
pub mod record;
pub mod restore;
pub mod storage;
mod tally;
pub mod template;
#[cfg(feature = "testing")]
pub mod testing;
mod upload;

pub use backup::{BackupRequest, PipelineOptions, Staged, backup, stream_payload};
pub use crypt::{Identities, Recipients};
pub use error::{Error, Result};
pub use etcd_details::EtcdDetails;
pub use layout::Layout;
pub use record::{Algorithm, Artifact, Compression, Manifest, human_bytes};
pub use restore::{RestoreRequest, read_manifest, restore};
pub use storage::{Credentials, StorageSpec, StorageType};
pub use tally::{Progress, Tally};
pub use upload::UploadOptions;
