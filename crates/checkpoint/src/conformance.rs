//! Conformance suite for [`CheckpointStore`] implementations.
//!
//! Every function takes the store and a `prefix` that makes all its names
//! (leases, sources, groups, topics, tenants) unique, so suites can run
//! concurrently against one shared backend. [`run_all`] picks a fresh prefix
//! and runs everything. The functions panic on a violation, like test code.
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_store_conforms() {
//!     lablake_checkpoint::conformance::run_all(&MyStore::new()).await;
//! }
//! ```

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lablake_model::TableId;

use crate::{
    BatchCommit, BatchIntent, CheckpointError, CheckpointStore, ManifestEntry, PartitionCheckpoint, SnapshotState,
    SourceCheckpoint, TableStatus,
};

/// Runs every conformance check under a fresh [`unique_prefix`].
pub async fn run_all<S: CheckpointStore>(store: &S) {
    let p = unique_prefix();
    lease_generations_fence_old_holders(store, &format!("{p}-lease")).await;
    source_checkpoint_round_trip(store, &format!("{p}-src")).await;
    commit_advances_partition_manifest_and_status(store, &format!("{p}-commit")).await;
    commit_requires_the_pending_batch(store, &format!("{p}-pending")).await;
    stale_versions_are_fenced(store, &format!("{p}-stale")).await;
    begin_guards_committed_offsets(store, &format!("{p}-guard")).await;
    invalid_batches_are_rejected(store, &format!("{p}-invalid")).await;
    racing_writers_with_one_generation(store, &format!("{p}-race")).await;
    status_is_filtered_by_tenant(store, &format!("{p}-status")).await;
    manifest_is_ordered_and_per_table(store, &format!("{p}-manifest")).await;
    snapshot_requests_progress_and_supersede(store, &format!("{p}-snap")).await;
    schema_history_numbers_each_shape_once(store, &format!("{p}-schema")).await;
    sink_checkpoints_round_trip_and_are_fenced(store, &format!("{p}-sink")).await;
}

/// A prefix unique to this process and call: lowercase, usable in tenant names.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("c{:x}{:x}{n}", nanos & 0xffff_ffff_ffff, std::process::id())
}

/// Lease generations increase; the previous holder is fenced from source
/// checkpoints and from both batch phases; an unknown lease fences everyone.
pub async fn lease_generations_fence_old_holders<S: CheckpointStore>(store: &S, prefix: &str) {
    let source = format!("{prefix}-mysql");
    let source_lease = format!("source#{source}");
    let g1 = store.acquire_lease(&source_lease).await.expect("acquire lease");
    assert!(g1 >= 1, "first generation must be at least 1, got {g1}");
    let g2 = store.acquire_lease(&source_lease).await.expect("acquire lease again");
    assert!(g2 > g1, "generations must increase: {g1} then {g2}");

    let cp = source_checkpoint("binlog.000001", 4, None);
    expect_fenced(store.save_source(&source, g1, &cp).await, "save_source with an old generation");
    store.save_source(&source, g2, &cp).await.expect("save_source with the current generation");
    expect_fenced(store.save_source(&source, g2 + 1, &cp).await, "save_source with a future generation");
    let never = format!("{prefix}-never-acquired");
    expect_fenced(store.save_source(&never, 1, &cp).await, "save_source without a lease");
    assert_eq!(store.load_source(&never).await.expect("load"), None);

    let (group, topic, lease) = (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"));
    let old = store.acquire_lease(&lease).await.expect("acquire");
    let new = store.acquire_lease(&lease).await.expect("acquire");
    let a = intent(0, 9, &format!("{prefix}/a.parquet"));
    expect_fenced(
        store.begin_batch(&group, &lease, old, &topic, 0, None, &a).await,
        "begin_batch with an old generation",
    );
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), None, "fenced begin wrote");
    let begun =
        store.begin_batch(&group, &lease, new, &topic, 0, None, &a).await.expect("begin with current generation");
    assert_eq!(begun.generation, new);
    let commit = batch_commit(&a, &table(&format!("{prefix}-t"), "db", "tbl"), &source, 10);
    expect_fenced(
        store.commit_batch(&group, &lease, old, &topic, 0, begun.version, &commit).await,
        "commit_batch with an old generation",
    );
    assert_eq!(
        store.load_partition(&group, &topic, 0).await.expect("load"),
        Some(begun.clone()),
        "fenced commit wrote"
    );
    let newest = store.acquire_lease(&lease).await.expect("acquire");
    expect_fenced(
        store.commit_batch(&group, &lease, new, &topic, 0, begun.version, &commit).await,
        "commit_batch after the lease moved on",
    );
    assert!(store.manifest(&commit.table).await.expect("manifest").is_empty(), "fenced commit listed a file");
    let done = store.commit_batch(&group, &lease, newest, &topic, 0, begun.version, &commit).await.expect("commit");
    assert_eq!(done.generation, newest);
}

