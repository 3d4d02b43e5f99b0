//! Redrive: records a tenant's curators dead-lettered are sent back to the
//! topic and partition they came from, so a fixed `lablake` curates them.
//!
//! Contract: the dead-letter topic is read from the offsets committed for
//! the consumer group `<group>` (from the start the first time); every
//! record dead-lettered by the curator (`lablake.stage = curate`, with its
//! origin) is produced again to its origin topic and partition with its key,
//! value and the header [`REDRIVEN`] naming the dead letter; once Kafka
//! acknowledged all of them, the group's offsets are committed. A second
//! redrive therefore sends nothing again — unless the first one died between
//! producing and committing, when the records after the last commit are
//! sent again (at-least-once; curated readers de-duplicate by key and
//! position). The curator accepts a redriven record even below its
//! partition's high-water mark (it was never curated).
//!
//! Dead letters from sources (undecodable rows, rows without a tenant,
//! oversized changes) are counted and left alone: they need a fixed decoder
//! or tenant first (their `lablake.payload` says what they hold).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::{BusConfig, BusError, header};

/// Header of a redriven record: `<dead-letter topic>/<partition>/<offset>`.
pub const REDRIVEN: &str = "lablake.redriven";

/// What one redrive did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedriveReport {
    /// The dead-letter topic read.
    pub topic: String,
    /// Dead letters read.
    pub read: u64,
    /// Records sent back to their origin, per origin topic.
    pub redriven: BTreeMap<String, u64>,
    /// Dead letters left alone, per reason (`source:<payload>`, or
    /// `curate:no origin`).
    pub left: BTreeMap<String, u64>,
}

/// Redrives the dead letters of `tenant` (see the module documentation),
/// reading until no record arrived for `quiet`. Blocking: call it from
/// `spawn_blocking`.
pub fn redrive_dead_letters(
    config: &BusConfig,
    tenant: &str,
    group: &str,
    quiet: Duration,
) -> Result<RedriveReport, BusError> {
    let topic = lablake_model::topic::dead_letter_topic(&config.topic_prefix, tenant);
    let fixed = [
        ("group.id", group.to_owned()),
        ("enable.auto.commit", "false".to_owned()),
        ("enable.auto.offset.store", "false".to_owned()),
        ("auto.offset.reset", "earliest".to_owned()),
    ];
    let consumer: BaseConsumer =
        config.client_config(&[], &fixed).create().map_err(|e| BusError::Config(e.to_string()))?;
    let producer: FutureProducer = config
        .client_config(&[], &[("enable.idempotence", "true".to_owned()), ("acks", "all".to_owned())])
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;
    let mut report = RedriveReport { topic: topic.clone(), ..RedriveReport::default() };
    let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Ok(report);
    }
    // Start where the last redrive committed (the group's offsets), else at 0.
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(&topic, *p);
    }
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let start = match committed.find_partition(&topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => o,
            _ => 0,
        };
        assignment.add_partition_offset(&topic, *p, Offset::Offset(start))?;
    }
    consumer.assign(&assignment)?;

    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut pending = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m?;
        last = Instant::now();
        report.read += 1;
        next.insert(m.partition(), m.offset() + 1);
        let mut stage = None;
        let mut payload_kind = None;
        let mut origin: (Option<String>, Option<i32>) = (None, None);
        if let Some(h) = m.headers() {
            for hd in h.iter() {
                let v = hd.value.map(|v| String::from_utf8_lossy(v).into_owned());
                match hd.key {
                    k if k == header::STAGE => stage = v,
                    k if k == header::PAYLOAD => payload_kind = v,
                    k if k == header::ORIGIN_TOPIC => origin.0 = v,
                    k if k == header::ORIGIN_PARTITION => origin.1 = v.and_then(|p| p.parse().ok()),
                    _ => {}
                }
            }
        }
        match (stage.as_deref(), origin) {
            (Some("curate"), (Some(origin_topic), Some(origin_partition))) => {
                let mark = format!("{topic}/{}/{}", m.partition(), m.offset());
                let headers = OwnedHeaders::new().insert(Header { key: REDRIVEN, value: Some(&mark) });
                let mut rec: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&origin_topic).partition(origin_partition).headers(headers);
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(p) = m.payload() {
                    rec = rec.payload(p);
                }
                let fut = producer
                    .send_result(rec)
                    .map_err(|(e, _)| BusError::Delivery { topic: origin_topic.clone(), source: e })?;
                pending.push((origin_topic.clone(), fut));
                *report.redriven.entry(origin_topic).or_default() += 1;
            }
            (Some("curate"), _) => *report.left.entry("curate:no origin".into()).or_default() += 1,
            (stage, _) => {
                let what = format!("{}:{}", stage.unwrap_or("?"), payload_kind.as_deref().unwrap_or("description"));
                *report.left.entry(what).or_default() += 1;
            }
        }
    }
    // Every redriven record acknowledged, then the offsets committed.
    for (t, fut) in pending {
        match futures::executor::block_on(fut) {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(BusError::Delivery { topic: t, source: e }),
            Err(_) => return Err(BusError::Closed),
        }
    }
    if !next.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &next {
            tpl.add_partition_offset(&topic, *p, Offset::Offset(*o))?;
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
    }
    Ok(report)
}
