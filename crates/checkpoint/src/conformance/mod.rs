//! Conformance suite for checkpoint stores (feature `conformance`), one
//! module per capability trait:
//!
//! | module | store bound |
//! |---|---|
//! | [`leases`] | [`LeaseStore`] |
//! | [`sources`] | [`LeaseStore`] + [`SourceStore`](crate::SourceStore) |
//! | [`batches`] | [`LeaseStore`] + [`BatchStore`](crate::BatchStore) |
//! | [`snapshots`] | [`LeaseStore`] + [`SnapshotStore`](crate::SnapshotStore) |
//! | [`schemas`] | [`SchemaStore`](crate::SchemaStore) |
//! | [`sinks`] | [`LeaseStore`] + [`SinkStore`](crate::SinkStore) |
//!
//! Each module has a `run` running all its checks, and every check is public
//! on its own. Every function takes the store and a `prefix` that makes all
//! its names (leases, sources, groups, topics, tenants) unique, so suites can
//! run concurrently against one shared backend. [`run_all`] picks a fresh
//! prefix and runs every module. The functions panic on a violation, like
//! test code.
//!
//! Another crate enables the feature in its dev-dependencies
//! (`lablake-checkpoint = { workspace = true, features = ["conformance"] }`)
//! and calls it from a test:
//!
//! ```no_run
//! # async fn my_store_conforms() {
//! let store = lablake_checkpoint::MemoryStore::new();
//! lablake_checkpoint::conformance::run_all(&store).await;
//! // or one capability at a time:
//! let prefix = lablake_checkpoint::conformance::unique_prefix();
//! lablake_checkpoint::conformance::batches::run(&store, &prefix).await;
//! # }
//! ```

pub mod batches;
pub mod generations;
pub mod leases;
pub mod schemas;
pub mod sinks;
pub mod snapshots;
pub mod sources;

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lablake_model::TableId;

use crate::{
    BatchCommit, BatchIntent, CheckpointError, CheckpointStore, Fence, LeaseName, LeaseStore, ManifestEntry,
    PartitionCheckpoint, PartitionRef, TableStatus,
};

/// Runs every conformance check of every capability under a fresh
/// [`unique_prefix`].
pub async fn run_all<S: CheckpointStore>(store: &S) {
    let p = unique_prefix();
    leases::run(store, &format!("{p}-lease")).await;
    sources::run(store, &format!("{p}-src")).await;
    batches::run(store, &format!("{p}-batch")).await;
    snapshots::run(store, &format!("{p}-snap")).await;
    schemas::run(store, &format!("{p}-schema")).await;
    sinks::run(store, &format!("{p}-sink")).await;
    generations::run(store, &format!("{p}-gen")).await;
}

/// A prefix unique to this process and call: lowercase, usable in tenant names.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("c{:x}{:x}{n}", nanos & 0xffff_ffff_ffff, std::process::id())
}

// ---- helpers ----------------------------------------------------------------

/// The names a batch check uses, all under its prefix: a consumer group, one
/// topic, the curation lease of shard 0 of the prefix, a source and a tenant.
struct Names {
    prefix: String,
    group: String,
    topic: String,
    lease: LeaseName,
    source: String,
    tenant: String,
}

impl Names {
    /// The topic is `<prefix><topic_suffix>`.
    fn new(prefix: &str, topic_suffix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
            group: format!("{prefix}-g"),
            topic: format!("{prefix}{topic_suffix}"),
            lease: LeaseName::curator(prefix, "0"),
            source: format!("{prefix}-src"),
            tenant: format!("{prefix}-t"),
        }
    }

    /// Partition `partition` of the topic, for the group.
    fn at(&self, partition: i32) -> PartitionRef {
        self.on(&self.topic, partition)
    }

    /// Partition `partition` of another topic, for the group.
    fn on(&self, topic: &str, partition: i32) -> PartitionRef {
        PartitionRef::new(&self.group, topic, partition)
    }

    /// A table of the tenant.
    fn table(&self, database: &str, table: &str) -> TableId {
        TableId::new(&self.tenant, database, table)
    }

    /// An object key under the prefix.
    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// Acquires the curation lease: the fence of its new generation.
    async fn acquire<S: LeaseStore>(&self, store: &S) -> Fence {
        let generation = store.acquire_lease(&self.lease).await.expect("acquire the curation lease");
        Fence::new(self.lease.clone(), generation)
    }
}

#[track_caller]
fn expect_fenced<T: Debug>(result: Result<T, CheckpointError>, what: &str) {
    match result {
        Err(CheckpointError::Fenced(_)) => {}
        other => panic!("{what}: expected CheckpointError::Fenced, got {other:?}"),
    }
}

#[track_caller]
fn one_winner<'a>(
    r1: Result<PartitionCheckpoint, CheckpointError>,
    r2: Result<PartitionCheckpoint, CheckpointError>,
    i1: &'a BatchIntent,
    i2: &'a BatchIntent,
    what: &str,
) -> (PartitionCheckpoint, &'a BatchIntent) {
    match (r1, r2) {
        (Ok(cp), Err(CheckpointError::Fenced(_))) => (cp, i1),
        (Err(CheckpointError::Fenced(_)), Ok(cp)) => (cp, i2),
        (r1, r2) => panic!("{what}: expected exactly one success and one Fenced, got {r1:?} and {r2:?}"),
    }
}

#[track_caller]
fn assert_status(s: &TableStatus, tenant: &str, rows: u64, files: u64, dead_lettered: u64) {
    assert_eq!(s.tenant, tenant);
    assert_eq!(
        (s.rows, s.files, s.dead_lettered),
        (rows, files, dead_lettered),
        "status of {}/{}",
        s.database,
        s.table
    );
}

fn intent(first_offset: i64, last_offset: i64, object_key: &str) -> BatchIntent {
    BatchIntent { first_offset, last_offset, object_key: object_key.into() }
}

fn batch_commit(intent: &BatchIntent, table: &TableId, source: &str, rows: u64) -> BatchCommit {
    BatchCommit {
        intent: intent.clone(),
        table: table.clone(),
        source: source.into(),
        rows,
        bytes: rows * 100 + 7,
        dead_lettered: 0,
        max_commit_ts_ms: 1_700_000_000_000,
        max_position: String::new(),
        high_water: None,
    }
}

fn manifest_entry(topic: &str, partition: i32, c: &BatchCommit) -> ManifestEntry {
    ManifestEntry {
        topic: topic.into(),
        partition,
        first_offset: c.intent.first_offset,
        last_offset: c.intent.last_offset,
        object_key: c.intent.object_key.clone(),
        rows: c.rows,
        bytes: c.bytes,
    }
}