/// A saved source checkpoint loads back unchanged, and a later save replaces it.
pub async fn source_checkpoint_round_trip<S: CheckpointStore>(store: &S, prefix: &str) {
    let source = format!("{prefix}-mysql");
    assert_eq!(store.load_source(&source).await.expect("load"), None);
    let g = store.acquire_lease(&format!("source#{source}")).await.expect("lease");
    let first = source_checkpoint("binlog.000007", 1234, Some("0-1-42"));
    store.save_source(&source, g, &first).await.expect("save");
    assert_eq!(store.load_source(&source).await.expect("load"), Some(first));
    let second = SourceCheckpoint { commit_ts_ms: -5, ..source_checkpoint("binlog.000008", u64::MAX, None) };
    store.save_source(&source, g, &second).await.expect("save again");
    assert_eq!(store.load_source(&source).await.expect("load"), Some(second), "gtid must be cleared too");
}

/// begin → commit: `next_offset` moves past the batch, pending clears, the
/// version increases, the file is listed, and the status of the table and of
/// its source database count it.
pub async fn commit_advances_partition_manifest_and_status<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.changes"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let tenant = format!("{prefix}-t");
    let orders = table(&tenant, "shop", "orders");
    let items = table(&tenant, "shop", "items");
    let g = store.acquire_lease(&lease).await.expect("lease");
    assert_eq!(store.load_partition(&group, &topic, 3).await.expect("load"), None);

    let a = intent(100, 149, &format!("{prefix}/orders/a.parquet"));
    let begun = store.begin_batch(&group, &lease, g, &topic, 3, None, &a).await.expect("begin");
    assert_eq!(begun, PartitionCheckpoint { next_offset: 100, pending: Some(a.clone()), generation: g, version: 1 });
    assert_eq!(store.load_partition(&group, &topic, 3).await.expect("load"), Some(begun.clone()));
    assert!(store.manifest(&orders).await.expect("manifest").is_empty(), "begin must not list the file");

    let mut c1 = batch_commit(&a, &orders, &source, 48);
    c1.dead_lettered = 2;
    c1.max_commit_ts_ms = 1_700_000_000_000;
    c1.max_position = "0000000001-0000000100".into();
    let done = store.commit_batch(&group, &lease, g, &topic, 3, begun.version, &c1).await.expect("commit");
    assert_eq!(done, PartitionCheckpoint { next_offset: 150, pending: None, generation: g, version: 2 });
    assert_eq!(store.load_partition(&group, &topic, 3).await.expect("load"), Some(done.clone()));
    assert_eq!(store.manifest(&orders).await.expect("manifest"), vec![manifest_entry(&topic, 3, &c1)]);

    // Another partition checkpoint of the same group is independent.
    assert_eq!(store.load_partition(&group, &topic, 4).await.expect("load"), None);

    // A second batch of the same table and one of another table in the same database.
    let b = intent(150, 199, &format!("{prefix}/orders/b.parquet"));
    let begun = store.begin_batch(&group, &lease, g, &topic, 3, Some(done.version), &b).await.expect("begin 2");
    assert_eq!(begun.next_offset, 150);
    let mut c2 = batch_commit(&b, &orders, &source, 50);
    c2.max_commit_ts_ms = 1_700_000_000_500;
    c2.max_position = "0000000001-0000000200".into();
    let done = store.commit_batch(&group, &lease, g, &topic, 3, begun.version, &c2).await.expect("commit 2");
    assert_eq!(done.next_offset, 200);
    assert_eq!(done.version, 4);
    let i = intent(0, 9, &format!("{prefix}/items/a.parquet"));
    let mut c3 = batch_commit(&i, &items, &source, 7);
    c3.dead_lettered = 3;
    c3.max_commit_ts_ms = 1_700_000_000_900;
    c3.max_position = "0000000001-0000000300".into();
    let begun = store.begin_batch(&group, &lease, g, &topic, 5, None, &i).await.expect("begin items");
    store.commit_batch(&group, &lease, g, &topic, 5, begun.version, &c3).await.expect("commit items");

    assert_eq!(
        store.manifest(&orders).await.expect("manifest"),
        vec![manifest_entry(&topic, 3, &c1), manifest_entry(&topic, 3, &c2)]
    );
    let rows = store.status(Some(&tenant)).await.expect("status");
    let keys: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (r.source.as_str(), r.database.as_str(), r.table.as_str())).collect();
    assert_eq!(
        keys,
        vec![(source.as_str(), "shop", "*"), (source.as_str(), "shop", "items"), (source.as_str(), "shop", "orders")],
        "status rows: the database aggregate and one row per table, ordered"
    );
    let (db, it, or) = (&rows[0], &rows[1], &rows[2]);
    assert_status(or, &tenant, 98, 2, 2);
    assert_eq!(or.max_commit_ts_ms, 1_700_000_000_500);
    assert_eq!(or.max_position, "0000000001-0000000200");
    assert_status(it, &tenant, 7, 1, 3);
    assert_status(db, &tenant, 105, 3, 5);
    assert_eq!(db.max_commit_ts_ms, 1_700_000_000_900, "aggregate carries the latest committed batch");
    assert_eq!(db.max_position, "0000000001-0000000300");
    assert!(db.updated_at_ms > 0 && or.updated_at_ms > 0);
}

