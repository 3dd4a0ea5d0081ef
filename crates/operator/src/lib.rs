//! Stowage's shared controller kit.
//!
//! Each controller crate holds only its reconcilers; everything they share lives here:
//! the [`runner`] (arguments, tracing, metrics and health server, leader election, shutdown),
//! the reconcile [`Context`] (client, Events, metrics, clock), status [`conditions`], the error
//! [`policy`] with per-object backoff and the reporter, BackupStorage resolution ([`storage`]),
//! Secret values ([`secrets`]), and the pod exec transport ([`podexec`]).

pub mod admin;
pub mod cancel;
pub mod conditions;
pub mod context;
pub mod error;
pub mod finalizer;
pub mod leader;
pub mod metrics;
pub mod podexec;
pub mod policy;
pub mod runner;
pub mod secrets;
pub mod status;
pub mod storage;
pub mod storage_status;

pub use context::Context;
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use policy::{error_policy, report, run_controller};
pub use storage::{ResolvedStorage, resolve as resolve_storage};
