//! Checkpoints for Lablake: where each source is, which Kafka offsets are
//! curated, which Parquet files make up the curated lake, and per-table
//! processing status.
//!
//! # Delivery contract
//!
//! * A **source checkpoint** is saved only after Kafka acknowledged every
//!   record before that position. On restart the source resumes from it, so
//!   delivery to Kafka is at-least-once; duplicates carry the same
//!   `(primary key, source position)` and are removed downstream.
//! * A **partition checkpoint** moves through two phases per batch:
//!   1. [`CheckpointStore::begin_batch`] records the *intent* (offset range and
//!      object key) before any file is written;
//!   2. after the Parquet file is durable, [`CheckpointStore::commit_batch`]
//!      advances `next_offset` past the batch, adds the file to the manifest
//!      and updates the processing status — atomically.
//!
//!   A restarted consumer that finds a pending intent must rebuild exactly that
//!   offset range into exactly that key (create-only put), then commit. So a
//!   batch is never written under two keys and files never overlap in offsets.
//! * **Fencing**: every consumer holds a generation from
//!   [`CheckpointStore::acquire_lease`]. Every write is conditional on the
//!   lease still holding that generation *and* on the partition checkpoint
//!   still being the version the writer read. A stale or racing writer gets
//!   [`CheckpointError::Fenced`] and must stop; it never overwrites a newer
//!   checkpoint.

pub mod conformance;
mod dynamo;
mod error;
mod memory;
mod rules;
mod schema;
mod table_id_serde;

pub use dynamo::{DynamoConfig, DynamoStore};
pub use error::CheckpointError;
pub use memory::MemoryStore;
pub use schema::{ColumnLineage, SchemaColumn, SchemaVersion, column_lineage};

use lablake_model::TableId;

/// Where a source (one MySQL server) has been acknowledged up to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceCheckpoint {
    /// Binlog file to resume from (MySQL); empty for PostgreSQL.
    pub file: String,
    /// MySQL: offset in `file` of the first event not yet acknowledged (a
    /// transaction boundary). PostgreSQL: the acknowledged LSN (the end of a
    /// committed transaction or a heartbeat), reported to the slot as flushed.
    pub pos: u64,
    /// GTID state at that point (MySQL executed GTID set, or MariaDB `domain-server-seq` list), if known.
    pub gtid: Option<String>,
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

/// Storage of checkpoints. Implementations: [`DynamoStore`] (production) and
/// [`MemoryStore`] (tests, single process). Both pass [`conformance`].
///
/// All reads are strongly consistent. All writes are conditional as described
/// in the crate documentation; a failed condition is
/// [`CheckpointError::Fenced`], any other failure
/// [`CheckpointError::Backend`] (retryable).
pub trait CheckpointStore: Send + Sync {
    /// Increments and returns the generation of the lease `name`
    /// (e.g. `curate#<group>#<shard>` or `source#<name>`). The previous holder
    /// is fenced from then on.
    fn acquire_lease(&self, name: &str) -> impl Future<Output = Result<u64, CheckpointError>> + Send;

    /// The source checkpoint, if any.
    fn load_source(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<Option<SourceCheckpoint>, CheckpointError>> + Send;

    /// Saves the source checkpoint if the lease `source#<source>` still has
    /// `generation`; otherwise [`CheckpointError::Fenced`].
    fn save_source(
        &self,
        source: &str,
        generation: u64,
        checkpoint: &SourceCheckpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;

    /// The checkpoint of a topic-partition for a consumer group, if any.
    fn load_partition(
        &self,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Result<Option<PartitionCheckpoint>, CheckpointError>> + Send;

    /// Records a batch intent. `lease` is the lease name the writer holds with
    /// `generation`; `expected_version` is the version the writer last read
    /// (`None`: no checkpoint existed). Returns the new checkpoint.
    #[allow(clippy::too_many_arguments)] // the write's full identity and its fencing inputs
    fn begin_batch(
        &self,
        group: &str,
        lease: &str,
        generation: u64,
        topic: &str,
        partition: i32,
        expected_version: Option<u64>,
        intent: &BatchIntent,
    ) -> impl Future<Output = Result<PartitionCheckpoint, CheckpointError>> + Send;

    /// Commits the pending batch (which must equal `commit.intent`):
    /// `next_offset = last_offset + 1`, pending cleared, manifest entry added
    /// and status of the table and of its source database updated, in one
    /// atomic write under the same conditions as [`Self::begin_batch`].
    #[allow(clippy::too_many_arguments)] // the write's full identity and its fencing inputs
    fn commit_batch(
        &self,
        group: &str,
        lease: &str,
        generation: u64,
        topic: &str,
        partition: i32,
        expected_version: u64,
        commit: &BatchCommit,
    ) -> impl Future<Output = Result<PartitionCheckpoint, CheckpointError>> + Send;

    /// Manifest of a table's curated files, ordered by (topic, partition, first_offset).
    fn manifest(&self, table: &TableId) -> impl Future<Output = Result<Vec<ManifestEntry>, CheckpointError>> + Send;

    /// Processing status rows, of one tenant or of all.
    fn status(&self, tenant: Option<&str>) -> impl Future<Output = Result<Vec<TableStatus>, CheckpointError>> + Send;

    /// Requests a snapshot of `table` from `source`. With `if_absent`, only
    /// when the table never had one (a table seen for the first time);
    /// otherwise a new request (its number one higher) replaces any earlier
    /// one, finished or not. Returns whether a request was recorded.
    fn request_snapshot(
        &self,
        source: &str,
        table: &TableId,
        if_absent: bool,
    ) -> impl Future<Output = Result<bool, CheckpointError>> + Send;

    /// Every snapshot of `source`, any state, ordered by table.
    fn snapshots(&self, source: &str) -> impl Future<Output = Result<Vec<SnapshotProgress>, CheckpointError>> + Send;

    /// Saves progress if the lease `source#<source>` still has `generation`
    /// (else [`CheckpointError::Fenced`]) and the table's current request is
    /// still `progress.request`; returns `false` (nothing written) when a
    /// newer request superseded it.
    fn save_snapshot(
        &self,
        source: &str,
        generation: u64,
        progress: &SnapshotProgress,
    ) -> impl Future<Output = Result<bool, CheckpointError>> + Send;

    /// Registers a shape of `table` in its schema history and returns its
    /// version: the existing entry's when one has the same fingerprint,
    /// else a new entry numbered one past the latest, with its `changes`
    /// computed against the latest. Racing registrars never take the same
    /// number (conditional create) and agree on the version of a shape.
    fn register_schema(
        &self,
        table: &TableId,
        candidate: &SchemaVersion,
    ) -> impl Future<Output = Result<u32, CheckpointError>> + Send;

    /// The sink checkpoint of `table`, if the sink loaded anything of it.
    fn load_sink(
        &self,
        sink: &str,
        table: &TableId,
    ) -> impl Future<Output = Result<Option<SinkCheckpoint>, CheckpointError>> + Send;

    /// Every table's checkpoint of `sink`, ordered by table.
    fn sinks(&self, sink: &str) -> impl Future<Output = Result<Vec<SinkCheckpoint>, CheckpointError>> + Send;

    /// Saves a sink checkpoint if the lease `sink#<sink>` still has
    /// `generation` (else [`CheckpointError::Fenced`]).
    fn save_sink(
        &self,
        sink: &str,
        generation: u64,
        checkpoint: &SinkCheckpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;

    /// The schema history of `table`, ordered by version.
    fn schema_history(
        &self,
        table: &TableId,
    ) -> impl Future<Output = Result<Vec<SchemaVersion>, CheckpointError>> + Send;
}