/// A commit is accepted only for the batch that is pending; a rejected commit
/// changes nothing.
pub async fn commit_requires_the_pending_batch<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let t = table(&format!("{prefix}-t"), "db", "tbl");
    let g = store.acquire_lease(&lease).await.expect("lease");
    let a = intent(0, 9, &format!("{prefix}/a.parquet"));

    // Nothing at all yet.
    expect_fenced(
        store.commit_batch(&group, &lease, g, &topic, 0, 0, &batch_commit(&a, &t, &source, 10)).await,
        "commit without any checkpoint",
    );
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), None);

    let begun = store.begin_batch(&group, &lease, g, &topic, 0, None, &a).await.expect("begin");
    for (other, what) in [
        (intent(0, 9, &format!("{prefix}/other.parquet")), "another object key"),
        (intent(0, 8, &format!("{prefix}/a.parquet")), "another last offset"),
        (intent(1, 9, &format!("{prefix}/a.parquet")), "another first offset"),
    ] {
        expect_fenced(
            store
                .commit_batch(&group, &lease, g, &topic, 0, begun.version, &batch_commit(&other, &t, &source, 10))
                .await,
            &format!("commit of a batch with {what} than the pending one"),
        );
    }
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), Some(begun.clone()));
    assert!(store.manifest(&t).await.expect("manifest").is_empty());
    assert!(store.status(Some(&t.tenant)).await.expect("status").is_empty());

    // The pending batch commits; committing it again finds nothing pending.
    let done = store
        .commit_batch(&group, &lease, g, &topic, 0, begun.version, &batch_commit(&a, &t, &source, 10))
        .await
        .expect("commit");
    expect_fenced(
        store.commit_batch(&group, &lease, g, &topic, 0, done.version, &batch_commit(&a, &t, &source, 10)).await,
        "second commit of the same batch",
    );
    assert_eq!(store.manifest(&t).await.expect("manifest").len(), 1);
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), Some(done));
}

