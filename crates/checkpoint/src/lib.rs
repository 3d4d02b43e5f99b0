//! Checkpoints for Lablake: where each source is, which Kafka offsets are
//! curated, which Parquet files make up the curated lake, and per-table
//! processing status.
//!
//! # Capabilities
//!
//! Storage is split into narrow traits, one per concern, so a stage bounds
//! on what it uses and a new backend can be built (and conformance-tested)
//! one capability at a time:
//!
//! | trait | methods |
//! |---|---|
//! | [`LeaseStore`] | `acquire_lease` |
//! | [`SourceStore`] | `load_source`, `save_source` |
//! | [`BatchStore`] | `load_partition`, `begin_batch`, `commit_batch`, `manifest`, `status` |
//! | [`SnapshotStore`] | `request_snapshot`, `snapshots`, `save_snapshot` |
//! | [`SchemaStore`] | `register_schema`, `schema_history` |
//! | [`SinkStore`] | `load_sink`, `sinks`, `save_sink` |
//! | [`GenerationStore`] | `in_generation`, `data_generation`, `load_generations`, `save_generations` |
//!
//! [`CheckpointStore`] is the facade: every type implementing all seven
//! implements it. [`prelude`] brings every trait into scope at once.
//!
//! Common to every method: all reads are strongly consistent; every write is
//! conditional as its documentation says, and a failed condition is
//! [`CheckpointError::Fenced`] (nothing is written; stop and reload, do not
//! retry); a failure of the backend is [`CheckpointError::Backend`]
//! (retryable); a stored item that cannot be read — a missing or mistyped
//! attribute, or an item written by a newer Lablake — is
//! [`CheckpointError::Corrupt`].
//!
//! # Delivery contract
//!
//! * A **source checkpoint** is saved only after Kafka acknowledged every
//!   record before that position. On restart the source resumes from it, so
//!   delivery to Kafka is at-least-once; duplicates carry the same
//!   `(primary key, source position)` and are removed downstream.
//! * A **partition checkpoint** moves through two phases per batch:
//!   1. [`BatchStore::begin_batch`] records the *intent* (offset range and
//!      object key) before any file is written;
//!   2. after the Parquet file is durable, [`BatchStore::commit_batch`]
//!      advances `next_offset` past the batch, adds the file to the manifest
//!      and updates the processing status — atomically.
//!
//!   A restarted consumer that finds a pending intent must rebuild exactly that
//!   offset range into exactly that key (create-only put), then commit. So a
//!   batch is never written under two keys and files never overlap in offsets.
//! * **Fencing**: every writer holds a generation of a [`LeaseName`] from
//!   [`LeaseStore::acquire_lease`]. Every write is conditional on the lease
//!   still holding that generation (a [`Fence`]) *and*, for partition
//!   checkpoints, on the checkpoint still being the version the writer read.
//!   A stale or racing writer gets [`CheckpointError::Fenced`] and must stop;
//!   it never overwrites a newer checkpoint.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod dynamo;
mod error;
mod generations;
mod memory;
mod resume_serde;
mod rules;
mod schema;
mod store;
mod table_id_serde;

pub use dynamo::{DynamoConfig, DynamoStore};
pub use error::CheckpointError;
pub use generations::{GenerationRecord, GenerationState, Generations};
pub use memory::MemoryStore;
pub use schema::{ColumnLineage, SchemaColumn, SchemaVersion, column_lineage};
pub use store::{
    BatchStore, CheckpointStore, GenerationStore, LeaseStore, SchemaStore, SinkStore, SnapshotStore, SourceStore,
};

use std::fmt;

use lablake_model::{Resume, TableId};

/// Every store trait, for `use lablake_checkpoint::prelude::*;` (a method of a
/// trait can only be called with the trait in scope, or through a bound).
pub mod prelude {
    pub use crate::store::{
        BatchStore, CheckpointStore, GenerationStore, LeaseStore, SchemaStore, SinkStore, SnapshotStore, SourceStore,
    };
}

/// The consumer group whose partition checkpoints generation `data_gen` of
/// curated data keeps: `group` itself for generation 0, `<group>-g<N>`
/// otherwise (ADR 0013).
pub fn generation_group(group: &str, data_gen: u32) -> String {
    if data_gen == 0 { group.to_owned() } else { format!("{group}-g{data_gen}") }
}

/// The name of a lease: who may write what. Built only by the constructors,
/// so the naming convention is spelled in one place. The names are stored as
/// they are (existing deployments hold them): `source#<source>`,
/// `curate#<group>#<shard>`, `sink#<sink>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseName(String);

impl LeaseName {
    /// The lease of a source (one database server): `source#<source>`. It
    /// guards the source checkpoint and the source's snapshot progress.
    pub fn source(source: &str) -> Self {
        LeaseName(format!("source#{source}"))
    }

