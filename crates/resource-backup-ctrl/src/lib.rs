//! Stowage's resource backup controller: the objects a ResourceSet selects, streamed as a
//! tar of JSON files (some encrypted the way the API server encrypts them at rest) into
//! stowage-core's data path, and restored from there in dependency order with
//! ownerReferences re-linked to the new owners.

pub mod archive;
pub mod backup;
pub mod encryption;
pub mod error;
pub mod plan;
pub mod prune;
pub mod restore;
pub mod selector;

pub use error::{Error, Result};
