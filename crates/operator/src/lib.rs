//! Stowage's shared controller kit.
//!
//! Each controller crate holds only its reconcilers; everything they share lives here:
//! the runner (arguments, tracing, metrics and health server, leader election, shutdown),
//! the reconcile [`Context`], status conditions, Events, the error policy with per-object
//! backoff, BackupStorage resolution, and the pod exec transport.

pub mod error;
pub mod podexec;

pub use error::{Error, Result};