    /// The lease of one curator shard of a consumer group:
    /// `curate#<group>#<shard>`. It guards that shard's partition checkpoints.
    pub fn curator(group: &str, shard: &str) -> Self {
        LeaseName(format!("curate#{group}#{shard}"))
    }

    /// The lease of one partition of a consumer group, for curators that
    /// share the group's partitions through Kafka's group assignment:
    /// `curate#<group>#<topic>#<partition>`. It guards that partition's
    /// checkpoint; the member Kafka assigned the partition to takes it.
    pub fn partition(group: &str, topic: &str, partition: i32) -> Self {
        LeaseName(format!("curate#{group}#{topic}#{partition}"))
    }

    /// The lease of generation `data_gen` > 0 of a tenant's curated data for
    /// the curators of consumer group `group` (ADR 0013):
    /// `replay#<group>#<tenant>#g<N>`. The replay that builds the generation
    /// holds it; the live curator takes it over at the cut-over, which fences
    /// a builder still running.
    pub fn generation(group: &str, tenant: &str, data_gen: u32) -> Self {
        LeaseName(format!("replay#{group}#{tenant}#g{data_gen}"))
    }

    /// The lease of a warehouse sink (e.g. `snowflake`): `sink#<sink>`. It
    /// guards the sink's checkpoints.
    pub fn sink(sink: &str) -> Self {
        LeaseName(format!("sink#{sink}"))
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease as a standby sees it ([`LeaseStore::lease_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseState {
    /// The current holder's generation.
    pub generation: u64,
    /// When the holder last took or renewed it (ms since the epoch, its clock).
    pub renewed_ms: i64,
}

/// What a guarded write is conditional on: the lease the writer holds and the
/// generation [`LeaseStore::acquire_lease`] gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    pub lease: LeaseName,
    pub generation: u64,
}

impl Fence {
    pub fn new(lease: LeaseName, generation: u64) -> Self {
        Fence { lease, generation }
    }
}

/// One topic-partition as consumed by one consumer group: the identity of a
/// [`PartitionCheckpoint`]. Displayed as `group/topic/partition`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionRef {
    pub group: String,
    pub topic: String,
    pub partition: i32,
}

impl PartitionRef {
    pub fn new(group: impl Into<String>, topic: impl Into<String>, partition: i32) -> Self {
        PartitionRef { group: group.into(), topic: topic.into(), partition }
    }
}

impl fmt::Display for PartitionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.group, self.topic, self.partition)
    }
}

/// Where a source has been acknowledged up to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceCheckpoint {
    /// Where the source resumes: binlog coordinates (MySQL/MariaDB) or an LSN
    /// (PostgreSQL), at a transaction boundary. In JSON:
    /// `{"binlog": {"file", "pos", "gtid"}}` or `{"lsn": n}`.
    #[serde(with = "resume_serde")]
    pub resume: Resume,
    /// Sortable position of the last acknowledged change.
    pub position: String,
    /// Commit time of the last acknowledged transaction, ms since epoch.
    pub commit_ts_ms: i64,
}

/// The intent to write one batch: offsets `first_offset..=last_offset` of one
/// topic-partition into one object key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchIntent {
    pub first_offset: i64,
    pub last_offset: i64,
    pub object_key: String,
}

/// A durable batch, committed after its file is written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchCommit {
    pub intent: BatchIntent,
    #[serde(with = "table_id_serde")]
    pub table: TableId,
    /// Configured name of the source the records came from.
    pub source: String,
    /// Rows written (records that were dead-lettered are not counted here).
    pub rows: u64,
    pub bytes: u64,
    /// Records sent to the dead-letter topic from this offset range.
    pub dead_lettered: u64,
    /// Newest commit time of the rows in the batch, ms since epoch.
    pub max_commit_ts_ms: i64,
    /// Largest source position in the batch.
    pub max_position: String,
    /// The partition's curated high-water mark after this batch (see
    /// [`HighWater`]); stored with the partition checkpoint as it is.
    pub high_water: Option<HighWater>,
}

/// The newest source position curated from one topic-partition, and the
/// record keys curated at exactly that position.
///
/// A partition's records arrive in source order, and a source re-delivers
/// after a restart a suffix of what it already sent (same positions), so a
/// record at a lower position — or at this position with one of these keys
/// (an update that changed its key is a delete and a create at one
/// position) — is a re-delivery the curator drops. Persisted with the
/// partition checkpoint, so the decision survives restarts and a rebuilt
/// batch decides exactly as the original did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HighWater {
    /// The position's sort key (`lablake_model::SourcePosition`).
    pub position: String,
    /// Hex of the Kafka record keys curated at `position` (empty key: a truncate).
    pub keys: Vec<String>,
}

/// The checkpoint of one topic-partition for one consumer group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionCheckpoint {
    /// Next Kafka offset to consume.
    pub next_offset: i64,
    /// A batch that was started but not committed.
    pub pending: Option<BatchIntent>,
    /// Generation of the consumer that wrote this checkpoint.
    pub generation: u64,
    /// Incremented by every write; writers compare-and-set on it.
    pub version: u64,
    /// What the committed batches curated up to (a `begin_batch` keeps it,
    /// a `commit_batch` sets it to the batch's [`BatchCommit::high_water`]).
    pub high_water: Option<HighWater>,
}

/// One curated Parquet file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub object_key: String,
    pub rows: u64,
    pub bytes: u64,
}

/// Processing status of one table (or, with `table == "*"`, of one source database).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableStatus {
    pub tenant: String,
    pub source: String,
    pub database: String,
    /// The table, or `*` for the per-database aggregate.
    pub table: String,
    pub rows: u64,
    pub files: u64,
    pub dead_lettered: u64,
    pub max_commit_ts_ms: i64,
    pub max_position: String,
    /// When the status was last updated, ms since epoch.
    pub updated_at_ms: i64,
}

/// Where a table's snapshot (full load) stands, per source.
///
/// A snapshot reads the table in primary-key order, chunk by chunk; `last_key`
/// is the key of the last row whose chunk Kafka acknowledged, so a killed
/// snapshot resumes after it. Each request has a number: a new request (an
/// on-demand re-snapshot) starts over and makes saves of the older request
/// no-ops.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotProgress {
    #[serde(with = "table_id_serde")]
    pub table: TableId,
    /// Number of the request this progress belongs to (1, 2, ...).
    pub request: u64,
    pub state: SnapshotState,
    /// Key of the last row delivered, as the source's text forms of the key
    /// columns in key order (a JSON array in the store). `None`: not started.
    pub last_key: Option<Vec<String>>,
    pub chunks: u64,
    pub rows: u64,
    /// The source's row estimate when the snapshot started.
    pub estimate: u64,
    pub started_ms: i64,
    pub updated_ms: i64,
}

impl SnapshotProgress {
    /// A new request number `request` for `table`, not started, at `now_ms`.
    pub fn requested(table: &TableId, request: u64, now_ms: i64) -> Self {
        SnapshotProgress {
            table: table.clone(),
            request,
            state: SnapshotState::Requested,
            last_key: None,
            chunks: 0,
            rows: 0,
            estimate: 0,
            started_ms: now_ms,
            updated_ms: now_ms,
        }
    }
}

/// How far a warehouse sink (e.g. `snowflake`) has loaded one table's
/// curated batches. Saved only after a batch is merged, so a restart loads
/// at most the last batch again (which the sink makes harmless).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkCheckpoint {
    #[serde(with = "table_id_serde")]
    pub table: TableId,
    /// Per `<topic>#<partition>`: the first offset of the next batch to load
    /// (every batch of that partition starting below it is loaded).
    pub next: std::collections::BTreeMap<String, i64>,
    pub files: u64,
    pub rows: u64,
    /// Newest source commit time loaded (ms since the epoch), for freshness.
    pub max_commit_ts_ms: i64,
    pub updated_ms: i64,
}

impl SinkCheckpoint {
    pub fn new(table: &TableId) -> Self {
        SinkCheckpoint {
            table: table.clone(),
            next: std::collections::BTreeMap::new(),
            files: 0,
            rows: 0,
            max_commit_ts_ms: 0,
            updated_ms: 0,
        }
    }

    /// Whether the batch of `topic`/`partition` starting at `first_offset` is loaded.
    pub fn has_loaded(&self, topic: &str, partition: i32, first_offset: i64) -> bool {
        self.next.get(&format!("{topic}#{partition}")).is_some_and(|n| first_offset < *n)
    }
}

/// State of a [`SnapshotProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    Requested,
    Running,
    Done,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Requested => "requested",
            SnapshotState::Running => "running",
            SnapshotState::Done => "done",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_keep_their_stored_spelling() {
        assert_eq!(LeaseName::source("mysql-a").as_str(), "source#mysql-a");
        assert_eq!(LeaseName::curator("lablake-curate", "0").as_str(), "curate#lablake-curate#0");
        assert_eq!(LeaseName::sink("snowflake").to_string(), "sink#snowflake");
        assert_ne!(LeaseName::source("x"), LeaseName::sink("x"));
    }

    #[test]
    fn partition_refs_display_as_group_topic_partition() {
        assert_eq!(PartitionRef::new("g", "acme.changes", 3).to_string(), "g/acme.changes/3");
    }
}
