//! The capability traits of a checkpoint store, and [`CheckpointStore`], the
//! facade over all of them.
//!
//! Common to every method of every trait: all reads are strongly consistent;
//! every write is conditional as its documentation says, and a failed
//! condition is [`CheckpointError::Fenced`] (nothing is written; the caller
//! must stop and reload, not retry); a failure of the backend is
//! [`CheckpointError::Backend`] (retryable); a stored item that cannot be
//! read — missing or mistyped attribute, or written by a newer Lablake — is
//! [`CheckpointError::Corrupt`].

use lablake_model::TableId;

use crate::{
    BatchCommit, BatchIntent, CheckpointError, Fence, LeaseName, ManifestEntry, PartitionCheckpoint, PartitionRef,
    SchemaVersion, SinkCheckpoint, SnapshotProgress, SourceCheckpoint, TableStatus,
};

/// Storage of checkpoints: every capability. Implementations:
/// [`crate::DynamoStore`] (production) and [`crate::MemoryStore`] (tests,
/// single process); both pass the conformance suite (`conformance::run_all`,
/// feature `conformance`).
///
/// Implemented for every type implementing all the capability traits; bound
/// on the narrower traits where a stage needs less.
pub trait CheckpointStore:
    LeaseStore + SourceStore + BatchStore + SnapshotStore + SchemaStore + SinkStore + GenerationStore
{
}

impl<T> CheckpointStore for T where
    T: LeaseStore + SourceStore + BatchStore + SnapshotStore + SchemaStore + SinkStore + GenerationStore
{
}

/// Generations of curated data (ADR 0013). A handle reads and writes one
/// generation's manifest, status and sink checkpoints ([`BatchStore::manifest`],
/// [`BatchStore::commit_batch`], [`BatchStore::status`], the [`SinkStore`]
/// methods); generation 0 has the keys written before generations existed.
/// Leases, source checkpoints, partition checkpoints (a generation's curator
/// has a consumer group of its own), snapshots and schema histories are
/// shared by every generation.
pub trait GenerationStore: Send + Sync {
    /// A handle on the same store for generation `data_gen` (cheap: shares
    /// the connection).
    fn in_generation(&self, data_gen: u32) -> Self
    where
        Self: Sized;

    /// The generation this handle reads and writes.
    fn data_generation(&self) -> u32;

    /// A tenant's generations; [`crate::Generations::initial`] (generation 0
    /// active, `version` 0) when nothing was stored.
    fn load_generations(
        &self,
        tenant: &str,
    ) -> impl Future<Output = Result<crate::Generations, CheckpointError>> + Send;

    /// Saves a tenant's generations in one conditional write: only while the
    /// stored version is still `generations.version` (0: nothing stored).
    /// Returns the new version. Another writer's save in between is
    /// [`CheckpointError::Fenced`] (reload, decide again); a retried request
    /// whose first attempt was applied is recognised as the caller's.
    fn save_generations(
        &self,
        generations: &crate::Generations,
    ) -> impl Future<Output = Result<u64, CheckpointError>> + Send;
}

/// Leases: who may write. See [`LeaseName`] for the leases there are.
pub trait LeaseStore: Send + Sync {
    /// Increments and returns the generation of `lease`: at least 1, and
    /// greater than every generation returned for `lease` before (other
    /// leases are unaffected). The previous holder is fenced from then on:
    /// every write guarded by `lease` with an older generation is
    /// [`CheckpointError::Fenced`].
    fn acquire_lease(&self, lease: &LeaseName) -> impl Future<Output = Result<u64, CheckpointError>> + Send;

    /// For a holder starting again after a failure in the same process: the
    /// next generation, like [`Self::acquire_lease`], but only while `lease`
    /// still has `held`, the holder's own. When another holder took it over
    /// meanwhile, [`CheckpointError::Fenced`]: the caller was superseded and
    /// must not take the lease back (two holders restarting after each
    /// other's takeover would otherwise fence each other forever). A retried
    /// request whose first attempt was applied is recognised as the caller's.
    /// `held` 0 takes a lease nobody ever took, and is fenced if someone did
    /// (of several standbys finding no lease, exactly one takes it).
    fn reacquire_lease(
        &self,
        lease: &LeaseName,
        held: u64,
    ) -> impl Future<Output = Result<u64, CheckpointError>> + Send;

