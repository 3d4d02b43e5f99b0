//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong talking to Snowflake or loading into it.
///
/// Messages name the endpoint, the tenant's database, tables and columns,
/// never row values, passwords, tokens or keys.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnowflakeError {
    /// The configuration is invalid. `key` names the offending field.
    #[error("invalid configuration `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// Login was refused (wrong credentials, unknown user, bad key). Not
    /// retried: the same credentials fail again.
    #[error("login to {endpoint} refused: {reason}")]
    Auth { endpoint: String, reason: String },

    /// The endpoint could not be reached or answered with a transient
    /// failure (connection error, timeout, HTTP 429/5xx). Retryable.
    #[error("{endpoint} unreachable or failing: {reason}")]
    Unavailable { endpoint: String, reason: String },

    /// A statement failed (`code` is Snowflake's error code, e.g. `002003`).
    #[error("statement failed ({code}{state}): {message}", state = sql_state.as_deref().map(|s| format!(", SQL state {s}")).unwrap_or_default())]
    Query { code: String, sql_state: Option<String>, message: String },

    /// An answer this client cannot understand (malformed JSON, Arrow, chunk).
    #[error("unexpected answer from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
}

impl SnowflakeError {
    /// Whether the same call may succeed later (after a backoff).
    pub fn is_retryable(&self) -> bool {
        matches!(self, SnowflakeError::Unavailable { .. })
    }

    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        SnowflakeError::Config { key: key.to_owned(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailability_is_retryable() {
        let e = SnowflakeError::Unavailable { endpoint: "http://x".into(), reason: "503".into() };
        assert!(e.is_retryable());
        assert!(!SnowflakeError::Auth { endpoint: "http://x".into(), reason: "bad".into() }.is_retryable());
        let q = SnowflakeError::Query { code: "002003".into(), sql_state: Some("42S02".into()), message: "m".into() };
        assert!(!q.is_retryable());
        assert_eq!(q.to_string(), "statement failed (002003, SQL state 42S02): m");
    }
}
