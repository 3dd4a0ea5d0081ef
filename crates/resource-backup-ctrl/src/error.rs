//! The one error type of the resource backup controller.
//!
//! Each error knows its stable PascalCase reason (Event reason, condition reason and metric
//! label) and whether it is the user's to fix (then retrying waits for a change).

/// Everything backing up or restoring Kubernetes objects can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the spec cannot work as written.
    #[error("invalid {field}: {reason}")]
    InvalidSpec { field: String, reason: String },

    /// The EncryptionConfiguration is missing, malformed or unusable.
    #[error("encryption configuration {source_name}: {reason}")]
    EncryptionConfig { source_name: String, reason: String },

    /// An encrypted object of the archive could not be decrypted with any key given.
    #[error("cannot decrypt {object} (written with {provider} key {key:?}): {reason}; keys tried: {tried}")]
    Decrypt {
        object: String,
        provider: String,
        key: String,
        tried: String,
        reason: String,
    },

    /// Something the object refers to does not exist: a ResourceSet, a Secret, a backup.
    #[error("{message}")]
    Missing { reason: &'static str, message: String },

    /// The archive is not what a ResourceBackup writes.
    #[error("archive {path}: {reason}")]
    Archive { path: String, reason: String },

    /// The Kubernetes API failed.
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    /// The data path (storage, compression, age, integrity checks) failed.
    #[error(transparent)]
    Core(#[from] stowage_core::Error),

    /// Serialising an object failed.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// The restore was stopped between objects: its ResourceRestore was deleted, or the
    /// controller is stopping. Never shown as a failure: the reconciler records a cancellation.
    #[error("the restore was cancelled")]
    Cancelled,

    /// Reading or writing the archive stream failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable PascalCase reason: Event reason, condition reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => "InvalidSpec",
            Error::EncryptionConfig { .. } => "InvalidEncryptionConfig",
            Error::Decrypt { .. } => "DecryptionFailed",
            Error::Missing { reason, .. } => reason,
            Error::Archive { .. } => "InvalidArchive",
            Error::Kube { .. } => "KubernetesError",
            Error::Core(stowage_core::Error::Integrity { .. }) => "IntegrityError",
            Error::Core(stowage_core::Error::WrongKey { .. } | stowage_core::Error::KeyRequired { .. }) => "WrongKey",
            Error::Core(stowage_core::Error::ManifestMissing { .. } | stowage_core::Error::NotFound { .. }) => {
                "ArtifactNotFound"
            }
            Error::Core(
                stowage_core::Error::InvalidRecipient { .. }
                | stowage_core::Error::InvalidIdentity(_)
                | stowage_core::Error::InvalidCompression(_)
                | stowage_core::Error::Layout(_)
                | stowage_core::Error::Template(_),
            ) => "InvalidSpec",
            Error::Core(_) => "StorageError",
            Error::Json { .. } => "SerializationError",
            Error::Io { .. } => "StreamError",
            Error::Cancelled => stowage_operator::cancel::CANCELLED,
        }
    }

    /// True when retrying cannot help until the user changes something.
    pub fn awaits_change(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec { .. } | Error::EncryptionConfig { .. } | Error::Decrypt { .. } | Error::Archive { .. }
        ) || matches!(
            self,
            Error::Core(
                stowage_core::Error::Integrity { .. }
                    | stowage_core::Error::KeyRequired { .. }
                    | stowage_core::Error::WrongKey { .. }
                    | stowage_core::Error::InvalidRecipient { .. }
                    | stowage_core::Error::InvalidIdentity(_)
                    | stowage_core::Error::InvalidCompression(_)
                    | stowage_core::Error::Layout(_)
                    | stowage_core::Error::Template(_)
                    | stowage_core::Error::ManifestMissing { .. }
                    | stowage_core::Error::ManifestInvalid { .. }
            )
        )
    }

    /// A Kubernetes API error, with what was being done.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube {
            action: action.into(),
            source,
        }
    }

    /// An invalid spec field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidSpec {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
