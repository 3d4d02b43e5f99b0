use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{BusConfig, BusError};

/// One consumed record, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Reads topics from offsets chosen by the caller (manual assignment; no
/// offsets are committed to Kafka — the caller checkpoints them).
pub struct ChangeConsumer {
    consumer: Arc<StreamConsumer>,
    assigned: BTreeMap<(String, i32), i64>,
    topic_names: BTreeMap<String, Arc<str>>,
}

impl ChangeConsumer {
    /// `group` names the consumer (used for broker-side bookkeeping only).
    pub fn new(config: &BusConfig, group: &str) -> Result<Self, BusError> {
        // Prefetch is bounded in compressed kilobytes and in messages; records
        // are held decompressed (zstd, ~5-10x), so the byte bound is small:
        // 16 MiB compressed measured ~170 MiB of heap at peak.
        let tuning = [
            ("fetch.wait.max.ms", "100".to_owned()),
            ("queued.max.messages.kbytes", "4096".to_owned()),
            ("queued.min.messages", "20000".to_owned()),
            ("fetch.max.bytes", "4194304".to_owned()),
            ("max.partition.fetch.bytes", "1048576".to_owned()),
        ];
        let fixed = [
            ("group.id", group.to_owned()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            ("auto.offset.reset", "earliest".to_owned()),
        ];
        let consumer: StreamConsumer =
            config.client_config(&tuning, &fixed).create().map_err(|e| BusError::Config(e.to_string()))?;
        Ok(ChangeConsumer { consumer: Arc::new(consumer), assigned: BTreeMap::new(), topic_names: BTreeMap::new() })
    }

    /// Topics (with their partition counts) whose name starts with `prefix`.
    pub async fn topics(&self, prefix: &str) -> Result<Vec<(String, i32)>, BusError> {
        let c = self.consumer.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let md = c.fetch_metadata(None, Duration::from_secs(10))?;
            Ok(md
                .topics()
                .iter()
                .filter(|t| t.name().starts_with(&prefix) && t.error().is_none())
                .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                .collect())
        })
        .await
        .map_err(|_| BusError::Closed)?
    }

    /// The log start and end of a partition (`(low, high)`: the first offset
    /// still held and the offset the next record gets), asked of the broker.
    pub async fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), BusError> {
        let c = self.consumer.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || Ok(c.fetch_watermarks(&topic, partition, Duration::from_secs(10))?))
            .await
            .map_err(|_| BusError::Closed)?
    }

    /// Adds `(topic, partition)` to the assignment, reading from `offset`.
    /// Other assigned partitions are not touched (incremental assignment:
    /// re-assigning everything would drop their prefetched records and, with
    /// some brokers, skip them).
    pub fn assign(&mut self, topic: &str, partition: i32, offset: i64) -> Result<(), BusError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        self.consumer.incremental_assign(&tpl)?;
        self.assigned.insert((topic.to_owned(), partition), offset);
        Ok(())
    }

    /// Removes a partition from the assignment.
    pub fn unassign(&mut self, topic: &str, partition: i32) -> Result<(), BusError> {
        if self.assigned.remove(&(topic.to_owned(), partition)).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            self.consumer.incremental_unassign(&tpl)?;
        }
        Ok(())
    }

    /// The next record.
    pub async fn recv(&mut self) -> Result<Record, BusError> {
        let m = self.consumer.recv().await?;
        let topic = match self.topic_names.get(m.topic()) {
            Some(t) => t.clone(),
            None => {
                let t: Arc<str> = m.topic().into();
                self.topic_names.insert(m.topic().to_owned(), t.clone());
                t
            }
        };
        let headers = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
            .unwrap_or_default();
        let rec = Record {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        };
        Ok(rec)
    }
}
