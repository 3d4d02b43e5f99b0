//! [`BatchStore`]: partition checkpoints, their two-phase batches, the
//! manifest and the status, guarded by the curation lease and the
//! checkpoint's version.

use lablake_model::TableId;

use super::{Names, assert_status, batch_commit, expect_fenced, intent, manifest_entry, one_winner};
use crate::{BatchStore, CheckpointError, Fence, HighWater, LeaseName, LeaseStore, PartitionCheckpoint, TableStatus};

/// Runs every batch check.
pub async fn run<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    old_generations_are_fenced(store, &format!("{prefix}-lease")).await;
    commit_advances_partition_manifest_and_status(store, &format!("{prefix}-commit")).await;
    commit_requires_the_pending_batch(store, &format!("{prefix}-pending")).await;
    stale_versions_are_fenced(store, &format!("{prefix}-stale")).await;
    begin_guards_committed_offsets(store, &format!("{prefix}-guard")).await;
    invalid_batches_are_rejected(store, &format!("{prefix}-invalid")).await;
    racing_writers_with_one_generation(store, &format!("{prefix}-race")).await;
    high_water_follows_the_commits(store, &format!("{prefix}-high")).await;
    a_partition_moves_forward_only_when_idle(store, &format!("{prefix}-move")).await;
    status_is_filtered_by_tenant(store, &format!("{prefix}-status")).await;
    manifest_is_ordered_and_per_table(store, &format!("{prefix}-manifest")).await;
}

/// The previous holder of the curation lease is fenced from both batch
/// phases (also when the lease moves on between them), and so is a holder
/// of another lease; a fenced write changes nothing.
pub async fn old_generations_are_fenced<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let p = n.at(0);
    let old = n.acquire(store).await;
    let new = n.acquire(store).await;
    assert!(new.generation > old.generation, "generations must increase: {old:?} then {new:?}");
    let a = intent(0, 9, &n.key("a.parquet"));
    expect_fenced(store.begin_batch(&p, &old, None, &a).await, "begin_batch with an old generation");
    assert_eq!(store.load_partition(&p).await.expect("load"), None, "fenced begin wrote");
    let other_shard = Fence::new(LeaseName::curator(prefix, "1"), new.generation);
    expect_fenced(store.begin_batch(&p, &other_shard, None, &a).await, "begin_batch under a lease never acquired");
    assert_eq!(store.load_partition(&p).await.expect("load"), None, "fenced begin wrote");
    let begun = store.begin_batch(&p, &new, None, &a).await.expect("begin with current generation");
    assert_eq!(begun.generation, new.generation);
    let commit = batch_commit(&a, &n.table("db", "tbl"), &n.source, 10);
    expect_fenced(store.commit_batch(&p, &old, begun.version, &commit).await, "commit_batch with an old generation");
    assert_eq!(store.load_partition(&p).await.expect("load"), Some(begun.clone()), "fenced commit wrote");
    let newest = n.acquire(store).await;
    expect_fenced(store.commit_batch(&p, &new, begun.version, &commit).await, "commit_batch after the lease moved on");
    assert!(store.manifest(&commit.table).await.expect("manifest").is_empty(), "fenced commit listed a file");
    assert!(store.status(Some(&n.tenant)).await.expect("status").is_empty(), "fenced commit counted a file");
    let done = store.commit_batch(&p, &newest, begun.version, &commit).await.expect("commit");
    assert_eq!(done.generation, newest.generation);
}

