use thiserror::Error;

/// Errors of checkpoint stores.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// A conditional write failed: another writer holds a newer generation or
    /// wrote a newer version. The caller must stop (not retry).
    #[error("fenced: {0}")]
    Fenced(String),
    /// The backend failed; retry with backoff.
    #[error("checkpoint backend error: {message}")]
    Backend {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A stored item cannot be read (names the item, not its contents).
    #[error("corrupt checkpoint item `{0}`")]
    Corrupt(String),
    /// A requested change the stored state does not allow (a cut-over to a
    /// generation that is not verified): nothing is written; an operator
    /// decides.
    #[error("{what} {reason}")]
    Invalid { what: String, reason: String },
    /// Invalid configuration (names the key).
    #[error("invalid checkpoint configuration `{key}`: {reason}")]
    Config { key: String, reason: String },
}

impl CheckpointError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CheckpointError::Backend { .. })
    }
}