    /// Confirms that the holder of `held` is alive and still holds `lease`:
    /// records the time as the lease's renewal (what a standby watches, see
    /// [`Self::lease_state`]), only while `lease` still has `held`; once
    /// another holder took it over, [`CheckpointError::Fenced`] and nothing
    /// is written. Holders renew every few seconds, which also tells one with
    /// nothing else to write (an idle sink, quiet partitions) that it was
    /// superseded. Repeating it is harmless (a retried request whose answer
    /// was lost succeeds again).
    fn renew_lease(&self, lease: &LeaseName, held: u64) -> impl Future<Output = Result<(), CheckpointError>> + Send;

    /// The generation of `lease` and when its holder last took or renewed
    /// it, by the holder's clock (`None`: never taken). A strongly
    /// consistent read.
    fn lease_state(
        &self,
        lease: &LeaseName,
    ) -> impl Future<Output = Result<Option<crate::LeaseState>, CheckpointError>> + Send;
}

/// Source checkpoints: where each source resumes.
pub trait SourceStore: Send + Sync {
    /// The checkpoint of `source`, if one was ever saved.
    fn load_source(
        &self,
        source: &str,
    ) -> impl Future<Output = Result<Option<SourceCheckpoint>, CheckpointError>> + Send;

    /// Replaces the checkpoint of `source` with `checkpoint` if the lease
    /// [`LeaseName::source`]`(source)` still has `generation`; otherwise
    /// [`CheckpointError::Fenced`] and nothing is written.
    fn save_source(
        &self,
        source: &str,
        generation: u64,
        checkpoint: &SourceCheckpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}

/// Partition checkpoints and their two-phase batches, and what a commit
/// records: the manifest of curated files and the processing status.
pub trait BatchStore: Send + Sync {
    /// The checkpoint of `partition`, if any.
    fn load_partition(
        &self,
        partition: &PartitionRef,
    ) -> impl Future<Output = Result<Option<PartitionCheckpoint>, CheckpointError>> + Send;

    /// Records the intent to write one batch of `partition`, before any file
    /// is written, and returns the new checkpoint: `pending = intent`,
    /// `generation = fence.generation`, version one higher (1 for a new
    /// checkpoint), `next_offset` unchanged (`intent.first_offset` for a new
    /// checkpoint).
    ///
    /// Written only if all of these hold, else [`CheckpointError::Fenced`]
    /// and nothing is written:
    /// * the lease `fence.lease` still has `fence.generation`;
    /// * the checkpoint is at `expected_version`, the version the writer last
    ///   read (`None`: no checkpoint exists);
    /// * no *different* batch is pending (re-beginning the pending intent is
    ///   allowed, e.g. to take it over with a new generation);
    /// * the batch does not start before `next_offset` (gaps are allowed);
    /// * `0 <= intent.first_offset <= intent.last_offset`, the object key is
    ///   not empty, and `partition.partition >= 0`.
    fn begin_batch(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: Option<u64>,
        intent: &BatchIntent,
    ) -> impl Future<Output = Result<PartitionCheckpoint, CheckpointError>> + Send;

    /// Commits the pending batch of `partition` after its file is durable,
    /// in one atomic write: `next_offset = last_offset + 1`, pending cleared,
    /// version one higher, `generation = fence.generation`; the manifest
    /// entry of `commit.table` added; the status of the table and of its
    /// source database updated (counters added, `max_commit_ts_ms` and
    /// `max_position` set to this batch's). Returns the new checkpoint.
    ///
    /// Written only if all of these hold, else [`CheckpointError::Fenced`]
    /// and nothing is written:
    /// * the lease `fence.lease` still has `fence.generation`;
    /// * the checkpoint exists and is at `expected_version`;
    /// * the pending batch equals `commit.intent` (offsets and object key);
    /// * the manifest of `commit.table` lists no batch of this topic-partition
    ///   starting at `commit.intent.first_offset`;
    /// * the intent and partition are valid as for [`Self::begin_batch`].
    fn commit_batch(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: u64,
        commit: &BatchCommit,
    ) -> impl Future<Output = Result<PartitionCheckpoint, CheckpointError>> + Send;