/// begin → commit: `next_offset` moves past the batch, pending clears, the
/// version increases, the file is listed, and the status of the table and of
/// its source database count it.
pub async fn commit_advances_partition_manifest_and_status<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".changes");
    let (tenant, source) = (&n.tenant, &n.source);
    let orders = n.table("shop", "orders");
    let items = n.table("shop", "items");
    let f = n.acquire(store).await;
    let g = f.generation;
    let p3 = n.at(3);
    assert_eq!(store.load_partition(&p3).await.expect("load"), None);

    let a = intent(100, 149, &n.key("orders/a.parquet"));
    let begun = store.begin_batch(&p3, &f, None, &a).await.expect("begin");
    let begun_want =
        PartitionCheckpoint { next_offset: 100, pending: Some(a.clone()), generation: g, version: 1, high_water: None };
    assert_eq!(begun, begun_want);
    assert_eq!(store.load_partition(&p3).await.expect("load"), Some(begun.clone()));
    assert!(store.manifest(&orders).await.expect("manifest").is_empty(), "begin must not list the file");

    let mut c1 = batch_commit(&a, &orders, source, 48);
    c1.dead_lettered = 2;
    c1.max_commit_ts_ms = 1_700_000_000_000;
    c1.max_position = "0000000001-0000000100".into();
    let done = store.commit_batch(&p3, &f, begun.version, &c1).await.expect("commit");
    assert_eq!(
        done,
        PartitionCheckpoint { next_offset: 150, pending: None, generation: g, version: 2, high_water: None }
    );
    assert_eq!(store.load_partition(&p3).await.expect("load"), Some(done.clone()));
    assert_eq!(store.manifest(&orders).await.expect("manifest"), vec![manifest_entry(&n.topic, 3, &c1)]);

    // Another partition checkpoint of the same group is independent, and so
    // is the same partition for another group.
    assert_eq!(store.load_partition(&n.at(4)).await.expect("load"), None);
    let mut other_group = p3.clone();
    other_group.group = format!("{prefix}-other-g");
    assert_eq!(store.load_partition(&other_group).await.expect("load"), None);

    // A second batch of the same table and one of another table in the same database.
    let b = intent(150, 199, &n.key("orders/b.parquet"));
    let begun = store.begin_batch(&p3, &f, Some(done.version), &b).await.expect("begin 2");
    assert_eq!(begun.next_offset, 150);
    let mut c2 = batch_commit(&b, &orders, source, 50);
    c2.max_commit_ts_ms = 1_700_000_000_500;
    c2.max_position = "0000000001-0000000200".into();
    let done = store.commit_batch(&p3, &f, begun.version, &c2).await.expect("commit 2");
    assert_eq!(done.next_offset, 200);
    assert_eq!(done.version, 4);
    let i = intent(0, 9, &n.key("items/a.parquet"));
    let mut c3 = batch_commit(&i, &items, source, 7);
    c3.dead_lettered = 3;
    c3.max_commit_ts_ms = 1_700_000_000_900;
    c3.max_position = "0000000001-0000000300".into();
    let p5 = n.at(5);
    let begun = store.begin_batch(&p5, &f, None, &i).await.expect("begin items");
    store.commit_batch(&p5, &f, begun.version, &c3).await.expect("commit items");

    assert_eq!(
        store.manifest(&orders).await.expect("manifest"),
        vec![manifest_entry(&n.topic, 3, &c1), manifest_entry(&n.topic, 3, &c2)]
    );
    let rows = store.status(Some(tenant)).await.expect("status");
    let keys: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (r.source.as_str(), r.database.as_str(), r.table.as_str())).collect();
    assert_eq!(
        keys,
        vec![(source.as_str(), "shop", "*"), (source.as_str(), "shop", "items"), (source.as_str(), "shop", "orders")],
        "status rows: the database aggregate and one row per table, ordered"
    );
    let (db, it, or) = (&rows[0], &rows[1], &rows[2]);
    assert_status(or, tenant, 98, 2, 2);
    assert_eq!(or.max_commit_ts_ms, 1_700_000_000_500);
    assert_eq!(or.max_position, "0000000001-0000000200");
    assert_status(it, tenant, 7, 1, 3);
    assert_status(db, tenant, 105, 3, 5);
    assert_eq!(db.max_commit_ts_ms, 1_700_000_000_900, "aggregate carries the latest committed batch");
    assert_eq!(db.max_position, "0000000001-0000000300");
    assert!(db.updated_at_ms > 0 && or.updated_at_ms > 0);
}

/// A commit is accepted only for the batch that is pending; a rejected commit
/// changes nothing.
pub async fn commit_requires_the_pending_batch<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let (p, source) = (n.at(0), &n.source);
    let t = n.table("db", "tbl");
    let f = n.acquire(store).await;
    let a = intent(0, 9, &n.key("a.parquet"));

    // Nothing at all yet.
    expect_fenced(
        store.commit_batch(&p, &f, 0, &batch_commit(&a, &t, source, 10)).await,
        "commit without any checkpoint",
    );
    assert_eq!(store.load_partition(&p).await.expect("load"), None);

    let begun = store.begin_batch(&p, &f, None, &a).await.expect("begin");
    for (other, what) in [
        (intent(0, 9, &n.key("other.parquet")), "another object key"),
        (intent(0, 8, &n.key("a.parquet")), "another last offset"),
        (intent(1, 9, &n.key("a.parquet")), "another first offset"),
    ] {
        expect_fenced(
            store.commit_batch(&p, &f, begun.version, &batch_commit(&other, &t, source, 10)).await,
            &format!("commit of a batch with {what} than the pending one"),
        );
    }
    assert_eq!(store.load_partition(&p).await.expect("load"), Some(begun.clone()));
    assert!(store.manifest(&t).await.expect("manifest").is_empty());
    assert!(store.status(Some(&t.tenant)).await.expect("status").is_empty());

    // The pending batch commits; committing it again finds nothing pending.
    let done = store.commit_batch(&p, &f, begun.version, &batch_commit(&a, &t, source, 10)).await.expect("commit");
    expect_fenced(
        store.commit_batch(&p, &f, done.version, &batch_commit(&a, &t, source, 10)).await,
        "second commit of the same batch",
    );
    assert_eq!(store.manifest(&t).await.expect("manifest").len(), 1);
    assert_eq!(store.load_partition(&p).await.expect("load"), Some(done));
}

