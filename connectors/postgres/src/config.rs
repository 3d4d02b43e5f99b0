//! Configuration of a PostgreSQL logical-replication source.
//!
//! ```toml
//! name = "audit-eu"
//! url = "postgres://lablake:secret@db.internal:5432/lims"
//! slot = "lablake_audit_eu"
//! publication = "lablake"
//! tenant = { kind = "schema", pattern = "lab_{tenant}" }
//! include = ["lab_*.*"]
//! heartbeat_interval = "10s"
//! tls = { mode = "verify-full", ca_file = "/etc/ssl/db-ca.pem" }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use lablake_model::tenant::{TableFilter, TenantRule};
use secrecy::SecretString;
use serde::Deserialize;

use crate::PgError;
use crate::decoder::DecoderConfig;

/// One PostgreSQL database read through a logical replication slot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSourceConfig {
    /// Logical source name: copied into every change event; checkpoints are
    /// keyed by it.
    pub name: String,
    /// `postgres://user:password@host:port/database`. Secret: never logged.
    pub url: SecretString,
    /// Replication slot (created with `pgoutput` when missing on first start).
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication streamed from.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the publication `FOR ALL TABLES` when it does not exist (needs
    /// superuser); otherwise it must exist. Tables are selected by
    /// `include`/`exclude` in either case.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    /// How the tenant of each change is resolved.
    pub tenant: TenantConfig,
    /// Globs over `schema.table` to capture; empty captures everything.
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs over `schema.table` never captured.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// How often a heartbeat (`pg_logical_emit_message`) is written, so the
    /// slot advances while the captured tables are idle.
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often the flushed position is reported to the server.
    #[serde(default = "default_status", with = "humantime_serde")]
    pub status_interval: Duration,
    /// Folder for spill files of large streamed transactions.
    #[serde(default = "default_spill_dir")]
    pub spill_dir: PathBuf,
    /// Bytes of in-progress streamed transactions kept in memory before
    /// spilling to `spill_dir`.
    #[serde(default = "default_spill_memory")]
    pub spill_memory_bytes: usize,
    /// Transport encryption of both connections (authentication follows the
    /// server: SCRAM-SHA-256, MD5 or trust).
    #[serde(default)]
    pub tls: crate::tls::TlsConfig,
}

/// How the tenant of a change is found (the same rules as the MySQL source).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TenantConfig {
    /// One schema per tenant: `lab_{tenant}` puts schema `lab_acme` in tenant `acme`.
    Schema { pattern: String },
    /// Shared tables: the tenant is the value of `column` in each row.
    Column { column: String },
}

fn default_slot() -> String {
    "lablake".into()
}
fn default_publication() -> String {
    "lablake".into()
}
fn default_true() -> bool {
    true
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}
fn default_status() -> Duration {
    Duration::from_secs(1)
}
fn default_spill_dir() -> PathBuf {
    std::env::temp_dir().join("lablake-spill")
}
fn default_spill_memory() -> usize {
    64 << 20
}

impl PgSourceConfig {
    /// Validates the configuration and builds the decoder's part of it.
    pub fn decoder_config(&self) -> Result<DecoderConfig, PgError> {
        let config = |key: &str, reason: &str| PgError::Config { key: key.into(), reason: reason.into() };
        if self.name.trim().is_empty() {
            return Err(config("name", "must not be empty"));
        }
        let ident =
            |s: &str| !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ident(&self.slot) || self.slot.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(config("slot", "must be 1-63 lower-case letters, digits or `_`"));
        }
        if !ident(&self.publication) {
            return Err(config("publication", "must be 1-63 letters, digits or `_`"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(config("heartbeat_interval", "must be positive"));
        }
        if self.status_interval.is_zero() {
            return Err(config("status_interval", "must be positive"));
        }
        if self.spill_memory_bytes < 1 << 16 {
            return Err(config("spill_memory_bytes", "must be at least 65536"));
        }
        if let Some(ca) = &self.tls.ca_file
            && !ca.is_file()
        {
            return Err(PgError::Config {
                key: "tls.ca_file".into(),
                reason: format!("{} is not a file", ca.display()),
            });
        }
        if self.tls.ca_file.is_some() && self.tls.mode == crate::tls::TlsMode::Disable {
            return Err(config("tls.mode", "is `disable` but tls.ca_file is set"));
        }
        let tenant = match &self.tenant {
            TenantConfig::Schema { pattern } => TenantRule::schema_pattern(pattern)
                .map_err(|e| PgError::Config { key: "tenant.pattern".into(), reason: e.to_string() })?,
            TenantConfig::Column { column } if column.trim().is_empty() => {
                return Err(config("tenant.column", "must not be empty"));
            }
            TenantConfig::Column { column } => TenantRule::Column { column: column.clone() },
        };
        let filter = TableFilter::new(&self.include, &self.exclude)
            .map_err(|e| PgError::Config { key: "include/exclude".into(), reason: e.to_string() })?;
        Ok(DecoderConfig {
            source_name: self.name.clone(),
            tenant,
            filter,
            heartbeat_prefix: HEARTBEAT_PREFIX.into(),
            spill_dir: self.spill_dir.clone(),
            spill_memory_bytes: self.spill_memory_bytes,
        })
    }
}

/// Prefix of the heartbeat logical messages.
pub const HEARTBEAT_PREFIX: &str = "lablake.heartbeat";