/// Writers that read an older (or newer, or no) version are fenced.
pub async fn stale_versions_are_fenced<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let t = table(&format!("{prefix}-t"), "db", "tbl");
    let g = store.acquire_lease(&lease).await.expect("lease");
    let a = intent(0, 9, &format!("{prefix}/a.parquet"));
    expect_fenced(
        store.begin_batch(&group, &lease, g, &topic, 0, Some(1), &a).await,
        "begin expecting a missing version",
    );
    let begun = store.begin_batch(&group, &lease, g, &topic, 0, None, &a).await.expect("begin");
    expect_fenced(store.begin_batch(&group, &lease, g, &topic, 0, None, &a).await, "begin expecting no checkpoint");
    expect_fenced(
        store.begin_batch(&group, &lease, g, &topic, 0, Some(begun.version + 1), &a).await,
        "begin expecting a newer version",
    );
    let c = batch_commit(&a, &t, &source, 10);
    expect_fenced(
        store.commit_batch(&group, &lease, g, &topic, 0, begun.version + 1, &c).await,
        "commit expecting a newer version",
    );
    let done = store.commit_batch(&group, &lease, g, &topic, 0, begun.version, &c).await.expect("commit");
    let b = intent(10, 19, &format!("{prefix}/b.parquet"));
    expect_fenced(
        store.begin_batch(&group, &lease, g, &topic, 0, Some(begun.version), &b).await,
        "begin with the version read before the last commit",
    );
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), Some(done));
}

/// A batch may not start inside committed offsets nor replace a different
/// pending batch; re-beginning the same pending batch (after a restart) is fine.
pub async fn begin_guards_committed_offsets<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let t = table(&format!("{prefix}-t"), "db", "tbl");
    let g = store.acquire_lease(&lease).await.expect("lease");
    let a = intent(0, 9, &format!("{prefix}/a.parquet"));
    let begun = store.begin_batch(&group, &lease, g, &topic, 0, None, &a).await.expect("begin");
    let done = store
        .commit_batch(&group, &lease, g, &topic, 0, begun.version, &batch_commit(&a, &t, &source, 10))
        .await
        .expect("commit");

    let overlap = intent(9, 19, &format!("{prefix}/b.parquet"));
    expect_fenced(
        store.begin_batch(&group, &lease, g, &topic, 0, Some(done.version), &overlap).await,
        "overlapping batch",
    );

    // Offsets may have gaps (compaction, transaction markers).
    let b = intent(12, 19, &format!("{prefix}/b.parquet"));
    let begun = store.begin_batch(&group, &lease, g, &topic, 0, Some(done.version), &b).await.expect("begin after gap");
    assert_eq!(begun.next_offset, 10);

    let other = intent(12, 19, &format!("{prefix}/c.parquet"));
    expect_fenced(
        store.begin_batch(&group, &lease, g, &topic, 0, Some(begun.version), &other).await,
        "begin of a different batch while one is pending",
    );
    // A restarted consumer with a new generation takes the pending batch over.
    let g2 = store.acquire_lease(&lease).await.expect("lease");
    let again = store.begin_batch(&group, &lease, g2, &topic, 0, Some(begun.version), &b).await.expect("re-begin");
    assert_eq!(
        again,
        PartitionCheckpoint { next_offset: 10, pending: Some(b.clone()), generation: g2, version: begun.version + 1 }
    );
    let done = store
        .commit_batch(&group, &lease, g2, &topic, 0, again.version, &batch_commit(&b, &t, &source, 8))
        .await
        .expect("commit");
    assert_eq!(done.next_offset, 20);
    let listed: Vec<(i64, i64)> =
        store.manifest(&t).await.expect("manifest").iter().map(|e| (e.first_offset, e.last_offset)).collect();
    assert_eq!(listed, vec![(0, 9), (12, 19)]);
}

/// Empty or negative ranges, empty object keys and negative partitions are
/// rejected without writing anything.
pub async fn invalid_batches_are_rejected<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let t = table(&format!("{prefix}-t"), "db", "tbl");
    let g = store.acquire_lease(&lease).await.expect("lease");
    let key = format!("{prefix}/a.parquet");
    for (bad, what) in [
        (intent(10, 9, &key), "last before first"),
        (intent(-1, 9, &key), "negative first offset"),
        (intent(0, 9, ""), "empty object key"),
    ] {
        expect_fenced(store.begin_batch(&group, &lease, g, &topic, 0, None, &bad).await, what);
        expect_fenced(
            store.commit_batch(&group, &lease, g, &topic, 0, 1, &batch_commit(&bad, &t, &source, 1)).await,
            what,
        );
    }
    expect_fenced(
        store.begin_batch(&group, &lease, g, &topic, -1, None, &intent(0, 9, &key)).await,
        "negative partition",
    );
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), None);
    assert_eq!(store.load_partition(&group, &topic, -1).await.expect("load"), None);
}

