//! Stowage's etcd backup controller: an EtcdBackup's etcd snapshot (and optionally the
//! control plane's certificate directory) streamed through core to a BackupStorage.
//!
//! [`snapshot`] talks to etcd and verifies the snapshot's own checksum as it streams,
//! [`certs`] archives the certificate directory, [`backup`] runs one backup without
//! Kubernetes, [`inputs`] gathers a run's inputs from an EtcdBackup and its Secret, and the
//! [`reconcile`]r turns EtcdBackup objects into runs ([`controller`] wires it to the kit).

pub mod backup;
pub mod certs;
pub mod controller;
pub mod error;
pub mod inputs;
pub mod metrics;
pub mod reconcile;
pub mod snapshot;

pub use backup::{BackupOutcome, BackupPlan, EtcdDetails};
pub use controller::{CONTROLLER, EtcdContext, run, start};
pub use error::{Error, Result};
pub use snapshot::{EtcdTarget, MemberStatus, Snapshot, SnapshotReader, TlsPem};
