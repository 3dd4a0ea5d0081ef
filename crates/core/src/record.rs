//! The serialisable records of the data path: compression settings, the
//! artifact a backup produced, and the manifest stored beside it.
//!
//! `///` comments here are user documentation: these types are embedded in the
//! custom resources and show up in `kubectl explain`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The current manifest format. Readers refuse manifests from the future.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// A compression algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// gzip (RFC 1952). Parallel compression writes several gzip members, which any gunzip reads.
    #[default]
    Gzip,
    /// Zstandard, multithreaded.
    Zstd,
    /// No compression.
    None,
}

/// How a payload is compressed before it is encrypted and stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// gzip (default), zstd or none.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Compression level: gzip 1-9 (default 6), zstd 1-19 (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 19))]
    pub level: Option<u32>,
    /// Threads compressing in parallel. Defaults to the number of available cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub workers: Option<u32>,
}

impl Compression {
    /// gzip at the given level.
    pub fn gzip(level: u32) -> Self {
        Compression {
            algorithm: Algorithm::Gzip,
            level: Some(level),
            workers: None,
        }
    }

    /// zstd at the given level.
    pub fn zstd(level: u32) -> Self {
        Compression {
            algorithm: Algorithm::Zstd,
            level: Some(level),
            workers: None,
        }
    }

    /// No compression.
    pub fn none() -> Self {
        Compression {
            algorithm: Algorithm::None,
            level: None,
            workers: None,
        }
    }

    /// The level in effect (the algorithm's default when unset).
    pub fn effective_level(&self) -> u32 {
        match (self.algorithm, self.level) {
            (_, Some(level)) => level,
            (Algorithm::Gzip, None) => 6,
            (Algorithm::Zstd, None) => 3,
            (Algorithm::None, None) => 0,
        }
    }

    /// The number of compression threads in effect.
    pub fn effective_workers(&self) -> usize {
        match self.workers {
            Some(n) => n.max(1) as usize,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// Refuses levels the algorithm does not have.
    pub fn validate(&self) -> Result<()> {
        let level = self.effective_level();
        let ok = match self.algorithm {
            Algorithm::Gzip => (1..=9).contains(&level),
            Algorithm::Zstd => (1..=19).contains(&level),
            Algorithm::None => self.level.is_none(),
        };
        if !ok {
            let range = match self.algorithm {
                Algorithm::Gzip => "1-9",
                Algorithm::Zstd => "1-19",
                Algorithm::None => "unset",
            };
            return Err(Error::InvalidCompression(format!(
                "level {level} is out of range for {:?} (allowed: {range})",
                self.algorithm
            )));
        }
        if self.workers == Some(0) {
            return Err(Error::InvalidCompression("workers must be at least 1".into()));
        }
        Ok(())
    }

    /// The file extension this compression adds ("gz", "zst" or "").
    pub fn extension(&self) -> &'static str {
        match self.algorithm {
            Algorithm::Gzip => "gz",
            Algorithm::Zstd => "zst",
            Algorithm::None => "",
        }
    }

    /// A short human description, e.g. "gzip level 6".
    pub fn describe(&self) -> String {
        match self.algorithm {
            Algorithm::None => "none".to_string(),
            algorithm => format!(
                "{} level {}",
                format!("{algorithm:?}").to_lowercase(),
                self.effective_level()
            ),
        }
    }
}

/// The record of one stored backup payload: where it is and what it holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    /// Object key of the payload inside the storage.
    pub path: String,
    /// Object key of the manifest, written last: its presence marks the artifact complete.
    pub manifest_path: String,
    /// Size of the payload as stored (after compression and encryption), in bytes.
    pub stored_bytes: u64,
    /// SHA-256 of the payload as stored, hex.
    pub stored_sha256: String,
    /// Size of the data before compression and encryption, in bytes.
    pub plaintext_bytes: u64,
    /// SHA-256 of the data before compression and encryption, hex.
    pub plaintext_sha256: String,
    /// How the payload is compressed.
    pub compression: Compression,
    /// Public keys the payload is encrypted to; empty when it is not encrypted.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// When the backup started streaming.
    pub started_at: DateTime<Utc>,
    /// When the payload was complete and the manifest written.
    pub completed_at: DateTime<Utc>,
}

impl Artifact {
    /// True when the payload is encrypted.
    pub fn encrypted(&self) -> bool {
        !self.recipients.is_empty()
    }
}

/// The manifest stored as `<payload>.manifest.json` after the payload: the
/// commit marker of an artifact, readable without a cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Manifest format version ([`MANIFEST_FORMAT_VERSION`]).
    pub format_version: u32,
    /// The kind of backup that wrote it, e.g. "ExecBackup".
    pub kind: String,
    /// What was backed up, in words (e.g. "ExecBackup db/nightly: pg_dump app").
    pub source: String,
    /// The artifact itself.
    #[serde(flatten)]
    pub artifact: Artifact,
    /// Free-form details from the controller (object counts, etcd revision…).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub details: BTreeMap<String, serde_json::Value>,
}

impl Manifest {
    /// Parses a manifest and checks that this version of Stowage can read it.
    pub fn from_slice(manifest_path: &str, bytes: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::ManifestInvalid {
            manifest: manifest_path.to_string(),
            reason: format!("not a Stowage manifest: {e}"),
        })?;
        if manifest.format_version > MANIFEST_FORMAT_VERSION {
            return Err(Error::ManifestInvalid {
                manifest: manifest_path.to_string(),
                reason: format!(
                    "format version {} is newer than this Stowage understands ({MANIFEST_FORMAT_VERSION}): upgrade Stowage",
                    manifest.format_version
                ),
            });
        }
        Ok(manifest)
    }
}

/// Formats a byte count for people: "1.5 GiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_checked_per_algorithm() {
        assert!(Compression::gzip(9).validate().is_ok());
        assert!(Compression::gzip(10).validate().is_err());
        assert!(Compression::zstd(19).validate().is_ok());
        assert!(Compression::zstd(0).validate().is_err());
        assert!(Compression::none().validate().is_ok());
        let with_level = Compression {
            level: Some(3),
            ..Compression::none()
        };
        assert!(with_level.validate().is_err());
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn manifests_from_the_future_are_refused() {
        let json = r#"{"formatVersion": 99, "kind": "X", "source": "", "path": "p", "manifestPath": "p.manifest.json",
            "storedBytes": 0, "storedSha256": "", "plaintextBytes": 0, "plaintextSha256": "",
            "compression": {"algorithm": "none"}, "startedAt": "2026-01-01T00:00:00Z", "completedAt": "2026-01-01T00:00:00Z"}"#;
        let err = Manifest::from_slice("p.manifest.json", json.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("upgrade Stowage"), "{err}");
    }
}
