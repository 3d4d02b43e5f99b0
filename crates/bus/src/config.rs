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
    /// The largest record the producer sends, in bytes: key + value + 36
    /// bytes of record framing (librdkafka's own measure). Passed to
    /// librdkafka as `message.max.bytes`, so the producer's check and
    /// librdkafka's agree. A change that does not fit is not sent to its
    /// topic: a small dead-letter record describing it goes to the tenant's
    /// dead-letter topic instead (see the crate docs). The default,
    /// 1,000,000, is librdkafka's default and below Kafka's broker and topic
    /// default (`message.max.bytes` / `max.message.bytes` = 1,048,588); it
    /// must not exceed the broker's or the topics' limit. At least 64 KiB,
    /// at most 64 MiB (the producer queue).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// `retention.ms` of the topics Lablake creates: `-1` (the default)
    /// keeps the full history, which replay rebuilds curated data from (Kafka
    /// is the system of record). A finite value (ms) deletes older records;
    /// existing topics with a retention that loses history are named in a
    /// warning at start.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: i64,
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
fn default_retention_ms() -> i64 {
    -1
}
fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

/// Default of [`BusConfig::max_message_bytes`]: librdkafka's default
/// `message.max.bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Smallest accepted [`BusConfig::max_message_bytes`] (64 KiB): below it,
/// ordinary rows of wide tables would be dead-lettered.
pub const MIN_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest accepted [`BusConfig::max_message_bytes`] (64 MiB): the producer
/// queue (`queue.buffering.max.kbytes`) must hold at least one record.
pub const MAX_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

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
            max_message_bytes: default_max_message_bytes(),
            retention_ms: default_retention_ms(),
            properties: BTreeMap::new(),
        }
    }

    /// Checks what the types cannot: the error names the key (e.g.
    /// `kafka.max_message_bytes`) and why. Configuration loading should call
    /// it; [`ChangeProducer::new`](crate::ChangeProducer::new) does too.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.retention_ms != -1 && self.retention_ms < 60_000 {
            return Err((
                "kafka.retention_ms".into(),
                format!("{} is neither -1 (keep the full history) nor at least 60000 ms", self.retention_ms),
            ));
        }
        let n = self.max_message_bytes;
        if !(MIN_MAX_MESSAGE_BYTES..=MAX_MAX_MESSAGE_BYTES).contains(&n) {
            return Err((
                "kafka.max_message_bytes".into(),
                format!(
                    "{n} is out of range: must be at least {MIN_MAX_MESSAGE_BYTES} (64 KiB) and at most \
                     {MAX_MAX_MESSAGE_BYTES} (64 MiB), and not above the broker's limit"
                ),
            ));
        }
        if self.properties.contains_key("message.max.bytes") {
            return Err((
                "kafka.properties".into(),
                "`message.max.bytes` is set by `kafka.max_message_bytes`; set that instead".into(),
            ));
        }
        Ok(())
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

    #[test]
    fn max_message_bytes_defaults_to_librdkafkas_and_is_bounded() {
        let cfg = BusConfig::new("b:9092");
        assert_eq!(cfg.max_message_bytes, 1_000_000);
        assert!(cfg.validate().is_ok());
        for bad in [MIN_MAX_MESSAGE_BYTES - 1, MAX_MAX_MESSAGE_BYTES + 1, 0] {
            let cfg = BusConfig { max_message_bytes: bad, ..BusConfig::new("b:9092") };
            let (key, reason) = cfg.validate().err().unwrap_or_default();
            assert_eq!(key, "kafka.max_message_bytes", "{bad}");
            assert!(reason.contains(&bad.to_string()), "{reason}");
        }
        let mut cfg = BusConfig::new("b:9092");
        cfg.properties.insert("message.max.bytes".into(), "5000000".into());
        let (key, reason) = cfg.validate().err().unwrap_or_default();
        assert_eq!(key, "kafka.properties");
        assert!(reason.contains("max_message_bytes"), "{reason}");
    }
}
