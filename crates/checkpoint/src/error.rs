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
