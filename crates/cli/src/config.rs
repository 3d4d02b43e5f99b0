//! Configuration: a TOML file plus `LABLAKE__…` environment overrides
//! (`LABLAKE__KAFKA__BROKERS=host:9092` sets `kafka.brokers`). Every struct
//! denies unknown fields, so a misspelt key fails at start naming the key.
//! The stages' own sections are defined next to the stages
//! (`lablake_pipeline`); this is the whole file and its checks.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use lablake_bus::BusConfig;
use lablake_checkpoint::DynamoConfig;
use lablake_lake::LakeConfig;
use lablake_pipeline::{CurateConfig, SinkConfig, SnapshotConfig, SourceConfig, UserTablesConfig};
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
    /// Sources (`[[sources]]`, each with `kind = "mysql" | "postgres"` and a
    /// `name` unique across all of them: checkpoints are keyed by it).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Snapshots (full loads).
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    /// The Snowflake sink (`[snowflake]`; none: no warehouse stage).
    #[serde(default)]
    pub snowflake: Option<SinkConfig>,
    /// User-defined tables and their own lane.
    #[serde(default)]
    pub user_tables: UserTablesConfig,
    /// Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Sharing the source and sink leases between instances.
    #[serde(default)]
    pub leases: LeasesConfig,
}

/// `[leases]`: how the source and sink stages of several instances share
/// their leases (curators share partitions with `curate.assignment = "group"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesConfig {
    /// `false` (one instance): a starting stage takes its lease at once,
    /// fencing the previous holder. `true` (several instances): a stage
    /// waits while another instance keeps the lease renewed and takes over
    /// when that instance has been silent for `ttl`; fenced, it waits again.
    #[serde(default)]
    pub standby: bool,
    /// A holder that has not renewed its lease for this long is taken for
    /// dead by a standby (holders renew every 5 s), e.g. `"15s"`.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub ttl: std::time::Duration,
}

fn default_lease_ttl() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}

impl Default for LeasesConfig {
    fn default() -> Self {
        LeasesConfig { standby: false, ttl: default_lease_ttl() }
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

    /// Checks beyond types: URLs, names, bounds, credentials.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: &str| ConfigError::Invalid { key: key.into(), reason: reason.into() };
        let named = |(key, reason): (String, String)| ConfigError::Invalid { key, reason };
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
        self.kafka.validate().map_err(named)?;
        lablake_lake::Lake::new(self.lake.clone()).map_err(|e| match e {
            lablake_lake::LakeError::Config { key, reason } => {
                ConfigError::Invalid { key: format!("lake.{key}"), reason }
            }
            other => ConfigError::Invalid { key: "lake".into(), reason: other.to_string() },
        })?;
        if let Some(e) = &self.checkpoint.endpoint {
            url::Url::parse(e).map_err(|err| invalid("checkpoint.endpoint", &format!("not a URL: {err}")))?;
        }
        self.curate.validate().map_err(named)?;
        if self.leases.ttl < std::time::Duration::from_secs(12) {
            // Three renewals (every 5 s) must fit in, or a busy holder loses its lease.
            return Err(invalid("leases.ttl", "must be at least 12s (holders renew every 5s)"));
        }
        self.snapshot.validate("snapshot").map_err(named)?;
        self.user_tables.validate().map_err(named)?;
        if let Some(sf) = &self.snowflake {
            sf.validate().map_err(named)?;
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = format!("sources[{i}] (name `{}`)", s.name());
            if !names.insert(s.name()) {
                return Err(ConfigError::Invalid { key, reason: "duplicate source name".into() });
            }
            s.validate(&key).map_err(named)?;
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