/// Two writers holding the same generation race with the same expected
/// version: exactly one wins, the other is fenced, and the winner's write is
/// what remains — for `begin_batch` on a new and on an existing checkpoint,
/// and for `commit_batch` (the file is listed and counted once).
pub async fn racing_writers_with_one_generation<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let t = table(&format!("{prefix}-t"), "db", "tbl");
    let g = store.acquire_lease(&lease).await.expect("lease");

    // 1. No checkpoint yet.
    let a1 = intent(0, 9, &format!("{prefix}/w1-a.parquet"));
    let a2 = intent(0, 19, &format!("{prefix}/w2-a.parquet"));
    let (r1, r2) = tokio::join!(
        store.begin_batch(&group, &lease, g, &topic, 0, None, &a1),
        store.begin_batch(&group, &lease, g, &topic, 0, None, &a2),
    );
    let (winner, won) = one_winner(r1, r2, &a1, &a2, "racing first begin");
    let stored = store.load_partition(&group, &topic, 0).await.expect("load");
    assert_eq!(stored.as_ref(), Some(&winner), "racing first begin: the winner's write must remain");
    assert_eq!(winner.pending.as_ref(), Some(won));

    let done = store
        .commit_batch(&group, &lease, g, &topic, 0, winner.version, &batch_commit(won, &t, &source, 5))
        .await
        .expect("commit");
    let next = done.next_offset;

    // 2. Existing checkpoint, same expected version.
    let b1 = intent(next, next + 9, &format!("{prefix}/w1-b.parquet"));
    let b2 = intent(next, next + 4, &format!("{prefix}/w2-b.parquet"));
    let (r1, r2) = tokio::join!(
        store.begin_batch(&group, &lease, g, &topic, 0, Some(done.version), &b1),
        store.begin_batch(&group, &lease, g, &topic, 0, Some(done.version), &b2),
    );
    let (winner, won) = one_winner(r1, r2, &b1, &b2, "racing begin");
    assert_eq!(
        store.load_partition(&group, &topic, 0).await.expect("load"),
        Some(winner.clone()),
        "racing begin: the winner's write must remain"
    );

    // 3. Both commit the pending batch.
    let c = batch_commit(won, &t, &source, 5);
    let (r1, r2) = tokio::join!(
        store.commit_batch(&group, &lease, g, &topic, 0, winner.version, &c),
        store.commit_batch(&group, &lease, g, &topic, 0, winner.version, &c),
    );
    let committed = match (r1, r2) {
        (Ok(cp), Err(CheckpointError::Fenced(_))) | (Err(CheckpointError::Fenced(_)), Ok(cp)) => cp,
        (r1, r2) => panic!("racing commit: expected exactly one success and one Fenced, got {r1:?} and {r2:?}"),
    };
    assert_eq!(store.load_partition(&group, &topic, 0).await.expect("load"), Some(committed), "racing commit");
    assert_eq!(
        store.manifest(&t).await.expect("manifest").len(),
        2,
        "after the racing commit the manifest must list both batches once"
    );
    let status = store.status(Some(&t.tenant)).await.expect("status");
    assert!(
        status.len() == 2 && status.iter().all(|s| s.files == 2 && s.rows == 10),
        "after the racing commit the status must count both batches once: {status:?}"
    );
}

