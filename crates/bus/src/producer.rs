use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lablake_model::{ChangeEvent, envelope, topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
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
    pub fn new(config: &BusConfig) -> Result<Self, BusError> {
        let tuning = [
            ("compression.type", config.compression.clone()),
            ("linger.ms", config.linger_ms.to_string()),
            ("message.timeout.ms", "300000".to_owned()),
            ("queue.buffering.max.messages", (config.max_in_flight.max(1000) * 2).to_string()),
            ("queue.buffering.max.kbytes", "65536".to_owned()),
            ("batch.num.messages", crate::MAX_BATCH_RECORDS.to_string()),
        ];
        let fixed = [("enable.idempotence", "true".to_owned()), ("acks", "all".to_owned())];
        let producer: FutureProducer =
            config.client_config(&tuning, &fixed).create().map_err(|e| BusError::Config(e.to_string()))?;
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
        let new = NewTopic::new(topic, self.config.partitions, TopicReplication::Fixed(self.config.replication_factor));
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

    /// The topic of a change's table (cached).
    pub fn topic_of(&mut self, event: &ChangeEvent) -> Arc<str> {
        if let Some(t) = self.topic_names.get(&event.table) {
            return t.clone();
        }
        let t: Arc<str> = topic::change_topic(&self.config.topic_prefix, &event.table).into();
        self.topic_names.insert(event.table.clone(), t.clone());
        t
    }

    /// Encodes and enqueues a change; returns its topic and delivery future.
    /// Waits (does not fail) while the local queue is full. A truncate goes
    /// through [`Self::send_truncate`] instead.
    pub async fn send(&mut self, event: &ChangeEvent) -> Result<(Arc<str>, DeliveryFuture), BusError> {
        if event.op == lablake_model::Op::Truncate {
            return Err(BusError::Config("a truncate must be sent with send_truncate".into()));
        }
        let topic = self.topic_of(event);
        self.ensure_topic(&topic).await?;
        self.key.clear();
        envelope::encode_key(event, &mut self.key);
        self.value.clear();
        envelope::encode(event, &mut self.value);
        let fut = enqueue(&self.producer, FutureRecord::to(&topic).key(&self.key).payload(&self.value)).await?;
        Ok((topic, fut))
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
