//! The one error type of stowage-core. Every message says what failed and, where
//! it can, what the user should do about it.

use std::io;

/// Everything that can go wrong in the data path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recipient string is neither an age X25519 recipient nor a supported SSH public key.
    #[error(
        "invalid encryption recipient {recipient:?}: {reason} (expected an age recipient `age1…` or an SSH public key `ssh-ed25519 …` / `ssh-rsa …`)"
    )]
    InvalidRecipient { recipient: String, reason: String },

    /// An identity (private key) could not be read.
    #[error("invalid decryption key: {0}")]
    InvalidIdentity(String),

    /// The payload is encrypted, but none of the given keys is one of its recipients.
    #[error(
        "none of the decryption keys matches the artifact's recipients ({recipients}): use the private key of one of them"
    )]
    WrongKey { recipients: String },

    /// The payload is encrypted and no decryption key was given.
    #[error("the artifact is encrypted to {recipients}: a decryption key is needed to restore it")]
    KeyRequired { recipients: String },

    /// A compression setting is out of range.
    #[error("invalid compression: {0}")]
    InvalidCompression(String),

    /// The manifest (the commit marker) of an artifact does not exist: the backup never completed.
    #[error(
        "artifact {path} has no manifest ({manifest}): the backup that wrote it did not complete, so it cannot be trusted"
    )]
    ManifestMissing { path: String, manifest: String },

    /// The manifest exists but cannot be used.
    #[error("manifest {manifest} is unusable: {reason}")]
    ManifestInvalid { manifest: String, reason: String },

    /// Stored bytes do not match what the manifest recorded.
    #[error("integrity check failed for {path}: {detail}")]
    Integrity { path: String, detail: String },

    /// A payload or manifest is missing from storage.
    #[error("{path} not found in storage")]
    NotFound { path: String },

    /// An object key or path template is not acceptable.
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),

    /// A path template does not parse or render.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),

    /// The storage configuration is incomplete or inconsistent.
    #[error("invalid storage configuration: {0}")]
    InvalidStorage(String),

    /// The object store refused or failed a request.
    #[error("storage {operation} failed for {path}: {source}")]
    Storage {
        operation: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// Reading the source stream failed (for example the backup command's stdout broke).
    #[error("reading the backup source failed: {0}")]
    Source(#[source] io::Error),

    /// Writing into the restore sink failed (for example the restore command exited early).
    #[error("writing the restored data failed: {0}")]
    Sink(#[source] io::Error),

    /// Compression, encryption or their worker threads failed.
    #[error("{stage} failed: {source}")]
    Stage {
        stage: &'static str,
        #[source]
        source: io::Error,
    },

    /// A manifest could not be serialised or parsed.
    #[error("manifest JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result with the core error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable PascalCase category: the Event reason and metric label controllers use.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidRecipient { .. }
            | Error::InvalidIdentity(_)
            | Error::InvalidCompression(_)
            | Error::Layout(_)
            | Error::Template(_)
            | Error::InvalidStorage(_) => "InvalidSpec",
            Error::WrongKey { .. } | Error::KeyRequired { .. } => "DecryptionFailed",
            Error::ManifestMissing { .. } | Error::ManifestInvalid { .. } | Error::Integrity { .. } => "IntegrityError",
            Error::NotFound { .. } => "ArtifactNotFound",
            Error::Storage { .. } => "StorageUnavailable",
            Error::Source(_) => "SourceFailed",
            Error::Sink(_) => "SinkFailed",
            Error::Stage { .. } | Error::Json(_) => "InternalError",
        }
    }

    /// True when trying again later may succeed (network, storage outages).
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Storage { .. })
    }

    /// A failed storage `operation` on `path`; a missing object is [`Error::NotFound`].
    pub fn storage(operation: &'static str, path: impl ToString, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound { path: path.to_string() },
            source => Error::Storage {
                operation,
                path: path.to_string(),
                source,
            },
        }
    }
}
