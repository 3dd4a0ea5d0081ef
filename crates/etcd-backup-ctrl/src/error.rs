//! The one error type of the etcd backup controller. Each error knows its stable PascalCase
//! reason (condition reason, Event reason, metric label) and whether retrying can help.

/// Everything an etcd backup can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TLS credentials are not usable PEM, or an https endpoint has none.
    #[error("{0}")]
    InvalidCredentials(String),

    /// No endpoint answered a status request.
    #[error("no etcd member could be reached: {0}")]
    Unreachable(String),

    /// An endpoint answered, but the TLS handshake failed (wrong CA, a client certificate the
    /// server refuses, a server name that does not match).
    #[error("TLS with etcd failed: {0}")]
    Tls(String),

    /// Members answered, but each reported errors (for example a NOSPACE alarm).
    #[error("no healthy etcd member: {0}")]
    Unhealthy(String),

    /// The snapshot stream broke off.
    #[error("etcd snapshot from {endpoint} failed: {message}")]
    Snapshot { endpoint: String, message: String },

    /// The snapshot's trailing SHA-256 does not match its contents.
    #[error("etcd snapshot integrity check failed: {0}")]
    Integrity(String),

    /// `certsDir` is not a readable directory.
    #[error("certsDir {path}: {reason}")]
    CertsDir { path: String, reason: String },

    /// The backup was stopped before it was committed: its EtcdBackup was deleted, or the
    /// controller is stopping.
    #[error("the backup was stopped before it was committed; its uploads were aborted and nothing was stored")]
    Cancelled,

    /// The data path (compression, encryption, upload, manifest) failed.
    #[error(transparent)]
    Core(#[from] stowage_core::Error),
}

/// Result with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A stable PascalCase reason: the condition and Event reason and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidCredentials(_) => "InvalidCredentials",
            Error::Unreachable(_) => "EtcdUnreachable",
            Error::Tls(_) => "EtcdTLSFailed",
            Error::Unhealthy(_) => "EtcdUnhealthy",
            Error::Snapshot { .. } => "SnapshotFailed",
            Error::Integrity(_) => "IntegrityError",
            Error::CertsDir { .. } => "CertsDirNotFound",
            Error::Cancelled => stowage_operator::cancel::CANCELLED,
            Error::Core(core) => match source_error(core) {
                Some(ours) => ours.reason(),
                None => core.reason(),
            },
        }
    }

    /// True when trying again later may succeed: the network, etcd or storage may recover,
    /// and a Secret may be rotated without the EtcdBackup changing. Bad PEM, a missing
    /// certsDir and an invalid spec wait for the user.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::InvalidCredentials(_) | Error::CertsDir { .. } | Error::Cancelled => false,
            Error::Unreachable(_)
            | Error::Tls(_)
            | Error::Unhealthy(_)
            | Error::Snapshot { .. }
            | Error::Integrity(_) => true,
            Error::Core(core) => match source_error(core) {
                Some(ours) => ours.is_transient(),
                None => core.is_transient() || core.reason() == "SourceFailed",
            },
        }
    }

    /// This error as the `io::Error` a source stream fails with; core carries it to the caller
    /// inside `stowage_core::Error::Source`, where [`Error::reason`] finds it again.
    pub fn into_io(self) -> std::io::Error {
        let kind = match self {
            Error::Integrity(_) => std::io::ErrorKind::InvalidData,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, self)
    }
}

impl From<Error> for stowage_operator::Error {
    fn from(error: Error) -> Self {
        error.into_kit()
    }
}

impl Error {
    /// As the controller kit's error, keeping the reason and whether retrying helps.
    pub fn into_kit(self) -> stowage_operator::Error {
        match self {
            Error::Core(core) if source_error(&core).is_none() => stowage_operator::Error::Core(core),
            other if other.is_transient() => stowage_operator::Error::transient(other.reason(), other.to_string()),
            other => stowage_operator::Error::permanent(other.reason(), other.to_string()),
        }
    }
}

/// Our own error inside a core source failure, if that is what it is.
fn source_error(core: &stowage_core::Error) -> Option<&Error> {
    match core {
        stowage_core::Error::Source(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<Error>()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_integrity_failure_keeps_its_reason_through_core() {
        let core = stowage_core::Error::Source(Error::Integrity("trailer mismatch".into()).into_io());
        let error = Error::from(core);
        assert_eq!(error.reason(), "IntegrityError");
        assert!(error.to_string().contains("trailer mismatch"), "{error}");
        assert!(error.is_transient());
    }

    #[test]
    fn user_errors_wait_for_a_change() {
        let missing = Error::CertsDir {
            path: "/etc/kubernetes/pki".into(),
            reason: "not found".into(),
        };
        assert_eq!(missing.reason(), "CertsDirNotFound");
        assert!(!missing.is_transient());
        assert!(!Error::InvalidCredentials("bad PEM".into()).is_transient());
        assert!(Error::Unreachable("refused".into()).is_transient());
    }
}
