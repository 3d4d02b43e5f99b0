//! The Kafka bus.
//!
//! * [`ChangeProducer`] writes [`ChangeEvent`](lablake_model::ChangeEvent)s to
//!   their tenant's topic (`<prefix>.<tenant>.<db>.<table>`, created on demand),
//!   keyed by primary key, with an idempotent producer (`acks=all`,
//!   `enable.idempotence=true`), so one row's changes stay ordered in one
//!   partition and a retried send never duplicates a record.
//! * [`ack_queue`] keeps deliveries and source positions in send order. A
//!   position comes out of [`AckReceiver::next`] only after Kafka acknowledged
//!   **every** record sent before it — this is what the source checkpoints, so
//!   an upstream position is never acknowledged before Kafka has the data.
//! * [`ChangeConsumer`] reads tenant topics from explicit offsets (the
//!   curation stage owns its offsets in DynamoDB, not in Kafka).
//! * [`GroupMember`] takes part in a Kafka consumer group only to learn which
//!   partitions are this instance's ([`Membership`]); it reads no records.
//! * Dead-letter records go to `<prefix>-dlq.<tenant>` with the reason and
//!   origin in headers ([`ChangeProducer::send_dead_letter`]).
//! * A change whose record would exceed `kafka.max_message_bytes` (also
//!   librdkafka's `message.max.bytes`) is never sent to its topic and never
//!   fails the producer: [`ChangeProducer::send`] sends a small dead letter
//!   describing it (table, op, position, sizes; key as the record key)
//!   instead and says so in [`Sent::oversized`]. Its delivery is acknowledged
//!   like any record's, so the source moves past the change only once the
//!   dead letter is in Kafka.
//!
//! The queue between sender and acknowledger is bounded: when Kafka is slow
//! the source blocks, memory does not grow.

mod ack;
mod config;
mod consumer;
mod error;
mod group;
mod producer;
pub mod redrive;

pub use ack::{AckReceiver, AckSender, ack_queue};
pub use config::{BusConfig, DEFAULT_MAX_MESSAGE_BYTES, MAX_MAX_MESSAGE_BYTES, MIN_MAX_MESSAGE_BYTES};
pub use consumer::{ChangeConsumer, Record};
pub use error::BusError;
pub use group::{GroupMember, Membership, topic_pattern};
pub use producer::{ChangeProducer, DeadLetter, Oversized, RECORD_OVERHEAD, Sent, UnresolvedPayload, header};
pub use rdkafka::producer::DeliveryFuture;

/// Records per producer batch, at most (`batch.num.messages`). Consumers that
/// must start fetching at a batch boundary start this many records early.
pub const MAX_BATCH_RECORDS: usize = 1000;
