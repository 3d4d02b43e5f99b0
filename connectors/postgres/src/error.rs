//! The one error type of this crate.

use thiserror::Error;

/// Everything that can go wrong while reading a PostgreSQL replication slot.
///
/// Messages name tables, columns, slots, publications, configuration keys and
/// LSNs, never row values or passwords.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PgError {
    /// The configuration is invalid. `key` names the offending field.
    #[error("invalid configuration `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// The server is not set up for logical replication (`wal_level`, server
    /// encoding, missing privilege). `setting` names what to change.
    #[error("server setting `{setting}`: {reason}")]
    ServerConfig { setting: String, reason: String },

    /// Could not connect or the connection broke. Retryable from the last
    /// acknowledged LSN.
    #[error("connection: {reason}")]
    Connection { reason: String },

    /// The slot is gone, or the WAL it needs was removed: the stream cannot
    /// resume where it stopped. Take a new snapshot (issue a `lablake
    /// snapshot`), then start from the new slot; retrying does not help.
    #[error("replication position lost: {reason}")]
    PositionLost { reason: String },

    /// A replication message is malformed or unsupported.
    #[error("pgoutput protocol error at LSN {lsn}: {reason}")]
    Protocol { lsn: String, reason: String },

    /// Spilling a large streamed transaction to disk failed.
    #[error("spill file: {0}")]
    Spill(#[from] std::io::Error),
}

impl PgError {
    /// Whether retrying (reconnecting from the last acknowledged LSN) can help.
    pub fn is_retryable(&self) -> bool {
        matches!(self, PgError::Connection { .. } | PgError::Spill(_))
    }
}

/// `X/Y`, PostgreSQL's LSN notation.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
