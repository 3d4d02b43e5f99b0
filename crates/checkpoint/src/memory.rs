//! In-memory [`CheckpointStore`] for tests and single-process runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lablake_model::TableId;

use crate::rules::{self, ALL_TABLES};
use crate::store::{BatchStore, GenerationStore, LeaseStore, SchemaStore, SinkStore, SnapshotStore, SourceStore};
use crate::{
    BatchCommit, BatchIntent, CheckpointError, Fence, Generations, LeaseName, ManifestEntry, PartitionCheckpoint,
    PartitionRef, SchemaVersion, SinkCheckpoint, SnapshotProgress, SourceCheckpoint, TableStatus,
};

/// A [`crate::CheckpointStore`] held in process memory. Cloning shares the
/// state.
///
/// It makes the same decisions as [`crate::DynamoStore`] (both pass the
/// conformance suite); every call runs under one lock, so each write is
/// atomic. Nothing survives the process.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<State>>,
    /// The generation of curated data this handle reads and writes.
    data_gen: u32,
}

/// `(tenant, source, database, table)`; table `*` for the database aggregate.
type StatusKey = (u32, String, String, String, String);

/// A table's manifest entries by `(topic, partition, first offset)`.
type Manifest = BTreeMap<(String, i32, i64), ManifestEntry>;

#[derive(Debug, Default)]
struct State {
    leases: HashMap<LeaseName, u64>,
    /// When each lease was last taken or renewed (ms).
    renewed: HashMap<LeaseName, i64>,
    sources: HashMap<String, SourceCheckpoint>,
    partitions: HashMap<PartitionRef, PartitionCheckpoint>,
    manifests: HashMap<(u32, TableId), Manifest>,
    status: BTreeMap<StatusKey, TableStatus>,
    snapshots: BTreeMap<(String, TableId), SnapshotProgress>,
    schemas: HashMap<TableId, Vec<SchemaVersion>>,
    sinks: BTreeMap<(u32, String, TableId), SinkCheckpoint>,
    generations: HashMap<String, Generations>,
}

impl State {
    fn check_fence(&self, fence: &Fence) -> Result<(), CheckpointError> {
        if self.leases.get(&fence.lease) == Some(&fence.generation) { Ok(()) } else { Err(rules::lease_fenced(fence)) }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every call validates before it mutates, so a panic while the lock is
        // held cannot leave half a write behind: the state stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LeaseStore for MemoryStore {
    async fn acquire_lease(&self, lease: &LeaseName) -> Result<u64, CheckpointError> {
        let mut state = self.lock();
        let generation = state.leases.entry(lease.clone()).or_insert(0);
        *generation += 1;
        let generation = *generation;
        state.renewed.insert(lease.clone(), rules::now_ms());
        Ok(generation)
    }

    async fn reacquire_lease(&self, lease: &LeaseName, held: u64) -> Result<u64, CheckpointError> {
        let mut state = self.lock();
        let generation = state.leases.entry(lease.clone()).or_insert(0);
        if *generation != held {
            return Err(crate::rules::taken_over(lease, held, *generation));
        }
        *generation += 1;
        let generation = *generation;
        state.renewed.insert(lease.clone(), rules::now_ms());
        Ok(generation)
    }

    async fn renew_lease(&self, lease: &LeaseName, held: u64) -> Result<(), CheckpointError> {
        let mut state = self.lock();
        let now = state.leases.get(lease).copied().unwrap_or(0);
        if now != held {
            return Err(crate::rules::superseded(lease, held, now));
        }
        state.renewed.insert(lease.clone(), rules::now_ms());
        Ok(())
    }

    async fn lease_state(&self, lease: &LeaseName) -> Result<Option<crate::LeaseState>, CheckpointError> {
        let state = self.lock();
        Ok(state.leases.get(lease).map(|&generation| crate::LeaseState {
            generation,
            renewed_ms: state.renewed.get(lease).copied().unwrap_or(0),
        }))
    }
}

impl SourceStore for MemoryStore {
    async fn load_source(&self, source: &str) -> Result<Option<SourceCheckpoint>, CheckpointError> {
        Ok(self.lock().sources.get(source).cloned())
    }

