//! The scheduler's one error type: what is wrong with a schedule as written.
//! Everything that touches the cluster reports through the controller kit's error.

/// A schedule that cannot work as written; it waits for the user to change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The cron expression or its time zone cannot be read, or never fires.
    #[error("{0}")]
    InvalidSchedule(String),
    /// The retention rules cannot be read.
    #[error("{0}")]
    InvalidRetention(String),
}

impl Error {
    /// The stable PascalCase reason: condition reason, Event reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSchedule(_) => "InvalidSchedule",
            Error::InvalidRetention(_) => "InvalidSpec",
        }
    }
}

impl From<Error> for stowage_operator::Error {
    fn from(error: Error) -> Self {
        stowage_operator::Error::permanent(error.reason(), error.to_string())
    }
}
