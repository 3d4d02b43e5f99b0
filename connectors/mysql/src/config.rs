//! Configuration of a MySQL/MariaDB binlog source.
//!
//! ```toml
//! name = "lims-eu"
//! url = "mysql://lablake:secret@db.internal:3306"
//! server_id = 4242
//! tenant = { kind = "schema", pattern = "lab_{tenant}" }
//! include = ["lab_*.*"]
//! exclude = ["*.tmp_*"]
//! start = "current"                     # or "earliest", { file = "binlog.000042", pos = 4 }, { gtid = "0-1-1234" }
//! tls = { mode = "verify-identity", ca_file = "/etc/ssl/db-ca.pem" }
//! heartbeat_interval = "1s"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use lablake_model::tenant::{TableFilter, TenantRule};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::MysqlError;
use crate::error::url_error_reason;
use crate::stream::DecoderConfig;

/// One MySQL/MariaDB server read as a replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSourceConfig {
    /// Logical source name: copied into every change event (`source.name`);
    /// keep it stable, checkpoints are keyed by it.
    pub name: String,
    /// `mysql://user:password@host:port`. Secret: never logged, never in errors.
    pub url: SecretString,
    /// Replica server id announced to the server. Must differ from the
    /// server's `@@server_id` and from every other replica and reader.
    pub server_id: u32,
    /// How the tenant of each change is resolved.
    pub tenant: TenantConfig,
    /// Globs over `database.table` to capture (`lab_*.*`); empty captures everything.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs over `database.table` never captured, applied after `include`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start when no resume point is given.
    #[serde(default)]
    pub start: StartPosition,
    /// Transport encryption.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Heartbeat period requested from the server (`@master_heartbeat_period`);
    /// idle sources still produce `Heartbeat` items at this rate.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// With no event and no heartbeat for this long the connection is
    /// considered dead (a retryable `Connection` error).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Limit for establishing a connection (TCP, TLS, authentication).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// `database.table` of the signalling table that snapshot watermarks
    /// are written to (created on the first snapshot; the source's user
    /// needs CREATE and INSERT/DELETE there). Its rows are never captured.
    #[serde(default = "default_signal_table")]
    pub signal_table: String,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(1)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How the tenant of a change is found.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TenantConfig {
    /// One database per tenant: `pattern` has one `{tenant}` placeholder
    /// (`lab_{tenant}` puts database `lab_acme` in tenant `acme`). Databases
    /// that do not match are not captured.
    Schema { pattern: String },
    /// Shared tables: the tenant is the value of `column` in each row.
    /// Rows whose value is NULL or not a valid tenant name become
    /// `SourceItem::Unresolved`.
    Column { column: String },
}

/// Where reading starts when no resume point is given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartPosition {
    /// The first binlog file the server still has (`SHOW BINARY LOGS`).
    Earliest,
    /// The server's current position (`SHOW MASTER STATUS` / `SHOW BINARY LOG STATUS`).
    #[default]
    Current,
    /// An explicit file and position (an event boundary).
    File { file: String, pos: u64 },
    /// A GTID position: a MySQL GTID set (`uuid:1-100,uuid2:1-7`, the
    /// transactions already seen) or a MariaDB GTID list (`0-1-100,1-2-7`,
    /// the last transaction seen per domain).
    Gtid { gtid: String },
}

impl<'de> Deserialize<'de> for StartPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FilePos {
            file: String,
            pos: u64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Gtid {
            gtid: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Keyword(String),
            FilePos(FilePos),
            Gtid(Gtid),
        }
        match Raw::deserialize(d)? {
            Raw::Keyword(k) if k == "earliest" => Ok(StartPosition::Earliest),
            Raw::Keyword(k) if k == "current" => Ok(StartPosition::Current),
            Raw::Keyword(k) => Err(serde::de::Error::custom(format!(
                "unknown start `{k}`: expected \"earliest\", \"current\", {{ file, pos }} or {{ gtid }}"
            ))),
            Raw::FilePos(f) => Ok(StartPosition::File { file: f.file, pos: f.pos }),
            Raw::Gtid(g) => Ok(StartPosition::Gtid { gtid: g.gtid }),
        }
    }
}