/// Writers that read an older (or newer, or no) version are fenced.
pub async fn stale_versions_are_fenced<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let p = n.at(0);
    let t = n.table("db", "tbl");
    let f = n.acquire(store).await;
    let a = intent(0, 9, &n.key("a.parquet"));
    expect_fenced(store.begin_batch(&p, &f, Some(1), &a).await, "begin expecting a missing version");
    let begun = store.begin_batch(&p, &f, None, &a).await.expect("begin");
    expect_fenced(store.begin_batch(&p, &f, None, &a).await, "begin expecting no checkpoint");
    expect_fenced(store.begin_batch(&p, &f, Some(begun.version + 1), &a).await, "begin expecting a newer version");
    let c = batch_commit(&a, &t, &n.source, 10);
    expect_fenced(store.commit_batch(&p, &f, begun.version + 1, &c).await, "commit expecting a newer version");
    let done = store.commit_batch(&p, &f, begun.version, &c).await.expect("commit");
    let b = intent(10, 19, &n.key("b.parquet"));
    expect_fenced(
        store.begin_batch(&p, &f, Some(begun.version), &b).await,
        "begin with the version read before the last commit",
    );
    assert_eq!(store.load_partition(&p).await.expect("load"), Some(done));
}

/// A batch may not start inside committed offsets nor replace a different
/// pending batch; re-beginning the same pending batch (after a restart) is fine.
pub async fn begin_guards_committed_offsets<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let (p, source) = (n.at(0), &n.source);
    let t = n.table("db", "tbl");
    let f = n.acquire(store).await;
    let a = intent(0, 9, &n.key("a.parquet"));
    let begun = store.begin_batch(&p, &f, None, &a).await.expect("begin");
    let done = store.commit_batch(&p, &f, begun.version, &batch_commit(&a, &t, source, 10)).await.expect("commit");

    let overlap = intent(9, 19, &n.key("b.parquet"));
    expect_fenced(store.begin_batch(&p, &f, Some(done.version), &overlap).await, "overlapping batch");

    // Offsets may have gaps (compaction, transaction markers).
    let b = intent(12, 19, &n.key("b.parquet"));
    let begun = store.begin_batch(&p, &f, Some(done.version), &b).await.expect("begin after gap");
    assert_eq!(begun.next_offset, 10);

    let other = intent(12, 19, &n.key("c.parquet"));
    expect_fenced(
        store.begin_batch(&p, &f, Some(begun.version), &other).await,
        "begin of a different batch while one is pending",
    );
    // A restarted consumer with a new generation takes the pending batch over.
    let f2 = n.acquire(store).await;
    let again = store.begin_batch(&p, &f2, Some(begun.version), &b).await.expect("re-begin");
    assert_eq!(
        again,
        PartitionCheckpoint {
            next_offset: 10,
            pending: Some(b.clone()),
            generation: f2.generation,
            version: begun.version + 1,
            high_water: None,
        }
    );
    let done = store.commit_batch(&p, &f2, again.version, &batch_commit(&b, &t, source, 8)).await.expect("commit");
    assert_eq!(done.next_offset, 20);
    let listed: Vec<(i64, i64)> =
        store.manifest(&t).await.expect("manifest").iter().map(|e| (e.first_offset, e.last_offset)).collect();
    assert_eq!(listed, vec![(0, 9), (12, 19)]);
}