    async fn save_source(
        &self,
        source: &str,
        generation: u64,
        checkpoint: &SourceCheckpoint,
    ) -> Result<(), CheckpointError> {
        let mut state = self.lock();
        state.check_fence(&rules::source_fence(source, generation))?;
        state.sources.insert(source.to_owned(), checkpoint.clone());
        Ok(())
    }
}

impl BatchStore for MemoryStore {
    async fn load_partition(&self, partition: &PartitionRef) -> Result<Option<PartitionCheckpoint>, CheckpointError> {
        Ok(self.lock().partitions.get(partition).cloned())
    }

    async fn begin_batch(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: Option<u64>,
        intent: &BatchIntent,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(partition);
        rules::check_partition_arg(&label, partition.partition)?;
        let mut state = self.lock();
        state.check_fence(fence)?;
        let next =
            rules::plan_begin(&label, state.partitions.get(partition), expected_version, fence.generation, intent)?;
        state.partitions.insert(partition.clone(), next.clone());
        Ok(next)
    }

    async fn commit_batch(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: u64,
        commit: &BatchCommit,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(partition);
        rules::check_partition_arg(&label, partition.partition)?;
        let mut state = self.lock();
        state.check_fence(fence)?;
        let next =
            rules::plan_commit(&label, state.partitions.get(partition), expected_version, fence.generation, commit)?;

        let entry_key = (partition.topic.clone(), partition.partition, commit.intent.first_offset);
        let mkey = (self.data_gen, commit.table.clone());
        if state.manifests.get(&mkey).is_some_and(|m| m.contains_key(&entry_key)) {
            return Err(rules::already_listed(&commit.table, &label, commit.intent.first_offset));
        }

        // All checks passed: apply every part of the commit.
        let now = rules::now_ms();
        state.partitions.insert(partition.clone(), next.clone());
        state.manifests.entry(mkey).or_default().insert(
            entry_key,
            ManifestEntry {
                topic: partition.topic.clone(),
                partition: partition.partition,
                first_offset: commit.intent.first_offset,
                last_offset: commit.intent.last_offset,
                object_key: commit.intent.object_key.clone(),
                rows: commit.rows,
                bytes: commit.bytes,
            },
        );
        for table in [&*commit.table.table, ALL_TABLES] {
            let skey = (
                self.data_gen,
                commit.table.tenant.to_string(),
                commit.source.clone(),
                commit.table.database.to_string(),
                table.to_owned(),
            );
            let current = state.status.remove(&skey);
            let updated = rules::apply_status(current, commit, table, now);
            state.status.insert(skey, updated);
        }
        Ok(next)
    }

    async fn move_partition(
        &self,
        partition: &PartitionRef,
        fence: &Fence,
        expected_version: u64,
        next_offset: i64,
    ) -> Result<PartitionCheckpoint, CheckpointError> {
        let label = rules::partition_label(partition);
        let mut state = self.lock();
        state.check_fence(fence)?;
        let next =
            rules::plan_move(&label, state.partitions.get(partition), expected_version, fence.generation, next_offset)?;
        state.partitions.insert(partition.clone(), next.clone());
        Ok(next)
    }

    async fn manifest(&self, table: &TableId) -> Result<Vec<ManifestEntry>, CheckpointError> {
        let key = (self.data_gen, table.clone());
        Ok(self.lock().manifests.get(&key).map(|m| m.values().cloned().collect()).unwrap_or_default())
    }

    async fn status(&self, tenant: Option<&str>) -> Result<Vec<TableStatus>, CheckpointError> {
        let mut rows: Vec<TableStatus> = self
            .lock()
            .status
            .iter()
            .filter(|(k, s)| k.0 == self.data_gen && tenant.is_none_or(|t| s.tenant == t))
            .map(|(_, s)| s.clone())
            .collect();
        rules::sort_status(&mut rows);
        Ok(rows)
    }
}

impl SnapshotStore for MemoryStore {
    async fn request_snapshot(&self, source: &str, table: &TableId, if_absent: bool) -> Result<bool, CheckpointError> {
        let mut state = self.lock();
        let key = (source.to_owned(), table.clone());
        let previous = state.snapshots.get(&key).map(|p| p.request);
        if if_absent && previous.is_some() {
            return Ok(false);
        }
        state.snapshots.insert(key, SnapshotProgress::requested(table, previous.unwrap_or(0) + 1, rules::now_ms()));
        Ok(true)
    }

