use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lablake_model::{ChangeEvent, envelope, topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::{BusConfig, BusError};

/// Header names of dead-letter records.
pub mod header {
    /// Why the record could not be processed.
    pub const ERROR: &str = "lablake.error";
    /// Topic, partition and offset the record came from.
    pub const ORIGIN_TOPIC: &str = "lablake.origin.topic";
    pub const ORIGIN_PARTITION: &str = "lablake.origin.partition";
    pub const ORIGIN_OFFSET: &str = "lablake.origin.offset";
    /// The stage that dead-lettered it (`source`, `curate`).
    pub const STAGE: &str = "lablake.stage";
    /// What the value of a source dead letter is: `envelope` (a change
    /// envelope, tenant `_unresolved`), `raw` (the source's undecodable
    /// bytes as a JSON object, its `format` naming the layout) or
    /// `description` (where and what, without the row).
    pub const PAYLOAD: &str = "lablake.payload";
}

/// What a source keeps of a row that cannot become a tenant's change, for
/// [`ChangeProducer::send_unresolved`].
#[derive(Debug, Clone, Copy)]
pub enum UnresolvedPayload<'a> {
    /// Decoded, no tenant: the whole change.
    Change(&'a ChangeEvent),
    /// Undecodable: the source's bytes as a JSON object.
    Raw(&'a str),
    /// Nothing row-shaped.
    Nothing,
}

/// Bytes librdkafka adds to a record's key and value when it checks the
/// record against `message.max.bytes` (`RD_KAFKAP_MESSAGE_V2_MAX_OVERHEAD`:
/// the record's length, attributes, timestamp and offset deltas, key and
/// value lengths and header count, each at its largest varint size).
pub const RECORD_OVERHEAD: usize = 36;

/// Header room kept free when a dead letter for an oversized change decides
/// whether the change's key still fits beside its payload.
const DEAD_LETTER_HEADER_ROOM: usize = 4096;

/// Columns named, largest first, in an oversized change's dead letter.
const LARGEST_COLUMNS: usize = 5;

/// A change too large for Kafka (`kafka.max_message_bytes`): it was not
/// sent to its topic, a dead letter describing it was sent instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    /// The record's size as librdkafka measures it: key + value +
    /// [`RECORD_OVERHEAD`].
    pub bytes: usize,
    pub key_bytes: usize,
    pub value_bytes: usize,
    /// `kafka.max_message_bytes`.
    pub limit: usize,
    /// librdkafka refused the record (`MessageSizeTooLarge`) although
    /// [`Oversized::check`] let it pass.
    pub refused_by_client: bool,
}

impl Oversized {
    /// The size decision: `Some` when a record (no headers) of `key_bytes`
    /// and `value_bytes` exceeds `limit`, measured as librdkafka does, so a
    /// record it lets pass is one librdkafka accepts at the same
    /// `message.max.bytes`.
    pub fn check(key_bytes: usize, value_bytes: usize, limit: usize) -> Option<Oversized> {
        let bytes = key_bytes.saturating_add(value_bytes).saturating_add(RECORD_OVERHEAD);
        (bytes > limit).then_some(Oversized { bytes, key_bytes, value_bytes, limit, refused_by_client: false })
    }

    /// The dead letter's `lablake.error`: sizes only, never values.
    pub fn reason(&self) -> String {
        if self.refused_by_client {
            format!(
                "record of {} bytes refused by the Kafka client as too large (kafka.max_message_bytes {})",
                self.bytes, self.limit
            )
        } else {
            format!("record of {} bytes exceeds kafka.max_message_bytes ({})", self.bytes, self.limit)
        }
    }
}

/// What [`ChangeProducer::send`] enqueued for a change. Either way the
/// delivery goes into the acknowledgement queue like any other: the
/// position after the change is saved only once Kafka acknowledged it.
#[must_use = "the delivery must go into the acknowledgement queue"]
pub struct Sent {
    /// The change's table topic, or its tenant's dead-letter topic when
    /// `oversized` is set.
    pub topic: Arc<str>,
    pub delivery: DeliveryFuture,
    /// Set when the change did not fit in a Kafka record: what was enqueued
    /// is a dead letter describing it (see `docs/envelope.md`, "Dead-letter
    /// records"), not the change.
    pub oversized: Option<Oversized>,
}

/// What in a topic's configuration (`name`, `value` pairs as the broker
/// describes them) deletes history a replay needs: a finite `retention.ms`
/// or `retention.bytes`, or compaction.
pub fn retention_problem(entries: &[(&str, Option<&str>)]) -> Option<String> {
    let get = |name: &str| entries.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v);
    let mut problems = Vec::new();
    if let Some(ms) = get("retention.ms").and_then(|v| v.parse::<i64>().ok()).filter(|ms| *ms >= 0) {
        problems.push(format!("retention.ms = {ms} deletes records older than {:.1} days", ms as f64 / 86_400_000.0));
    }
    if let Some(bytes) = get("retention.bytes").and_then(|v| v.parse::<i64>().ok()).filter(|b| *b >= 0) {
        problems.push(format!("retention.bytes = {bytes} deletes the oldest records past that size per partition"));
    }
    if get("cleanup.policy").is_some_and(|p| p.contains("compact")) {
        problems.push("cleanup.policy includes compact: only the last change per key would be kept".to_owned());
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// A record for the dead-letter topic of a tenant.
pub struct DeadLetter<'a> {
    pub tenant: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub reason: &'a str,
    pub stage: &'a str,
    /// Where it came from, when it came from Kafka.
    pub origin: Option<(&'a str, i32, i64)>,
}

/// Writes change events to their tenant topics. See the crate docs for the
/// delivery contract.
pub struct ChangeProducer {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    config: BusConfig,
    known: HashSet<String>,
    /// Partition counts of topics truncates were sent to.
    partition_counts: std::collections::HashMap<Arc<str>, i32>,
    topic_names: std::collections::HashMap<lablake_model::TableId, Arc<str>>,
    key: Vec<u8>,
    value: Vec<u8>,
}

impl ChangeProducer {
    /// A producer for `config` (checked with [`BusConfig::validate`] first).
    pub fn new(config: &BusConfig) -> Result<Self, BusError> {
        let producer: FutureProducer =
            producer_config(config)?.create().map_err(|e| BusError::Config(e.to_string()))?;
        let admin: AdminClient<DefaultClientContext> =
            config.client_config(&[], &[]).create().map_err(|e| BusError::Config(e.to_string()))?;
        Ok(ChangeProducer {
            producer,
            admin,
            config: config.clone(),
            known: HashSet::new(),
            partition_counts: Default::default(),
            topic_names: Default::default(),
            key: Vec::with_capacity(256),
            value: Vec::with_capacity(4096),
        })
    }

    /// Creates `topic` unless it is known to exist.
    pub async fn ensure_topic(&mut self, topic: &str) -> Result<(), BusError> {
        if self.known.contains(topic) {
            return Ok(());
        }
        let retention = self.config.retention_ms.to_string();
        // The full history by default (replay rebuilds from it); never compacted
        // (offsets stay contiguous and every change stays, not only the last per key).
        // `cleanup.policy` is left to the broker's default (`delete` on Kafka, MSK and
        // Redpanda; a topic a compacting default made is named by `retention_problems`
        // at the next start, not when it is created):
        // tansu 0.6's SQLite engine, our local broker, reads an explicit `delete` with
        // `retention.ms = -1` as "older than -1 ms" and deletes every record at each
        // start and every 10 minutes (docs/reliability.md).
        let new = NewTopic::new(topic, self.config.partitions, TopicReplication::Fixed(self.config.replication_factor))
            .set("retention.ms", &retention)
            .set("retention.bytes", "-1");
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.admin.create_topics([&new], &opts).await?;
        for r in results {
            match r {
                Ok(_) => tracing::info!(topic, partitions = self.config.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(BusError::TopicCreate { topic: t, reason: code.to_string() }),
            }
        }
        self.known.insert(topic.to_owned());
        Ok(())
    }

    /// Existing topics of this deployment (`<prefix>.…` and `<prefix>-dlq.…`)
    /// whose settings delete history the replay of curated data needs, each
    /// with what is wrong (see [`retention_problem`]). A broker that cannot
    /// describe topic configurations answers nothing to check.
    pub async fn retention_problems(&self) -> Result<Vec<(String, String)>, BusError> {
        let client = self.producer.clone();
        let metadata =
            tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, Duration::from_secs(10)))
                .await
                .map_err(|e| BusError::Config(format!("listing topics: {e}")))??;
        let prefix = &self.config.topic_prefix;
        let ours: Vec<String> = metadata
            .topics()
            .iter()
            .map(|t| t.name().to_owned())
            .filter(|n| n.starts_with(&format!("{prefix}.")) || n.starts_with(&format!("{prefix}-dlq.")))
            .collect();
        let mut out = Vec::new();
        for chunk in ours.chunks(100) {
            let specs: Vec<ResourceSpecifier<'_>> = chunk.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
            let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
            for (topic, described) in chunk.iter().zip(self.admin.describe_configs(&specs, &opts).await?) {
                let Ok(resource) = described else { continue };
                let entries: Vec<(&str, Option<&str>)> =
                    resource.entries.iter().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
                if let Some(problem) = retention_problem(&entries) {
                    out.push((topic.clone(), problem));
                }
            }
        }
        Ok(out)
    }

    /// The topic of a change's table (cached).
    pub fn topic_of(&mut self, event: &ChangeEvent) -> Arc<str> {
        if let Some(t) = self.topic_names.get(&event.table) {
            return t.clone();
        }
        let t: Arc<str> = topic::change_topic(&self.config.topic_prefix, &event.table).into();
        self.topic_names.insert(event.table.clone(), t.clone());
        t
    }

    /// Encodes and enqueues a change. Waits (does not fail) while the local
    /// queue is full. A truncate goes through [`Self::send_truncate`]
    /// instead.
    ///
    /// A change whose record exceeds `kafka.max_message_bytes`
    /// ([`Oversized::check`]), or that librdkafka refuses as too large, is
    /// not sent to its topic: a small dead letter describing it goes to the
    /// tenant's dead-letter topic instead and [`Sent::oversized`] says so.
    pub async fn send(&mut self, event: &ChangeEvent) -> Result<Sent, BusError> {
        if event.op == lablake_model::Op::Truncate {
            return Err(BusError::Config("a truncate must be sent with send_truncate".into()));
        }
        let topic = self.topic_of(event);
        self.key.clear();
        envelope::encode_key(event, &mut self.key);
        self.value.clear();
        envelope::encode(event, &mut self.value);
        if let Some(oversized) = Oversized::check(self.key.len(), self.value.len(), self.config.max_message_bytes) {
            return self.send_oversized(event, &topic, oversized).await;
        }
        self.ensure_topic(&topic).await?;
        match enqueue(&self.producer, FutureRecord::to(&topic).key(&self.key).payload(&self.value)).await {
            Ok(delivery) => Ok(Sent { topic, delivery, oversized: None }),
            Err(BusError::Delivery {
                source: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                ..
            }) => {
                let bytes = self.key.len() + self.value.len() + RECORD_OVERHEAD;
                let oversized = Oversized {
                    bytes,
                    key_bytes: self.key.len(),
                    value_bytes: self.value.len(),
                    limit: self.config.max_message_bytes,
                    refused_by_client: true,
                };
                self.send_oversized(event, &topic, oversized).await
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the dead letter of an oversized change (its key as the record
    /// key when it fits, [`oversized_payload`] as the value).
    async fn send_oversized(
        &mut self,
        event: &ChangeEvent,
        topic: &str,
        oversized: Oversized,
    ) -> Result<Sent, BusError> {
        let key = std::mem::take(&mut self.key);
        let limit = self.config.max_message_bytes;
        let mut payload = oversized_payload(event, topic, &oversized, true);
        let with_key = key.len() + payload.len() + DEAD_LETTER_HEADER_ROOM + RECORD_OVERHEAD <= limit;
        if !with_key {
            payload = oversized_payload(event, topic, &oversized, false);
        }
        let reason = oversized.reason();
        let sent = self
            .send_dead_letter(DeadLetter {
                tenant: &event.table.tenant,
                key: with_key.then_some(key.as_slice()),
                payload: Some(&payload),
                reason: &reason,
                stage: "source",
                origin: None,
            })
            .await;
        self.key = key;
        let (topic, delivery) = sent?;
        Ok(Sent { topic, delivery, oversized: Some(oversized) })
    }

    /// Sends a truncate (`op = t`, no key) to *every* partition of its
    /// table's topic, so that each partition's stream says where the table
    /// was emptied relative to its own changes. Returns one delivery future
    /// per partition.
    pub async fn send_truncate(&mut self, event: &ChangeEvent) -> Result<Vec<(Arc<str>, DeliveryFuture)>, BusError> {
        let topic = self.topic_of(event);
        self.ensure_topic(&topic).await?;
        let partitions = match self.partition_counts.get(&topic) {
            Some(n) => *n,
            None => {
                let producer = self.producer.clone();
                let t = topic.to_string();
                let n = tokio::task::spawn_blocking(move || {
                    let md = producer.client().fetch_metadata(Some(&t), Duration::from_secs(30))?;
                    Ok::<_, KafkaError>(md.topics().iter().find(|x| x.name() == t).map_or(0, |x| x.partitions().len()))
                })
                .await
                .map_err(|_| BusError::Closed)??;
                if n == 0 {
                    return Err(BusError::TopicCreate {
                        topic: topic.to_string(),
                        reason: "topic has no partitions".into(),
                    });
                }
                let n = n as i32;
                self.partition_counts.insert(topic.clone(), n);
                n
            }
        };
        self.value.clear();
        envelope::encode(event, &mut self.value);
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).partition(p).payload(&self.value);
            out.push((topic.clone(), enqueue(&self.producer, rec).await?));
        }
        Ok(out)
    }

    /// Sends a record to the tenant's dead-letter topic with the reason and
    /// origin in headers.
    pub async fn send_dead_letter(&mut self, dl: DeadLetter<'_>) -> Result<(Arc<str>, DeliveryFuture), BusError> {
        let topic: Arc<str> = topic::dead_letter_topic(&self.config.topic_prefix, dl.tenant).into();
        self.ensure_topic(&topic).await?;
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: header::ERROR, value: Some(dl.reason) })
            .insert(Header { key: header::STAGE, value: Some(dl.stage) });
        if let Some((t, p, o)) = dl.origin {
            headers = headers
                .insert(Header { key: header::ORIGIN_TOPIC, value: Some(t) })
                .insert(Header { key: header::ORIGIN_PARTITION, value: Some(&p.to_string()) })
                .insert(Header { key: header::ORIGIN_OFFSET, value: Some(&o.to_string()) });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(k) = dl.key {
            rec = rec.key(k);
        }
        if let Some(p) = dl.payload {
            rec = rec.payload(p);
        }
        let fut = enqueue(&self.producer, rec).await?;
        Ok((topic, fut))
    }

    /// Sends a source row that cannot become a tenant's change to the
    /// dead-letter topic of `tenant` (`_unresolved` when none owns it), with
    /// the row as [`UnresolvedPayload`] says (header [`header::PAYLOAD`]).
    /// A row too large for `kafka.max_message_bytes` is replaced by its
    /// description (table, position, size), and the reason says so: a dead
    /// letter never fails for its size.
    pub async fn send_unresolved(
        &mut self,
        tenant: &str,
        table: &str,
        position: &str,
        reason: &str,
        row: UnresolvedPayload<'_>,
    ) -> Result<(Arc<str>, DeliveryFuture), BusError> {
        let mut key = Vec::new();
        let mut value = Vec::new();
        let kind = match row {
            UnresolvedPayload::Change(event) => {
                envelope::encode(event, &mut value);
                if event.op != lablake_model::Op::Truncate {
                    envelope::encode_key(event, &mut key);
                }
                "envelope"
            }
            UnresolvedPayload::Raw(raw) => {
                value.extend_from_slice(raw.as_bytes());
                "raw"
            }
            UnresolvedPayload::Nothing => "description",
        };
        let fits = key.len() + value.len() + DEAD_LETTER_HEADER_ROOM + RECORD_OVERHEAD <= self.config.max_message_bytes;
        let (kind, reason) = if kind == "description" || fits {
            (kind, std::borrow::Cow::Borrowed(reason))
        } else {
            let size = key.len() + value.len();
            key.clear();
            value.clear();
            let note =
                format!("{reason}; the row ({size} bytes) is larger than kafka.max_message_bytes and is not kept");
            ("description", std::borrow::Cow::Owned(note))
        };
        if kind == "description" {
            let doc = serde_json::json!({"table": table, "position": position});
            value = doc.to_string().into_bytes();
        }
        let topic: Arc<str> = topic::dead_letter_topic(&self.config.topic_prefix, tenant).into();
        self.ensure_topic(&topic).await?;
        let headers = OwnedHeaders::new()
            .insert(Header { key: header::ERROR, value: Some(reason.as_ref()) })
            .insert(Header { key: header::STAGE, value: Some("source") })
            .insert(Header { key: header::PAYLOAD, value: Some(kind) });
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers).payload(&value);
        if !key.is_empty() {
            rec = rec.key(&key);
        }
        let fut = enqueue(&self.producer, rec).await?;
        Ok((topic, fut))
    }

    /// Sends raw bytes to `topic` (optionally to one partition), for tests and tools.
    pub async fn send_raw(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<DeliveryFuture, BusError> {
        let mut rec = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        enqueue(&self.producer, rec).await
    }

    /// Waits until every enqueued record was delivered or failed.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer.flush(timeout).map_err(BusError::from)
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }
}

/// The producer's librdkafka settings. `message.max.bytes` is fixed to
/// `kafka.max_message_bytes`, so that [`Oversized::check`] and librdkafka
/// decide alike.
fn producer_config(config: &BusConfig) -> Result<rdkafka::ClientConfig, BusError> {
    config.validate().map_err(|(key, reason)| BusError::Config(format!("{key}: {reason}")))?;
    let tuning = [
        ("compression.type", config.compression.clone()),
        ("linger.ms", config.linger_ms.to_string()),
        ("message.timeout.ms", "300000".to_owned()),
        ("queue.buffering.max.messages", (config.max_in_flight.max(1000) * 2).to_string()),
        ("queue.buffering.max.kbytes", "65536".to_owned()),
        ("batch.num.messages", crate::MAX_BATCH_RECORDS.to_string()),
    ];
    let fixed = [
        ("enable.idempotence", "true".to_owned()),
        ("acks", "all".to_owned()),
        ("message.max.bytes", config.max_message_bytes.to_string()),
    ];
    Ok(config.client_config(&tuning, &fixed))
}

/// The value of an oversized change's dead letter: a JSON document that
/// identifies the change and says what was lost, never a row value (the key,
/// which holds the primary-key values, is the record key). See
/// `docs/envelope.md`, "Dead-letter records".
pub(crate) fn oversized_payload(
    event: &ChangeEvent,
    topic: &str,
    oversized: &Oversized,
    key_in_record: bool,
) -> Vec<u8> {
    let s = &event.source;
    // Encoded size per column, the larger of its two images.
    let mut sizes: Vec<(usize, usize)> = Vec::with_capacity(event.schema.columns.len());
    let mut scratch = Vec::new();
    for (i, _) in event.schema.columns.iter().enumerate() {
        let mut size = 0;
        for v in [&event.before, &event.after].into_iter().filter_map(|r| r.as_ref()?.get(i)) {
            scratch.clear();
            envelope::encode_value(v, &mut scratch);
            size = size.max(scratch.len());
        }
        sizes.push((i, size));
    }
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let largest: Vec<serde_json::Value> = sizes
        .iter()
        .take(LARGEST_COLUMNS)
        .map(|(i, n)| serde_json::json!([event.schema.columns[*i].name, n]))
        .collect();
    let doc = serde_json::json!({
        "v": 1,
        "kind": "oversized",
        "table": event.table.to_string(),
        "topic": topic,
        "op": event.op.code(),
        "position": s.position.as_str(),
        "source": {
            "connector": &*s.connector,
            "name": &*s.name,
            "server_id": s.server_id,
            "file": &*s.file,
            "pos": s.pos,
            "row": s.row,
            "gtid": s.gtid.as_deref(),
            "ts_ms": s.ts_ms,
        },
        "schema": event.schema.fingerprint(),
        "schema_version": event.schema.version(),
        "bytes": oversized.bytes,
        "key_bytes": oversized.key_bytes,
        "value_bytes": oversized.value_bytes,
        "limit": oversized.limit,
        "key_in_record": key_in_record,
        "largest_columns": largest,
        "lost": "the whole change: no column of it reached its topic",
    });
    doc.to_string().into_bytes()
}

async fn enqueue<K, P>(producer: &FutureProducer, mut rec: FutureRecord<'_, K, P>) -> Result<DeliveryFuture, BusError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((e, r)) => return Err(BusError::Delivery { topic: r.topic.to_owned(), source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use lablake_model::{Column, ColumnType, Op, SourceInfo, SourcePosition, TableId, TableSchema, Value};
    use rdkafka::producer::BaseProducer;

    use super::*;

    #[test]
    fn retention_that_loses_history_is_named() {
        assert_eq!(retention_problem(&[("retention.ms", Some("-1")), ("retention.bytes", Some("-1"))]), None);
        assert_eq!(retention_problem(&[("cleanup.policy", Some("delete"))]), None);
        let week = retention_problem(&[("retention.ms", Some("604800000")), ("cleanup.policy", Some("delete"))]);
        assert!(week.is_some_and(|p| p.contains("retention.ms = 604800000") && p.contains("7.0 days")));
        let both =
            retention_problem(&[("retention.bytes", Some("1073741824")), ("cleanup.policy", Some("compact,delete"))]);
        assert!(both.is_some_and(|p| p.contains("retention.bytes") && p.contains("compact")));
    }

    #[test]
    fn a_record_fits_up_to_the_limit_counting_key_and_framing() {
        let limit = 1_000_000;
        assert_eq!(Oversized::check(10, limit - 10 - RECORD_OVERHEAD, limit), None);
        let o = Oversized::check(10, limit - 10 - RECORD_OVERHEAD + 1, limit);
        assert_eq!(
            o,
            Some(Oversized {
                bytes: limit + 1,
                key_bytes: 10,
                value_bytes: limit - 10 - RECORD_OVERHEAD + 1,
                limit,
                refused_by_client: false
            })
        );
        // The key counts: a large key alone can tip it.
        assert!(Oversized::check(limit, 0, limit).is_some());
        // No overflow on absurd sizes.
        assert!(Oversized::check(usize::MAX, usize::MAX, limit).is_some());
        let reason = Oversized::check(9, 1_228_830, limit).map(|o| o.reason()).unwrap_or_default();
        assert_eq!(reason, "record of 1228875 bytes exceeds kafka.max_message_bytes (1000000)");
        let refused = Oversized { bytes: 999_990, key_bytes: 9, value_bytes: 999_945, limit, refused_by_client: true };
        assert_eq!(
            refused.reason(),
            "record of 999990 bytes refused by the Kafka client as too large (kafka.max_message_bytes 1000000)"
        );
    }

    /// The size decision is librdkafka's own at the same `message.max.bytes`:
    /// the largest record `check` lets pass is enqueued, one byte more is
    /// refused as `MessageSizeTooLarge` (enqueueing needs no broker).
    #[test]
    fn the_size_decision_agrees_with_librdkafka() {
        for limit in [crate::MIN_MAX_MESSAGE_BYTES, 1_000_000] {
            let mut cfg = BusConfig::new("127.0.0.1:1");
            cfg.max_message_bytes = limit;
            let producer: BaseProducer =
                match producer_config(&cfg).and_then(|c| c.create().map_err(|e| BusError::Config(e.to_string()))) {
                    Ok(p) => p,
                    Err(e) => panic!("producer: {e}"),
                };
            let key = b"{\"id\":7}";
            let fits = vec![b'x'; limit - key.len() - RECORD_OVERHEAD];
            assert_eq!(Oversized::check(key.len(), fits.len(), limit), None);
            let rec = rdkafka::producer::BaseRecord::to("size-check").key(&key[..]).payload(&fits[..]);
            assert!(producer.send(rec).is_ok(), "librdkafka refused a record check() lets pass ({limit})");
            let over = vec![b'x'; fits.len() + 1];
            assert!(Oversized::check(key.len(), over.len(), limit).is_some());
            let rec = rdkafka::producer::BaseRecord::to("size-check").key(&key[..]).payload(&over[..]);
            match producer.send(rec) {
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {}
                Err((e, _)) => panic!("unexpected error at {limit}: {e}"),
                Ok(()) => panic!("librdkafka accepted a record check() refuses ({limit})"),
            }
            producer.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        }
    }

    fn report_event(pdf: usize) -> ChangeEvent {
        let schema = TableSchema::new(
            vec![
                Column { name: "id".into(), ty: ColumnType::Int { bytes: 4, unsigned: false }, nullable: false },
                Column { name: "patient".into(), ty: ColumnType::String, nullable: false },
                Column { name: "pdf".into(), ty: ColumnType::Bytes, nullable: true },
            ],
            vec![0],
        )
        .with_version(3);
        ChangeEvent {
            table: TableId::new("acme", "lab_acme", "reports"),
            op: Op::Create,
            schema,
            before: None,
            after: Some(vec![Value::Int(7), Value::String("SECRET-PATIENT".into()), Value::Bytes(vec![0x25; pdf])]),
            source: SourceInfo {
                connector: "mysql".into(),
                name: "main".into(),
                server_id: 1,
                file: "binlog.000003".into(),
                pos: 18734,
                row: 1,
                gtid: Some("0-1-4711".into()),
                ts_ms: 1_795_774_800_000,
                position: SourcePosition::mysql(3, 18734, 1),
            },
            ts_ms: 1_795_774_800_123,
        }
    }

    #[test]
    fn an_oversized_changes_dead_letter_names_it_without_values() -> Result<(), serde_json::Error> {
        let e = report_event(900_000);
        let (mut key, mut value) = (Vec::new(), Vec::new());
        envelope::encode_key(&e, &mut key);
        envelope::encode(&e, &mut value);
        let o = Oversized::check(key.len(), value.len(), 1_000_000);
        let Some(o) = o else { panic!("900 KB of bytes (1.2 MB base64) must not fit") };
        let payload = oversized_payload(&e, "lablake.acme.lab_acme.reports", &o, true);
        assert!(payload.len() < 2048, "{} bytes", payload.len());
        let text = String::from_utf8_lossy(&payload);
        assert!(!text.contains("SECRET-PATIENT") && !text.contains("JSUl"), "a value in the dead letter: {text}");
        let doc: serde_json::Value = serde_json::from_slice(&payload)?;
        assert_eq!(doc["kind"], "oversized");
        assert_eq!(doc["table"], "acme/lab_acme.reports");
        assert_eq!(doc["topic"], "lablake.acme.lab_acme.reports");
        assert_eq!(doc["op"], "c");
        assert_eq!(doc["position"], e.source.position.as_str());
        assert_eq!(doc["source"]["file"], "binlog.000003");
        assert_eq!(doc["source"]["gtid"], "0-1-4711");
        assert_eq!(doc["schema_version"], 3);
        assert_eq!(doc["bytes"], o.bytes);
        assert_eq!(doc["limit"], 1_000_000);
        assert_eq!(doc["key_in_record"], true);
        // The largest column first, with its encoded (base64, quoted) size.
        assert_eq!(doc["largest_columns"][0], serde_json::json!(["pdf", 1_200_002]));
        assert_eq!(doc["largest_columns"].as_array().map(Vec::len), Some(3));
        Ok(())
    }
}