/// `status(Some(tenant))` returns that tenant's rows only — also when another
/// tenant's name starts with it; `status(None)` returns every tenant.
pub async fn status_is_filtered_by_tenant<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, topic, lease, source) =
        (format!("{prefix}-g"), format!("{prefix}.t"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let g = store.acquire_lease(&lease).await.expect("lease");
    let tenants = [format!("{prefix}-a"), format!("{prefix}-ab"), format!("{prefix}-b")];
    for (partition, tenant) in (0..).zip(&tenants) {
        let t = table(tenant, "db", "tbl");
        let i = intent(0, 0, &format!("{prefix}/{tenant}.parquet"));
        let begun = store.begin_batch(&group, &lease, g, &topic, partition, None, &i).await.expect("begin");
        store
            .commit_batch(&group, &lease, g, &topic, partition, begun.version, &batch_commit(&i, &t, &source, 1))
            .await
            .expect("commit");
    }
    for tenant in &tenants {
        let rows = store.status(Some(tenant)).await.expect("status");
        assert_eq!(rows.len(), 2, "tenant {tenant}: one table row and one database row, got {rows:?}");
        assert!(rows.iter().all(|r| &r.tenant == tenant), "status of {tenant} returned another tenant: {rows:?}");
    }
    assert!(store.status(Some(&format!("{prefix}-none"))).await.expect("status").is_empty());
    let all: Vec<TableStatus> =
        store.status(None).await.expect("status").into_iter().filter(|r| r.tenant.starts_with(prefix)).collect();
    let seen: Vec<(&str, &str)> = all.iter().map(|r| (r.tenant.as_str(), r.table.as_str())).collect();
    let expected: Vec<(&str, &str)> = tenants.iter().flat_map(|t| [(t.as_str(), "*"), (t.as_str(), "tbl")]).collect();
    assert_eq!(seen, expected, "status(None) must list every tenant, ordered");
}

/// The manifest lists a table's files only, ordered by (topic, partition,
/// first_offset) numerically; names containing `#` do not collide.
pub async fn manifest_is_ordered_and_per_table<S: CheckpointStore>(store: &S, prefix: &str) {
    let (group, lease, source) = (format!("{prefix}-g"), format!("curate#{prefix}#0"), format!("{prefix}-src"));
    let tenant = format!("{prefix}-t");
    let main = table(&tenant, "x#y", "z");
    let twin = table(&tenant, "x", "y#z");
    let other = table(&tenant, "x#y", "other");
    let (ta, tb) = (format!("{prefix}.a"), format!("{prefix}.b"));
    let g = store.acquire_lease(&lease).await.expect("lease");

    // (topic, partition, first, last, table), committed out of order.
    let batches: [(&str, i32, i64, i64, &TableId); 8] = [
        (&tb, 1, 0, 9, &main),
        (&ta, 10, 0, 4, &main),
        (&ta, 2, 5, 9, &main),
        (&ta, 9, 0, 4, &main),
        (&ta, 2, 10, 19, &main),
        (&ta, 3, 0, 9, &twin),
        (&ta, 4, 0, 9, &other),
        (&ta, 2, 100, 100, &main),
    ];
    for (topic, partition, first, last, t) in batches {
        let current = store.load_partition(&group, topic, partition).await.expect("load");
        let i = intent(first, last, &format!("{prefix}/{topic}/{partition}/{first}.parquet"));
        let begun = store
            .begin_batch(&group, &lease, g, topic, partition, current.map(|c| c.version), &i)
            .await
            .expect("begin");
        store
            .commit_batch(&group, &lease, g, topic, partition, begun.version, &batch_commit(&i, t, &source, 1))
            .await
            .expect("commit");
    }
    let listed: Vec<(String, i32, i64)> = store
        .manifest(&main)
        .await
        .expect("manifest")
        .into_iter()
        .map(|e| (e.topic, e.partition, e.first_offset))
        .collect();
    assert_eq!(
        listed,
        vec![
            (ta.clone(), 2, 5),
            (ta.clone(), 2, 10),
            (ta.clone(), 2, 100),
            (ta.clone(), 9, 0),
            (ta.clone(), 10, 0),
            (tb.clone(), 1, 0)
        ]
    );
    let twin_listed: Vec<i32> = store.manifest(&twin).await.expect("manifest").iter().map(|e| e.partition).collect();
    assert_eq!(twin_listed, vec![3], "tables whose names differ only in where `#` is must not share a manifest");
    assert_eq!(store.manifest(&other).await.expect("manifest").len(), 1);
    assert!(store.manifest(&table(&tenant, "x#y", "none")).await.expect("manifest").is_empty());
}

// ---- helpers ----------------------------------------------------------------

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

fn table(tenant: &str, database: &str, table: &str) -> TableId {
    TableId { tenant: tenant.into(), database: database.into(), table: table.into() }
}

fn intent(first_offset: i64, last_offset: i64, object_key: &str) -> BatchIntent {
    BatchIntent { first_offset, last_offset, object_key: object_key.into() }
}

fn source_checkpoint(file: &str, pos: u64, gtid: Option<&str>) -> SourceCheckpoint {
    SourceCheckpoint {
        file: file.into(),
        pos,
        gtid: gtid.map(Into::into),
        position: format!("{file}-{pos:020}"),
        commit_ts_ms: 1_700_000_000_000,
    }
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

/// Snapshot requests: first-seen requests are recorded once, on-demand ones
/// renumber; progress saves need the source lease and the current request,
/// and a save for a superseded request writes nothing.
pub async fn snapshot_requests_progress_and_supersede<S: CheckpointStore>(store: &S, prefix: &str) {
    let source = format!("{prefix}-pg");
    let other_source = format!("{prefix}-other");
    let a = TableId { tenant: format!("{prefix}a").into(), database: "lab".into(), table: "orders".into() };
    let b = TableId { tenant: format!("{prefix}b").into(), database: "lab".into(), table: "results#1".into() };
    assert!(store.snapshots(&source).await.expect("list").is_empty());
    assert!(store.request_snapshot(&source, &a, true).await.expect("request a"));
    assert!(!store.request_snapshot(&source, &a, true).await.expect("request a again"), "first-seen only once");
    assert!(store.request_snapshot(&source, &b, false).await.expect("request b"));
    assert!(store.request_snapshot(&other_source, &a, true).await.expect("other source"));
    let list = store.snapshots(&source).await.expect("list");
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((&list[0].table, list[0].request, list[0].state), (&a, 1, SnapshotState::Requested));
    assert_eq!((&list[1].table, list[1].request, list[1].last_key.as_ref()), (&b, 1, None));

    let g = store.acquire_lease(&format!("source#{source}")).await.expect("lease");
    let mut p = list[0].clone();
    p.state = SnapshotState::Running;
    p.last_key = Some(vec!["42".into(), "it's \"quoted\"".into()]);
    p.chunks = 3;
    p.rows = 3000;
    p.estimate = 10_000;
    assert!(store.save_snapshot(&source, g, &p).await.expect("save"));
    let back = store.snapshots(&source).await.expect("list");
    assert_eq!(back[0], p);
    expect_fenced(store.save_snapshot(&source, g - 1, &p).await.map(|_| ()), "save_snapshot with an old generation");

    // An on-demand request supersedes the running one: its saves become no-ops.
    assert!(store.request_snapshot(&source, &a, false).await.expect("re-request"));
    let fresh = store.snapshots(&source).await.expect("list")[0].clone();
    assert_eq!(
        (fresh.request, fresh.state, fresh.rows, fresh.last_key.as_ref()),
        (2, SnapshotState::Requested, 0, None)
    );
    assert!(!store.save_snapshot(&source, g, &p).await.expect("stale save"), "superseded save must write nothing");
    assert_eq!(store.snapshots(&source).await.expect("list")[0], fresh);
}

/// Schema history: a shape keeps its version (re-registering and replays
/// are no-ops), a new shape takes the next number with its changes against
/// the latest, racing registrars agree and never share a number, and tables
/// have separate histories.
pub async fn schema_history_numbers_each_shape_once<S: CheckpointStore>(store: &S, prefix: &str) {
    use crate::SchemaVersion;
    use lablake_model::{Column, ColumnType, TableSchema};
    let t = TableId { tenant: format!("{prefix}a").into(), database: "lab".into(), table: "orders".into() };
    let other = TableId { table: "results".into(), ..t.clone() };
    let int = ColumnType::Int { bytes: 8, unsigned: false };
    let shape = |names: &[&str]| {
        let cols = names.iter().map(|n| Column { name: (*n).into(), ty: int.clone(), nullable: true }).collect();
        SchemaVersion::of(&TableSchema::new(cols, vec![0]), "0001", 5)
    };
    let (v1, v2, v3) = (shape(&["id", "a"]), shape(&["id", "a", "b"]), shape(&["id", "c", "b"]));
    assert!(store.schema_history(&t).await.expect("empty history").is_empty());
    assert_eq!(store.register_schema(&t, &v1).await.expect("v1"), 1);
    assert_eq!(store.register_schema(&t, &v1).await.expect("v1 again"), 1);
    let (a, b) = tokio::join!(store.register_schema(&t, &v2), store.register_schema(&t, &v2));
    assert_eq!((a.expect("race a"), b.expect("race b")), (2, 2), "racing registrars agree on a shape's version");
    assert_eq!(store.register_schema(&t, &v3).await.expect("v3"), 3);
    // A shape seen again (a replay of old records) keeps its old number.
    assert_eq!(store.register_schema(&t, &v1).await.expect("v1 replayed"), 1);
    assert_eq!(store.register_schema(&other, &v3).await.expect("other table"), 1);
    let h = store.schema_history(&t).await.expect("history");
    assert_eq!(h.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(h[0].changes, vec!["new table"]);
    assert_eq!(h[1].changes, vec!["added column b"]);
    assert_eq!(h[2].changes, vec!["renamed column a to c"]);
    assert_eq!((h[2].first_position.as_str(), h[2].primary_key.clone()), ("0001", vec!["id".to_owned()]));
    // A drop is recorded once; the table created again starts a new run of versions.
    let dropped = SchemaVersion::dropped(9);
    assert_eq!(store.register_schema(&t, &dropped).await.expect("drop"), 4);
    assert_eq!(store.register_schema(&t, &SchemaVersion::dropped(10)).await.expect("drop again"), 4);
    assert_eq!(store.register_schema(&t, &v1).await.expect("created again"), 5);
    let h = store.schema_history(&t).await.expect("history after drop");
    assert_eq!((h[3].changes.clone(), h[3].is_drop()), (vec!["dropped table".to_owned()], true));
    assert_eq!(h[4].changes, vec!["table created again"]);
    let (x, y) = tokio::join!(store.register_schema(&other, &v1), store.register_schema(&other, &v2));
    let (x, y) = (x.expect("race x"), y.expect("race y"));
    assert!(x != y && x > 1 && y > 1, "different shapes never share a number: {x} {y}");
    assert_eq!(store.schema_history(&other).await.expect("other history").len(), 3);
}

/// Sink checkpoints round-trip per table, list per sink, and are saved only
/// by the current holder of the sink's lease.
pub async fn sink_checkpoints_round_trip_and_are_fenced<S: CheckpointStore>(store: &S, prefix: &str) {
    use crate::SinkCheckpoint;
    let sink = format!("{prefix}-snowflake");
    let a = TableId { tenant: format!("{prefix}a").into(), database: "lab".into(), table: "orders".into() };
    let b = TableId { table: "results".into(), ..a.clone() };
    assert!(store.load_sink(&sink, &a).await.expect("load").is_none());
    let g1 = store.acquire_lease(&format!("sink#{sink}")).await.expect("lease");
    let mut cp = SinkCheckpoint::new(&a);
    cp.next.insert("t.a#0".into(), 5000);
    cp.files = 1;
    cp.rows = 5000;
    cp.max_commit_ts_ms = 17;
    store.save_sink(&sink, g1, &cp).await.expect("save");
    store.save_sink(&sink, g1, &SinkCheckpoint::new(&b)).await.expect("save b");
    let back = store.load_sink(&sink, &a).await.expect("load again").expect("saved");
    assert_eq!(back, cp);
    assert!(back.has_loaded("t.a", 0, 0) && !back.has_loaded("t.a", 0, 5000) && !back.has_loaded("t.a", 1, 0));
    assert_eq!(store.sinks(&sink).await.expect("list").len(), 2);
    let g2 = store.acquire_lease(&format!("sink#{sink}")).await.expect("lease again");
    let err = store.save_sink(&sink, g1, &cp).await.expect_err("a stale sink is fenced");
    assert!(matches!(err, CheckpointError::Fenced { .. }), "{err:?}");
    store.save_sink(&sink, g2, &cp).await.expect("the new holder saves");
}
