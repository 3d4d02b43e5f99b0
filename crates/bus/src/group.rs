//! Membership in a Kafka consumer group: which partitions this instance owns.
//!
//! [`GroupMember`] joins a group with a topic pattern and reports Kafka's
//! assignment as [`Membership`] events: partitions spread over every member,
//! moved when one joins, leaves or falls silent for the session timeout.
//! It never delivers records: the partitions it is assigned are paused at
//! their log end, and the caller reads them through a [`ChangeConsumer`]
//! from offsets it checkpoints itself (Kafka holds no offsets of ours).
//!
//! Delivery contract: an [`Membership::Assigned`] partition may still be
//! written by its previous owner until that owner learns of the revocation
//! (it may be paused, or slow): the caller must fence each partition's writes
//! with a lease it takes on assignment, so the newest owner always wins.
//!
//! [`ChangeConsumer`]: crate::ChangeConsumer

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::{BusConfig, BusError};

/// A change of this member's share of the group's partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// These partitions are now this member's.
    Assigned(Vec<(String, i32)>),
    /// These partitions are no longer this member's (every partition it
    /// held, with Kafka's eager rebalance protocol).
    Revoked(Vec<(String, i32)>),
}

/// Turns librdkafka's rebalance callbacks (run inside a poll of the member
/// consumer) into [`Membership`] events. The channel is unbounded but holds
/// at most a few events per rebalance, and [`GroupMember::next`] drains it.
struct MemberContext {
    events: mpsc::UnboundedSender<Membership>,
    owned: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for MemberContext {}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect()
}

impl MemberContext {
    fn set_owned(&self, now: Vec<(String, i32)>) -> Vec<(String, i32)> {
        let mut owned = self.owned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *owned, now)
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let parts = partitions(tpl);
                // Owned, never fetched here: from the log end, and paused.
                let mut own = TopicPartitionList::new();
                for (t, p) in &parts {
                    if let Err(e) = own.add_partition_offset(t, *p, Offset::End) {
                        tracing::warn!(topic = t, partition = p, error = %e, "cannot list an assigned partition");
                    }
                }
                if let Err(e) = consumer.assign(&own) {
                    tracing::warn!(error = %e, "kafka group: accepting the assignment failed");
                }
                if let Err(e) = consumer.pause(&own) {
                    tracing::warn!(error = %e, "kafka group: pausing the member's partitions failed");
                }
                self.set_owned(parts.clone());
                tracing::info!(partitions = parts.len(), "kafka group: partitions assigned to this member");
                let _ = self.events.send(Membership::Assigned(parts));
            }
            other => {
                if other != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::warn!(error = ?other, "kafka group: rebalance error; giving up every partition");
                }
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "kafka group: giving up the assignment failed");
                }
                let before = self.set_owned(Vec::new());
                tracing::info!(partitions = before.len(), "kafka group: partitions revoked from this member");
                let _ = self.events.send(Membership::Revoked(before));
            }
        }
    }
}

/// One member of a consumer group (see the module docs).
pub struct GroupMember {
    consumer: StreamConsumer<MemberContext>,
    events: mpsc::UnboundedReceiver<Membership>,
}

/// The librdkafka pattern subscription for topics whose name starts with
/// `prefix` followed by one of `tenants` and a dot (any tenant when empty).
pub fn topic_pattern(prefix: &str, tenants: &[String]) -> String {
    let tenant = if tenants.is_empty() {
        String::new()
    } else {
        let alternatives: Vec<String> = tenants.iter().map(|t| regex_escape(t)).collect();
        format!("({})\\.", alternatives.join("|"))
    };
    format!("^{}\\.{tenant}", regex_escape(prefix))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl GroupMember {
    /// Joins `group` for the topics matching `pattern` (a librdkafka
    /// pattern, see [`topic_pattern`]). A member silent for `session_timeout`
    /// loses its partitions to the others; new topics are seen within
    /// `discovery`.
    pub fn join(
        config: &BusConfig,
        group: &str,
        pattern: &str,
        session_timeout: Duration,
        discovery: Duration,
    ) -> Result<Self, BusError> {
        let session_ms = session_timeout.as_millis().max(1000);
        let fixed = [
            ("group.id", group.to_owned()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            ("auto.offset.reset", "latest".to_owned()),
            ("partition.assignment.strategy", "roundrobin".to_owned()),
            ("session.timeout.ms", session_ms.to_string()),
            ("heartbeat.interval.ms", (session_ms / 4).max(250).to_string()),
            ("topic.metadata.refresh.interval.ms", discovery.as_millis().max(1000).to_string()),
            // It fetches nothing (paused), so it buffers next to nothing.
            ("queued.max.messages.kbytes", "64".to_owned()),
        ];
        let (tx, events) = mpsc::unbounded_channel();
        let context = MemberContext { events: tx, owned: Mutex::new(Vec::new()) };
        let consumer: StreamConsumer<MemberContext> = config
            .client_config(&[], &fixed)
            .create_with_context(context)
            .map_err(|e| BusError::Config(e.to_string()))?;
        consumer.subscribe(&[pattern])?;
        Ok(GroupMember { consumer, events })
    }

    /// The next change of this member's partitions. Polls the group (which
    /// also keeps the membership alive): call it continuously, e.g. as a
    /// branch of the stage's `select!` (it is cancel-safe).
    pub async fn next(&mut self) -> Result<Membership, BusError> {
        loop {
            tokio::select! {
                biased;
                Some(ev) = self.events.recv() => return Ok(ev),
                m = self.consumer.recv() => match m {
                    // Fetched before the pause took effect: not ours to read here.
                    Ok(_) => continue,
                    Err(e) => return Err(e.into()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_prefix_and_tenants_literally() {
        assert_eq!(topic_pattern("lablake", &[]), "^lablake\\.");
        assert_eq!(topic_pattern("l.x", &["acme".into(), "b-2".into()]), "^l\\.x\\.(acme|b-2)\\.");
    }
}