/// Empty or negative ranges, empty object keys and negative partitions are
/// rejected without writing anything.
pub async fn invalid_batches_are_rejected<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let p = n.at(0);
    let t = n.table("db", "tbl");
    let f = n.acquire(store).await;
    let key = n.key("a.parquet");
    for (bad, what) in [
        (intent(10, 9, &key), "last before first"),
        (intent(-1, 9, &key), "negative first offset"),
        (intent(0, 9, ""), "empty object key"),
    ] {
        expect_fenced(store.begin_batch(&p, &f, None, &bad).await, what);
        expect_fenced(store.commit_batch(&p, &f, 1, &batch_commit(&bad, &t, &n.source, 1)).await, what);
    }
    let negative = n.at(-1);
    expect_fenced(store.begin_batch(&negative, &f, None, &intent(0, 9, &key)).await, "negative partition");
    expect_fenced(
        store.commit_batch(&negative, &f, 1, &batch_commit(&intent(0, 9, &key), &t, &n.source, 1)).await,
        "commit to a negative partition",
    );
    assert_eq!(store.load_partition(&p).await.expect("load"), None);
    assert_eq!(store.load_partition(&negative).await.expect("load"), None);
    assert!(store.manifest(&t).await.expect("manifest").is_empty());
}

/// Two writers holding the same generation race with the same expected
/// version: exactly one wins, the other is fenced, and the winner's write is
/// what remains — for `begin_batch` on a new and on an existing checkpoint,
/// and for `commit_batch` (the file is listed and counted once).
pub async fn racing_writers_with_one_generation<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let (p, source) = (n.at(0), &n.source);
    let t = n.table("db", "tbl");
    let f = n.acquire(store).await;

    // 1. No checkpoint yet.
    let a1 = intent(0, 9, &n.key("w1-a.parquet"));
    let a2 = intent(0, 19, &n.key("w2-a.parquet"));
    let (r1, r2) = tokio::join!(store.begin_batch(&p, &f, None, &a1), store.begin_batch(&p, &f, None, &a2));
    let (winner, won) = one_winner(r1, r2, &a1, &a2, "racing first begin");
    let stored = store.load_partition(&p).await.expect("load");
    assert_eq!(stored.as_ref(), Some(&winner), "racing first begin: the winner's write must remain");
    assert_eq!(winner.pending.as_ref(), Some(won));

    let done = store.commit_batch(&p, &f, winner.version, &batch_commit(won, &t, source, 5)).await.expect("commit");
    let next = done.next_offset;

    // 2. Existing checkpoint, same expected version.
    let b1 = intent(next, next + 9, &n.key("w1-b.parquet"));
    let b2 = intent(next, next + 4, &n.key("w2-b.parquet"));
    let (r1, r2) = tokio::join!(
        store.begin_batch(&p, &f, Some(done.version), &b1),
        store.begin_batch(&p, &f, Some(done.version), &b2),
    );
    let (winner, won) = one_winner(r1, r2, &b1, &b2, "racing begin");
    assert_eq!(
        store.load_partition(&p).await.expect("load"),
        Some(winner.clone()),
        "racing begin: the winner's write must remain"
    );

    // 3. Both commit the pending batch.
    let c = batch_commit(won, &t, source, 5);
    let (r1, r2) =
        tokio::join!(store.commit_batch(&p, &f, winner.version, &c), store.commit_batch(&p, &f, winner.version, &c));
    let committed = match (r1, r2) {
        (Ok(cp), Err(CheckpointError::Fenced(_))) | (Err(CheckpointError::Fenced(_)), Ok(cp)) => cp,
        (r1, r2) => panic!("racing commit: expected exactly one success and one Fenced, got {r1:?} and {r2:?}"),
    };
    assert_eq!(store.load_partition(&p).await.expect("load"), Some(committed), "racing commit");
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
pub async fn status_is_filtered_by_tenant<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".t");
    let f = n.acquire(store).await;
    let tenants = [format!("{prefix}-a"), format!("{prefix}-ab"), format!("{prefix}-b")];
    for (partition, tenant) in (0..).zip(&tenants) {
        let p = n.at(partition);
        let t = TableId::new(tenant, "db", "tbl");
        let i = intent(0, 0, &n.key(&format!("{tenant}.parquet")));
        let begun = store.begin_batch(&p, &f, None, &i).await.expect("begin");
        store.commit_batch(&p, &f, begun.version, &batch_commit(&i, &t, &n.source, 1)).await.expect("commit");
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
pub async fn manifest_is_ordered_and_per_table<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".a");
    let main = n.table("x#y", "z");
    let twin = n.table("x", "y#z");
    let other = n.table("x#y", "other");
    let (ta, tb) = (format!("{prefix}.a"), format!("{prefix}.b"));
    let f = n.acquire(store).await;

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
        let p = n.on(topic, partition);
        let current = store.load_partition(&p).await.expect("load");
        let i = intent(first, last, &n.key(&format!("{topic}/{partition}/{first}.parquet")));
        let begun = store.begin_batch(&p, &f, current.map(|c| c.version), &i).await.expect("begin");
        store.commit_batch(&p, &f, begun.version, &batch_commit(&i, t, &n.source, 1)).await.expect("commit");
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
    assert!(store.manifest(&n.table("x#y", "none")).await.expect("manifest").is_empty());
}