    /// The operator's recovery of a partition whose log lost records (the
    /// curator stopped it): moves its `next_offset` forward to `next_offset`,
    /// version one higher, `generation = fence.generation`, the high-water
    /// mark kept. Returns the new checkpoint. The records in between are
    /// never curated: take a snapshot of the affected tables first.
    ///
    /// Written only if all of these hold, else [`CheckpointError::Fenced`]
    /// and nothing is written:
    /// * the lease `fence.lease` still has `fence.generation` (the operator
    ///   took it, so a running curator of that lease is fenced);
    /// * the checkpoint exists and is at `expected_version`, with no batch
    ///   pending;
    /// * `next_offset` is greater than the checkpoint's (forward only).
    fn move_partition(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: u64,
        next_offset: i64,
    ) -> impl Future<Output = Result<PartitionCheckpoint, CheckpointError>> + Send;

    /// Manifest of a table's curated files, ordered by (topic, partition,
    /// first_offset), every page read.
    fn manifest(&self, table: &TableId) -> impl Future<Output = Result<Vec<ManifestEntry>, CheckpointError>> + Send;

    /// Processing status rows of `tenant` (exactly that tenant, not others
    /// whose name starts with it), or of every tenant with `None`; ordered by
    /// (tenant, source, database, table), the database row `*` first.
    fn status(&self, tenant: Option<&str>) -> impl Future<Output = Result<Vec<TableStatus>, CheckpointError>> + Send;
}

/// Snapshot (full load) requests and progress, per source and table.
pub trait SnapshotStore: Send + Sync {
    /// Requests a snapshot of `table` from `source`. With `if_absent`, only
    /// when the table never had one (a table seen for the first time);
    /// otherwise a new request (its number one higher, state `requested`,
    /// no progress) replaces any earlier one, finished or not. Racing
    /// requests never take the same number. Returns whether a request was
    /// recorded.
    fn request_snapshot(
        &self,
        source: &str,
        table: &TableId,
        if_absent: bool,
    ) -> impl Future<Output = Result<bool, CheckpointError>> + Send;

    /// Every snapshot of `source`, any state, ordered by table.
    fn snapshots(&self, source: &str) -> impl Future<Output = Result<Vec<SnapshotProgress>, CheckpointError>> + Send;

    /// Saves progress if the lease [`LeaseName::source`]`(source)` still has
    /// `generation` (else [`CheckpointError::Fenced`]) and the table's
    /// current request is still `progress.request`; returns `false` (nothing
    /// written) when a newer request superseded it.
    fn save_snapshot(
        &self,
        source: &str,
        generation: u64,
        progress: &SnapshotProgress,
    ) -> impl Future<Output = Result<bool, CheckpointError>> + Send;
}

/// Schema history: every shape of every table, numbered.
pub trait SchemaStore: Send + Sync {
    /// Registers a shape of `table` in its schema history and returns its
    /// version: the existing entry's when one since the table's last drop has
    /// the same fingerprint (a drop: when the latest entry is a drop), else a
    /// new entry numbered one past the latest, with its `changes` computed
    /// against the latest. Racing registrars never take the same number
    /// (conditional create) and agree on the version of a shape.
    fn register_schema(
        &self,
        table: &TableId,
        candidate: &SchemaVersion,
    ) -> impl Future<Output = Result<u32, CheckpointError>> + Send;

    /// The schema history of `table`, ordered by version.
    fn schema_history(
        &self,
        table: &TableId,
    ) -> impl Future<Output = Result<Vec<SchemaVersion>, CheckpointError>> + Send;
}

/// How far each warehouse sink has loaded each table.
pub trait SinkStore: Send + Sync {
    /// The checkpoint of `sink` for `table`, if the sink loaded anything of it.
    fn load_sink(
        &self,
        sink: &str,
        table: &TableId,
    ) -> impl Future<Output = Result<Option<SinkCheckpoint>, CheckpointError>> + Send;

    /// Every table's checkpoint of `sink`, ordered by table.
    fn sinks(&self, sink: &str) -> impl Future<Output = Result<Vec<SinkCheckpoint>, CheckpointError>> + Send;

    /// Replaces the checkpoint of `sink` for `checkpoint.table` if the lease
    /// [`LeaseName::sink`]`(sink)` still has `generation`; otherwise
    /// [`CheckpointError::Fenced`] and nothing is written.
    fn save_sink(
        &self,
        sink: &str,
        generation: u64,
        checkpoint: &SinkCheckpoint,
    ) -> impl Future<Output = Result<(), CheckpointError>> + Send;
}
