//! Configuration: a TOML file plus `LABLAKE__…` environment overrides
//! (`LABLAKE__KAFKA__BROKERS=host:9092` sets `kafka.brokers`). Every struct
//! denies unknown fields, so a misspelt key fails at start naming the key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use lablake_bus::BusConfig;
use lablake_checkpoint::DynamoConfig;
use lablake_curate::BatchPolicy;
use lablake_lake::LakeConfig;
use lablake_mysql::MysqlSourceConfig;
use lablake_postgres::PgSourceConfig;
use secrecy::ExposeSecret;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka bus.
    pub kafka: BusConfig,
    /// Curated lake (S3-compatible).
    pub lake: LakeConfig,
    /// DynamoDB checkpoints.
    pub checkpoint: DynamoConfig,
    /// Curation consumers.
    #[serde(default)]
    pub curate: CurateConfig,
    /// MySQL/MariaDB sources (`[[sources]]`, each with a unique `name`).
    #[serde(default)]
    pub sources: Vec<MysqlSourceConfig>,
    /// PostgreSQL sources (`[[postgres_sources]]`); names are unique across
    /// both lists (checkpoints are keyed by them).
    #[serde(default)]
    pub postgres_sources: Vec<PgSourceConfig>,
    /// Snapshots (full loads).
    #[serde(default)]
    pub snapshot: crate::snapshot::SnapshotConfig,
    /// The Snowflake sink (`[snowflake]`; none: no warehouse stage).
    #[serde(default)]
    pub snowflake: Option<crate::sink::SinkConfig>,
    /// User-defined tables and their own lane.
    #[serde(default)]
    pub user_tables: UserTablesConfig,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// Curation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurateConfig {
    /// Consumer group name; checkpoints and leases are kept per group.
    #[serde(default = "default_group")]
    pub group: String,
    /// When batches close.
    #[serde(default)]
    pub batch: BatchPolicy,
    /// How often new topics (tenants, tables) are discovered, e.g. `"5s"`.
    #[serde(default = "default_discovery", with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Only these tenants (empty: all).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Byte budget of all open batches together (approximate in-memory size).
    /// Above it the largest open batch is closed early, so memory does not grow
    /// with the number of partitions.
    #[serde(default = "default_open_bytes")]
    pub max_open_bytes: usize,
}

fn default_open_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_group() -> String {
    "curate".into()
}
fn default_discovery() -> Duration {
    Duration::from_secs(5)
}

impl Default for CurateConfig {
    fn default() -> Self {
        CurateConfig {
            group: default_group(),
            batch: BatchPolicy::default(),
            discovery_interval: default_discovery(),
            tenants: Vec::new(),
            max_open_bytes: default_open_bytes(),
        }
    }
}

/// `[user_tables]`: which tables are user-defined (customer-created, found
/// at run time) and the budget of their lane. Their snapshots run in their
/// own worker per source (own chunk size and rate cap, never queued behind
/// core tables or in front of them) and their topics are curated by their own
/// consumer group `<curate.group>-udt` with its own memory budget.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTablesConfig {
    /// Globs over the table name, e.g. `["udt_*"]`. Empty: no separate lane.
    #[serde(default)]
    pub patterns: Vec<String>,
    /// Rows per snapshot chunk of a user-defined table.
    #[serde(default = "default_udt_chunk_rows")]
    pub chunk_rows: usize,
    /// Cap on snapshot rows read per second per source for user-defined tables (0: none).
    #[serde(default)]
    pub max_rows_per_second: u64,
    /// Byte budget of the user-defined lane's open batches.
    #[serde(default = "default_udt_open_bytes")]
    pub max_open_bytes: usize,
}

fn default_udt_chunk_rows() -> usize {
    5_000
}
fn default_udt_open_bytes() -> usize {
    32 * 1024 * 1024
}

impl Default for UserTablesConfig {
    fn default() -> Self {
        UserTablesConfig {
            patterns: Vec::new(),
            chunk_rows: default_udt_chunk_rows(),
            max_rows_per_second: 0,
            max_open_bytes: default_udt_open_bytes(),
        }
    }
}

impl UserTablesConfig {
    /// The pure rule (validated by [`Config::validate`]).
    pub fn rule(&self) -> lablake_model::tenant::UserTableRule {
        lablake_model::tenant::UserTableRule::new(&self.patterns).unwrap_or_default()
    }

    /// The snapshot settings of the user-defined lane.
    pub fn snapshot(&self, core: &crate::snapshot::SnapshotConfig) -> crate::snapshot::SnapshotConfig {
        crate::snapshot::SnapshotConfig {
            chunk_rows: self.chunk_rows,
            max_rows_per_second: self.max_rows_per_second,
            ..core.clone()
        }
    }

    /// The curation settings of the user-defined lane.
    pub fn curate(&self, core: &CurateConfig) -> CurateConfig {
        CurateConfig { group: format!("{}-udt", core.group), max_open_bytes: self.max_open_bytes, ..core.clone() }
    }
}

