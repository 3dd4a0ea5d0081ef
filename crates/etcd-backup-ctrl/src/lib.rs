//! Stowage's etcd backup controller: an EtcdBackup's etcd snapshot (and optionally the
//! control plane's certificate directory) streamed through core to a BackupStorage.
//!
//! [`snapshot`] talks to etcd and verifies the snapshot's own checksum as it streams,
//! [`certs`] archives the certificate directory, [`backup`] runs one backup without
//! Kubernetes, and the reconciler turns EtcdBackup objects into runs.

pub mod backup;
pub mod certs;
pub mod error;
pub mod snapshot;

pub use backup::{BackupOutcome, BackupPlan, EtcdDetails};
pub use error::{Error, Result};
pub use snapshot::{EtcdTarget, MemberStatus, Snapshot, SnapshotReader, TlsPem};