/// TLS settings (rustls).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `disabled`, `required` (encrypted, certificate not checked),
    /// `verify-ca` (chain checked against `ca_file` or the system roots),
    /// `verify-identity` (chain and host name checked).
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM or DER file with the CA certificate(s) to trust. When set, only
    /// these roots are trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// See [`TlsConfig::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    #[default]
    Disabled,
    Required,
    VerifyCa,
    VerifyIdentity,
}

fn default_signal_table() -> String {
    "lablake.watermarks".to_owned()
}

impl MysqlSourceConfig {
    /// The signalling table as `(database, table)`.
    pub fn signal(&self) -> Result<(String, String), MysqlError> {
        let bad = || MysqlError::config("signal_table", "must be `database.table` (plain identifiers)");
        let (db, table) = self.signal_table.split_once('.').ok_or_else(bad)?;
        let ok = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        };
        if !ok(db) || !ok(table) {
            return Err(bad());
        }
        Ok((db.to_owned(), table.to_owned()))
    }

    /// Checks the configuration and builds the pure decoder's part of it.
    pub fn decoder_config(&self) -> Result<DecoderConfig, MysqlError> {
        if self.name.trim().is_empty() {
            return Err(MysqlError::config("name", "must not be empty"));
        }
        if self.server_id == 0 {
            return Err(MysqlError::config("server_id", "must be a non-zero replica id"));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval > Duration::from_secs(4_294_967) {
            return Err(MysqlError::config("heartbeat_interval", "must be between 1ms and 4294967s"));
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(MysqlError::config("idle_timeout", "must be longer than heartbeat_interval"));
        }
        let tenant = match &self.tenant {
            TenantConfig::Schema { pattern } => {
                TenantRule::schema_pattern(pattern).map_err(|e| MysqlError::config("tenant.pattern", e.to_string()))?
            }
            TenantConfig::Column { column } => {
                if column.trim().is_empty() {
                    return Err(MysqlError::config("tenant.column", "must not be empty"));
                }
                TenantRule::Column { column: column.clone() }
            }
        };
        let filter = TableFilter::new(&self.include, &self.exclude)
            .map_err(|e| MysqlError::config("include/exclude", e.to_string()))?;
        match &self.start {
            StartPosition::File { file, .. } if lablake_model::position::binlog_file_seq(file).is_none() => {
                return Err(MysqlError::config("start.file", "must be a binlog file name such as binlog.000042"));
            }
            StartPosition::Gtid { gtid } if gtid.trim().is_empty() => {
                return Err(MysqlError::config("start.gtid", "must not be empty"));
            }
            _ => {}
        }
        let signal = Some(self.signal()?);
        Ok(DecoderConfig { source_name: self.name.clone(), tenant, filter, signal })
    }

    /// Driver options: URL, TLS, no socket switching, 1 GiB packets (the
    /// largest binlog event).
    pub(crate) fn driver_opts(&self) -> Result<mysql_async::Opts, MysqlError> {
        let opts = mysql_async::Opts::from_url(self.url.expose_secret())
            .map_err(|e| MysqlError::config("url", url_error_reason(&e)))?;
        let tls = match self.tls.mode {
            TlsMode::Disabled => None,
            mode => {
                let mut ssl = mysql_async::SslOpts::default();
                if let Some(ca) = &self.tls.ca_file {
                    if !ca.is_file() {
                        return Err(MysqlError::config(
                            "tls.ca_file",
                            format!("{} is not a readable file", ca.display()),
                        ));
                    }
                    ssl = ssl.with_root_certs(vec![ca.clone().into()]).with_disable_built_in_roots(true);
                }
                match mode {
                    TlsMode::Required => {
                        ssl = ssl.with_danger_accept_invalid_certs(true).with_danger_skip_domain_validation(true);
                    }
                    TlsMode::VerifyCa => ssl = ssl.with_danger_skip_domain_validation(true),
                    TlsMode::VerifyIdentity | TlsMode::Disabled => {}
                }
                Some(ssl)
            }
        };
        Ok(mysql_async::OptsBuilder::from_opts(opts)
            .ssl_opts(tls)
            .prefer_socket(false)
            .max_allowed_packet(Some(1 << 30))
            .into())
    }

    /// `user@host:port` for logs (no password).
    pub(crate) fn redacted_target(&self) -> String {
        match mysql_async::Opts::from_url(self.url.expose_secret()) {
            Ok(o) => format!("{}@{}:{}", o.user().unwrap_or(""), o.ip_or_hostname(), o.tcp_port()),
            Err(_) => "<invalid url>".to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<MysqlSourceConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn parses_all_start_forms_and_tenant_rules() {
        let base = r#""name":"s","url":"mysql://u:p@h:3306","server_id":7,"tenant":{"kind":"schema","pattern":"lab_{tenant}"}"#;
        let c = parse(&format!("{{{base}}}")).unwrap();
        assert_eq!(c.start, StartPosition::Current);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.tls.mode, TlsMode::Disabled);
        for (start, want) in [
            (r#""earliest""#, StartPosition::Earliest),
            (r#""current""#, StartPosition::Current),
            (r#"{"file":"binlog.000003","pos":4}"#, StartPosition::File { file: "binlog.000003".into(), pos: 4 }),
            (r#"{"gtid":"0-1-5"}"#, StartPosition::Gtid { gtid: "0-1-5".into() }),
        ] {
            let c = parse(&format!("{{{base},\"start\":{start}}}")).unwrap();
            assert_eq!(c.start, want);
            c.decoder_config().unwrap();
        }
        assert!(parse(&format!("{{{base},\"start\":\"latest\"}}")).is_err());
        assert!(parse(&format!("{{{base},\"start\":{{\"file\":\"x.1\",\"pos\":4,\"x\":1}}}}")).is_err());
        assert!(parse(&format!("{{{base},\"unknown\":1}}")).is_err());
        let c = parse(
            r#"{"name":"s","url":"mysql://u:p@h:3306","server_id":7,"tenant":{"kind":"column","column":"tenant_id"},
               "tls":{"mode":"verify-ca","ca_file":"/nonexistent.pem"},"heartbeat_interval":"250ms"}"#,
        )
        .unwrap();
        assert_eq!(c.tenant, TenantConfig::Column { column: "tenant_id".into() });
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        match c.driver_opts() {
            Err(MysqlError::Config { key, .. }) => assert_eq!(key, "tls.ca_file"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_names_the_key_and_hides_the_password() {
        let c = parse(r#"{"name":"s","url":"mysql://u:hunter2@h:3306","server_id":7,"tenant":{"kind":"schema","pattern":"nope"}}"#)
            .unwrap();
        match c.decoder_config() {
            Err(MysqlError::Config { key, .. }) => assert_eq!(key, "tenant.pattern"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.redacted_target(), "u@h:3306");
        let c =
            parse(r#"{"name":"s","url":"http://x","server_id":7,"tenant":{"kind":"column","column":"t"}}"#).unwrap();
        match c.driver_opts() {
            Err(MysqlError::Config { key, .. }) => assert_eq!(key, "url"),
            other => panic!("{other:?}"),
        }
        let c = parse(r#"{"name":"s","url":"mysql://u:p@h","server_id":7,"signal_table":"nodot","tenant":{"kind":"column","column":"t"}}"#)
            .unwrap();
        assert!(matches!(c.decoder_config(), Err(MysqlError::Config { key, .. }) if key == "signal_table"));
        let c = parse(r#"{"name":"s","url":"mysql://u:p@h","server_id":0,"tenant":{"kind":"column","column":"t"}}"#)
            .unwrap();
        assert!(matches!(c.decoder_config(), Err(MysqlError::Config { key, .. }) if key == "server_id"));
    }
}
