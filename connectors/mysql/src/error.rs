//! The one error type of this crate and its retry classification.

use thiserror::Error;

/// Everything that can go wrong while reading a MySQL/MariaDB binlog.
///
/// Messages name tables, columns, configuration keys and binlog positions,
/// never row values or passwords.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MysqlError {
    /// The configuration is invalid. `key` names the offending field.
    #[error("invalid configuration `{key}`: {reason}")]
    Config { key: String, reason: String },

    /// The server refused the credentials or lacks a privilege the reader
    /// needs (REPLICATION SLAVE, REPLICATION CLIENT / BINLOG MONITOR, SELECT
    /// on information_schema). Retrying does not help.
    #[error("access denied: {reason}")]
    AccessDenied { reason: String },

    /// The server is not set up for row-based CDC (binlog disabled, format is
    /// not ROW, row image is not FULL, ...). `setting` names the variable.
    #[error("server setting `{setting}`: {reason}")]
    ServerConfig { setting: String, reason: String },

    /// Could not connect (network, TLS handshake, timeout). Retryable.
    #[error("cannot connect to the server: {reason}")]
    Connect {
        reason: String,
        #[source]
        source: Option<mysql_async::Error>,
    },

    /// The connection broke or stalled while streaming or querying. Retryable
    /// from the last acknowledged resume point.
    #[error("connection lost: {reason}")]
    Connection {
        reason: String,
        #[source]
        source: Option<mysql_async::Error>,
    },

    /// The requested binlog position no longer exists (file purged, GTID not
    /// in the binlogs). Needs a new snapshot; retrying the same position
    /// fails again.
    #[error("binlog position lost: {reason}")]
    PositionLost { reason: String },

    /// The event stream is malformed or uses a feature the reader does not
    /// support (compressed MariaDB events, incident events, truncated
    /// events, checksum mismatch).
    #[error("binlog protocol error at {file}:{pos}: {reason}")]
    Protocol { file: String, pos: u64, reason: String },

    /// A value in a rows event could not be decoded. Names the table and the
    /// column, never the value.
    #[error("cannot decode `{table}`.`{column}`: {reason}")]
    Decode { table: String, column: String, reason: String },

    /// The TABLE_MAP event lacks metadata the decoder needs (column names,
    /// signedness, charsets or ENUM/SET labels: `binlog_row_metadata` is not
    /// FULL) and no information_schema data was supplied or it does not
    /// match the table map.
    #[error("table `{table}` needs information_schema metadata: {reason}")]
    MissingMetadata { table: String, reason: String },

    /// A query on the server failed (information_schema lookup, position
    /// discovery).
    #[error("query failed ({context}): {source}")]
    Query {
        context: String,
        #[source]
        source: mysql_async::Error,
    },
}

impl MysqlError {
    /// Whether the same operation may succeed if retried (after a backoff,
    /// from the last acknowledged resume point). Configuration, privilege,
    /// lost-position and decoding errors need a human or a new snapshot.
    pub fn is_retryable(&self) -> bool {
        match self {
            MysqlError::Connect { .. } | MysqlError::Connection { .. } => true,
            MysqlError::Query { source, .. } => !matches!(source, mysql_async::Error::Server(_)),
            MysqlError::Config { .. }
            | MysqlError::AccessDenied { .. }
            | MysqlError::ServerConfig { .. }
            | MysqlError::PositionLost { .. }
            | MysqlError::Protocol { .. }
            | MysqlError::Decode { .. }
            | MysqlError::MissingMetadata { .. } => false,
        }
    }

    pub(crate) fn config(key: &str, reason: impl Into<String>) -> Self {
        MysqlError::Config { key: key.to_owned(), reason: reason.into() }
    }

    pub(crate) fn decode(table: &str, column: &str, reason: impl Into<String>) -> Self {
        MysqlError::Decode { table: table.to_owned(), column: column.to_owned(), reason: reason.into() }
    }

    /// Classifies a driver error raised while connecting or streaming.
    pub(crate) fn from_driver(err: mysql_async::Error, connecting: bool) -> Self {
        if let mysql_async::Error::Server(server) = &err {
            match server.code {
                // ER_MASTER_FATAL_ERROR_READING_BINLOG: purged file, unknown GTID, ...
                1236 => return MysqlError::PositionLost { reason: server.message.clone() },
                // ER_DBACCESS_DENIED_ERROR, ER_ACCESS_DENIED_ERROR, ER_SPECIFIC_ACCESS_DENIED_ERROR,
                // ER_TABLEACCESS_DENIED_ERROR
                1044 | 1045 | 1142 | 1227 => return MysqlError::AccessDenied { reason: server.message.clone() },
                _ => {}
            }
        }
        if let mysql_async::Error::Url(url) = &err {
            return MysqlError::config("url", url_error_reason(url));
        }
        // Certificate and handshake failures repeat on every attempt.
        if let mysql_async::Error::Io(mysql_async::IoError::Tls(tls)) = &err {
            return MysqlError::config("tls", tls.to_string());
        }
        let reason = err.to_string();
        if connecting {
            MysqlError::Connect { reason, source: Some(err) }
        } else {
            MysqlError::Connection { reason, source: Some(err) }
        }
    }
}

/// A description of a URL error that never echoes parameter values.
pub(crate) fn url_error_reason(err: &mysql_async::UrlError) -> String {
    match err {
        mysql_async::UrlError::InvalidParamValue { param, .. } => format!("invalid value for URL parameter `{param}`"),
        mysql_async::UrlError::Parse(_) | mysql_async::UrlError::Invalid => {
            "not a valid mysql://user:password@host:port URL".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification() {
        assert!(MysqlError::Connect { reason: "x".into(), source: None }.is_retryable());
        assert!(MysqlError::Connection { reason: "x".into(), source: None }.is_retryable());
        assert!(!MysqlError::PositionLost { reason: "purged".into() }.is_retryable());
        assert!(!MysqlError::config("url", "bad").is_retryable());
        assert!(!MysqlError::decode("db.t", "c", "bad").is_retryable());
        let purged = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1236,
            message: "Could not find first log file name in binary log index file".into(),
            state: "HY000".into(),
        });
        assert!(matches!(MysqlError::from_driver(purged, false), MysqlError::PositionLost { .. }));
        let denied = mysql_async::Error::Server(mysql_async::ServerError {
            code: 1045,
            message: "Access denied for user 'x'@'localhost'".into(),
            state: "28000".into(),
        });
        assert!(matches!(MysqlError::from_driver(denied, true), MysqlError::AccessDenied { .. }));
    }

    #[test]
    fn url_errors_do_not_echo_values() {
        let e = mysql_async::UrlError::InvalidParamValue { param: "password".into(), value: "hunter2".into() };
        assert!(!url_error_reason(&e).contains("hunter2"));
    }
}
