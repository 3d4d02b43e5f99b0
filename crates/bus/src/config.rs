use std::collections::BTreeMap;

use serde::Deserialize;

/// Kafka settings shared by producers and consumers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Prefix of every topic name (`<prefix>.<tenant>.<db>.<table>`).
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// Partitions of a newly created topic.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of a newly created topic.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// Records sent but not yet acknowledged by Kafka, at most. The source
    /// blocks when this many are in flight.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Producer compression (`zstd`, `lz4`, `none`, ...).
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Producer linger in milliseconds.
    #[serde(default = "default_linger")]
    pub linger_ms: u32,
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.mechanism`,
    /// or `queued.max.messages.kbytes` to tune the consumer's prefetch). They
    /// override Lablake's tuning defaults, but never the settings its
    /// guarantees rest on (producer idempotence and `acks=all`, consumer
    /// auto-commit and offset store off), which are applied last.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_prefix() -> String {
    "lablake".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_in_flight() -> usize {
    50_000
}
fn default_compression() -> String {
    "zstd".into()
}
fn default_linger() -> u32 {
    5
}

impl BusConfig {
    /// A configuration with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        BusConfig {
            brokers: brokers.into(),
            topic_prefix: default_prefix(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            max_in_flight: default_in_flight(),
            compression: default_compression(),
            linger_ms: default_linger(),
            properties: BTreeMap::new(),
        }
    }

    /// A client configuration: `tuning` defaults, then the user's
    /// `properties`, then `fixed` settings no property may change.
    pub(crate) fn client_config(&self, tuning: &[(&str, String)], fixed: &[(&str, String)]) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in tuning {
            c.set(*k, v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        for (k, v) in fixed {
            c.set(*k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_override_tuning_but_never_fixed_settings() {
        let mut cfg = BusConfig::new("b:9092");
        cfg.properties.insert("queued.max.messages.kbytes".into(), "1024".into());
        cfg.properties.insert("enable.auto.commit".into(), "true".into());
        let c = cfg.client_config(
            &[("queued.max.messages.kbytes", "4096".to_owned())],
            &[("enable.auto.commit", "false".to_owned())],
        );
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("1024"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    }
}
