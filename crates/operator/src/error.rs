//! The one error type of the controller kit, shared by every controller's reconcilers.
//!
//! Each error knows its stable PascalCase reason (Event reason and metric label) and
//! whether retrying can help: an invalid spec waits for the user to change the object,
//! anything else is retried with per-object exponential backoff.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's spec cannot work as written; retrying will not help until it changes.
    #[error("{0}")]
    InvalidSpec(String),

    /// Something the object refers to does not exist (yet): a BackupStorage, a Secret, a key.
    /// Retried with backoff, since the user may create it.
    #[error("{message}")]
    MissingReference { reason: &'static str, message: String },

    /// The object may not use what it refers to (e.g. a BackupStorage's allowedNamespaces).
    #[error("{0}")]
    Forbidden(String),

    /// The Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// The data path failed.
    #[error(transparent)]
    Core(#[from] stowage_core::Error),

    /// A pod exec run failed: the Pod did not start, the command failed or timed out.
    #[error("{message}")]
    Exec { reason: &'static str, message: String },

    /// The object a write was meant for was deleted, or deleted and created again under the
    /// same name: the write was not made, so a new object never shows an old run's status.
    #[error("{kind} '{name}' is gone: it was deleted, or replaced by a new object of the same name")]
    Gone { kind: String, name: String },

    /// A reconcile-specific failure with its own stable reason.
    #[error("{message}")]
    Failed {
        reason: &'static str,
        message: String,
        transient: bool,
    },
}

/// Result with the kit's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable PascalCase reason: the Event reason, the condition reason and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingReference { reason, .. } => reason,
            Error::Forbidden(_) => "Forbidden",
            Error::Kube(_) => "KubernetesApiError",
            Error::Core(e) => e.reason(),
            Error::Exec { reason, .. } => reason,
            Error::Gone { .. } => "ObjectGone",
            Error::Failed { reason, .. } => reason,
        }
    }

    /// True when the object does not exist (a 404 from the API server, or [`Error::Gone`]): for
    /// a run's final status, its object was deleted (perhaps created again) meanwhile, and the
    /// run's Event is then the record.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(response)) if response.code == 404)
            || matches!(self, Error::Gone { .. })
    }

    /// True when the error is the user's to fix: the reconciler waits for the object to change.
    /// Also when the object is gone: there is nothing to retry, and a new object of the same
    /// name brings its own reconcile.
    pub fn awaits_change(&self) -> bool {
        match self {
            Error::InvalidSpec(_) | Error::Forbidden(_) | Error::Gone { .. } => true,
            Error::Core(e) => e.reason() == "InvalidSpec",
            Error::Failed { transient, .. } => !transient,
            _ => false,
        }
    }

    /// A failure with its own reason that retrying may fix.
    pub fn transient(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Failed {
            reason,
            message: message.into(),
            transient: true,
        }
    }

    /// A failure with its own reason that retrying will not fix.
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Error::Failed {
            reason,
            message: message.into(),
            transient: false,
        }
    }
}