/// A commit stores its batch's high-water mark with the partition
/// checkpoint exactly (keys included); a begin keeps the committed mark, so a
/// rebuilt batch starts from the same one; a later commit replaces it.
pub async fn high_water_follows_the_commits<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".hw");
    let t = n.table("shop", "orders");
    let f = n.acquire(store).await;
    let p = n.at(1);
    let a = intent(0, 9, &n.key("orders/hw-a.parquet"));
    let begun = store.begin_batch(&p, &f, None, &a).await.expect("begin");
    assert_eq!(begun.high_water, None);
    let mark = HighWater {
        position: "0000000002:00000000000000000500:0000000001".into(),
        keys: vec!["0a".into(), "0b".into()],
    };
    let mut c = batch_commit(&a, &t, &n.source, 10);
    c.high_water = Some(mark.clone());
    let done = store.commit_batch(&p, &f, begun.version, &c).await.expect("commit");
    assert_eq!(done.high_water.as_ref(), Some(&mark));
    assert_eq!(store.load_partition(&p).await.expect("load").and_then(|c| c.high_water), Some(mark.clone()));
    let b = intent(10, 19, &n.key("orders/hw-b.parquet"));
    let begun = store.begin_batch(&p, &f, Some(done.version), &b).await.expect("begin");
    assert_eq!(begun.high_water.as_ref(), Some(&mark), "a begin keeps the committed mark");
    assert_eq!(store.load_partition(&p).await.expect("load").and_then(|c| c.high_water), Some(mark));
    let newer = HighWater { position: "0000000002:00000000000000000900:0000000000".into(), keys: vec![String::new()] };
    let mut c = batch_commit(&b, &t, &n.source, 10);
    c.high_water = Some(newer.clone());
    let done = store.commit_batch(&p, &f, begun.version, &c).await.expect("commit");
    assert_eq!(done.high_water.as_ref(), Some(&newer));
    assert_eq!(store.load_partition(&p).await.expect("load").and_then(|c| c.high_water), Some(newer));
}

/// The operator's move past a gap: forward only, not while a batch is
/// pending, fenced for an old generation or version; the mark is kept and
/// the next batch starts at the new offset.
pub async fn a_partition_moves_forward_only_when_idle<S: LeaseStore + BatchStore>(store: &S, prefix: &str) {
    let n = Names::new(prefix, ".mv");
    let t = n.table("shop", "orders");
    let f = n.acquire(store).await;
    let p = n.at(0);
    let a = intent(0, 9, &n.key("orders/mv-a.parquet"));
    let begun = store.begin_batch(&p, &f, None, &a).await.expect("begin");
    let pending = store.move_partition(&p, &f, begun.version, 50).await;
    assert!(matches!(pending, Err(CheckpointError::Fenced(_))), "not while a batch is pending: {pending:?}");
    let done = store.commit_batch(&p, &f, begun.version, &batch_commit(&a, &t, &n.source, 10)).await.expect("commit");
    let back = store.move_partition(&p, &f, done.version, 5).await;
    assert!(matches!(back, Err(CheckpointError::Fenced(_))), "never backwards: {back:?}");
    let stale = store.move_partition(&p, &f, done.version + 7, 50).await;
    assert!(matches!(stale, Err(CheckpointError::Fenced(_))), "stale version: {stale:?}");
    let moved = store.move_partition(&p, &f, done.version, 50).await.expect("move");
    assert_eq!((moved.next_offset, moved.version, moved.pending.is_none()), (50, done.version + 1, true));
    assert_eq!(moved.high_water, done.high_water);
    assert_eq!(store.load_partition(&p).await.expect("load"), Some(moved.clone()));
    let early = store.begin_batch(&p, &f, Some(moved.version), &intent(10, 19, &n.key("orders/mv-b.parquet"))).await;
    assert!(matches!(early, Err(CheckpointError::Fenced(_))), "nothing before the new offset: {early:?}");
    store
        .begin_batch(&p, &f, Some(moved.version), &intent(50, 59, &n.key("orders/mv-c.parquet")))
        .await
        .expect("the next batch starts at the new offset");
    let newer = n.acquire(store).await;
    let fenced = store.move_partition(&p, &f, moved.version + 1, 80).await;
    assert!(matches!(fenced, Err(CheckpointError::Fenced(_))), "an old generation is fenced: {fenced:?} ({newer:?})");
}