    async fn snapshots(&self, source: &str) -> Result<Vec<SnapshotProgress>, CheckpointError> {
        Ok(self.lock().snapshots.iter().filter(|((s, _), _)| s == source).map(|(_, p)| p.clone()).collect())
    }

    async fn save_snapshot(
        &self,
        source: &str,
        generation: u64,
        progress: &SnapshotProgress,
    ) -> Result<bool, CheckpointError> {
        let mut state = self.lock();
        state.check_fence(&rules::source_fence(source, generation))?;
        let key = (source.to_owned(), progress.table.clone());
        if state.snapshots.get(&key).map(|p| p.request) != Some(progress.request) {
            return Ok(false);
        }
        state.snapshots.insert(key, progress.clone());
        Ok(true)
    }
}

impl SchemaStore for MemoryStore {
    async fn register_schema(&self, table: &TableId, candidate: &SchemaVersion) -> Result<u32, CheckpointError> {
        let mut state = self.lock();
        let history = state.schemas.entry(table.clone()).or_default();
        Ok(match crate::schema::register(history, candidate) {
            crate::schema::Registration::Existing(v) => v,
            crate::schema::Registration::Append(entry) => {
                let v = entry.version;
                history.push(entry);
                v
            }
        })
    }

    async fn schema_history(&self, table: &TableId) -> Result<Vec<SchemaVersion>, CheckpointError> {
        Ok(self.lock().schemas.get(table).cloned().unwrap_or_default())
    }
}

impl SinkStore for MemoryStore {
    async fn load_sink(&self, sink: &str, table: &TableId) -> Result<Option<SinkCheckpoint>, CheckpointError> {
        Ok(self.lock().sinks.get(&(self.data_gen, sink.to_owned(), table.clone())).cloned())
    }

    async fn sinks(&self, sink: &str) -> Result<Vec<SinkCheckpoint>, CheckpointError> {
        Ok(self
            .lock()
            .sinks
            .iter()
            .filter(|((g, s, _), _)| *g == self.data_gen && s == sink)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn save_sink(&self, sink: &str, generation: u64, checkpoint: &SinkCheckpoint) -> Result<(), CheckpointError> {
        let mut state = self.lock();
        state.check_fence(&rules::sink_fence(sink, generation))?;
        state.sinks.insert((self.data_gen, sink.to_owned(), checkpoint.table.clone()), checkpoint.clone());
        Ok(())
    }
}

impl GenerationStore for MemoryStore {
    fn in_generation(&self, data_gen: u32) -> Self {
        MemoryStore { inner: self.inner.clone(), data_gen }
    }

    fn data_generation(&self) -> u32 {
        self.data_gen
    }

    async fn load_generations(&self, tenant: &str) -> Result<Generations, CheckpointError> {
        Ok(self.lock().generations.get(tenant).cloned().unwrap_or_else(|| Generations::initial(tenant)))
    }

    async fn save_generations(&self, g: &Generations) -> Result<u64, CheckpointError> {
        let mut state = self.lock();
        let stored = state.generations.get(&g.tenant).map_or(0, |s| s.version);
        if stored != g.version {
            return Err(CheckpointError::Fenced(format!(
                "generations of tenant `{}`: changed by another writer since version {}",
                g.tenant, g.version
            )));
        }
        let mut next = g.clone();
        next.version = g.version + 1;
        state.generations.insert(g.tenant.clone(), next);
        Ok(g.version + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_conformance() {
        crate::conformance::run_all(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn clones_share_state() {
        let a = MemoryStore::new();
        let b = a.clone();
        let lease = LeaseName::source("x");
        assert_eq!(a.acquire_lease(&lease).await.expect("lease"), 1);
        assert_eq!(b.acquire_lease(&lease).await.expect("lease"), 2);
    }
}
