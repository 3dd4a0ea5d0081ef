//! The one error type of stowctl. Messages say what failed and what to do.

/// Everything a stowctl command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage configuration file is missing or does not parse.
    #[error("storage configuration {path}: {reason}")]
    Config { path: String, reason: String },

    /// The cluster could not be reached or refused a request.
    #[error("{0}")]
    Cluster(String),

    /// The command's arguments cannot work (a non-empty data directory, a wrong artifact).
    #[error("{0}")]
    Refused(String),

    /// The data path failed: storage, decryption, integrity.
    #[error(transparent)]
    Core(#[from] stowage_core::Error),

    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// An external tool (etcdutl, etcdctl) is missing or failed.
    #[error("{0}")]
    Tool(String),
}

/// Result with stowctl's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