/// Metrics endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `/metrics` HTTP endpoint; none disables it.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

#[allow(clippy::derivable_impls)]
impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: None }
    }
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default = "default_format")]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info,lablake=debug`.
    #[serde(default = "default_level")]
    pub level: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

fn default_format() -> LogFormat {
    LogFormat::Text
}
fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: default_format(), level: default_level() }
    }
}

/// A configuration error; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl Config {
    /// Loads `path` (if given) and applies `LABLAKE__` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Parse(format!("file `{}` does not exist", p.display())));
            }
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(Env::prefixed("LABLAKE__").split("__"));
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Parse(figment_message(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks beyond types: URLs, names, credentials.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid { key: key.into(), reason: reason.into() };
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must not be empty"));
        }
        for b in self.kafka.brokers.split(',') {
            let (host, port) =
                b.trim().rsplit_once(':').ok_or_else(|| invalid("kafka.brokers", "expected host:port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid("kafka.brokers", "expected host:port"));
            }
        }
        if self.kafka.partitions < 1 {
            return Err(invalid("kafka.partitions", "must be at least 1"));
        }
        lablake_lake::Lake::new(self.lake.clone()).map_err(|e| match e {
            lablake_lake::LakeError::Config { key, reason } => {
                ConfigError::Invalid { key: format!("lake.{key}"), reason }
            }
            other => ConfigError::Invalid { key: "lake".into(), reason: other.to_string() },
        })?;
        if let Some(e) = &self.checkpoint.endpoint {
            url::Url::parse(e).map_err(|err| invalid("checkpoint.endpoint", &format!("not a URL: {err}")))?;
        }
        if self.curate.max_open_bytes < self.curate.batch.max_bytes.min(1024 * 1024) {
            return Err(invalid("curate.max_open_bytes", "must be at least 1 MiB (or curate.batch.max_bytes)"));
        }
        if self.snapshot.chunk_rows == 0 || self.snapshot.chunk_rows > 1_000_000 {
            return Err(invalid("snapshot.chunk_rows", "must be between 1 and 1000000"));
        }
        if let Some(sf) = &self.snowflake {
            sf.connection.validate().map_err(|e| match e {
                lablake_snowflake::SnowflakeError::Config { key, reason } => {
                    ConfigError::Invalid { key: format!("snowflake.connection.{key}"), reason }
                }
                other => ConfigError::Invalid { key: "snowflake.connection".into(), reason: other.to_string() },
            })?;
        }
        if self.snapshot.parallel_chunks == 0 || self.snapshot.parallel_chunks > 16 {
            return Err(invalid("snapshot.parallel_chunks", "must be between 1 and 16"));
        }
        if let Err(e) = lablake_model::tenant::UserTableRule::new(&self.user_tables.patterns) {
            return Err(invalid("user_tables.patterns", &e.to_string()));
        }
        if self.user_tables.chunk_rows == 0 || self.user_tables.chunk_rows > 1_000_000 {
            return Err(invalid("user_tables.chunk_rows", "must be between 1 and 1000000"));
        }
        if self.user_tables.max_open_bytes < 1024 * 1024 {
            return Err(invalid("user_tables.max_open_bytes", "must be at least 1 MiB"));
        }
        if self.curate.batch.max_rows == 0 {
            return Err(invalid("curate.batch.max_rows", "must be at least 1"));
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = format!("sources[{i}] (name `{}`)", s.name);
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::Invalid { key, reason: "duplicate source name".into() });
            }
            s.decoder_config().map_err(|e| ConfigError::Invalid { key: key.clone(), reason: e.to_string() })?;
            let url = url::Url::parse(s.url.expose_secret())
                .map_err(|e| ConfigError::Invalid { key: format!("{key}.url"), reason: format!("not a URL: {e}") })?;
            if url.scheme() != "mysql" {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.url"),
                    reason: "scheme must be mysql://".into(),
                });
            }
            if url.username().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.url"),
                    reason: "missing credentials: the URL has no user".into(),
                });
            }
        }
        for (i, s) in self.postgres_sources.iter().enumerate() {
            let key = format!("postgres_sources[{i}] (name `{}`)", s.name);
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::Invalid { key, reason: "duplicate source name".into() });
            }
            s.decoder_config().map_err(|e| ConfigError::Invalid { key: key.clone(), reason: e.to_string() })?;
            let url = url::Url::parse(s.url.expose_secret())
                .map_err(|e| ConfigError::Invalid { key: format!("{key}.url"), reason: format!("not a URL: {e}") })?;
            if !matches!(url.scheme(), "postgres" | "postgresql") {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.url"),
                    reason: "scheme must be postgres:// or postgresql://".into(),
                });
            }
            if url.username().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.url"),
                    reason: "missing credentials: the URL has no user".into(),
                });
            }
        }
        Ok(())
    }
}

fn figment_message(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = if err.path.is_empty() { String::new() } else { format!("key `{}`: ", err.path.join(".")) };
        out.push(format!("{key}{}", err.kind));
    }
    out.join("; ")
}
