//! [`GenerationStore`]: a tenant's generations saved in one conditional
//! write, and handles that read and write one generation's manifest, status
//! and sink checkpoints.

use super::{Names, batch_commit, expect_fenced, intent};
use crate::{
    BatchStore, CheckpointError, GenerationState, GenerationStore, Generations, LeaseName, LeaseStore, SinkCheckpoint,
    SinkStore,
};

/// Runs every generation check.
pub async fn run<S: LeaseStore + BatchStore + SinkStore + GenerationStore>(store: &S, prefix: &str) {
    saves_are_conditional_on_the_version_read(store, prefix).await;
    a_generation_keeps_its_own_manifest_status_and_sink_checkpoints(store, prefix).await;
}

/// Nothing stored reads as generation 0 active; a save is conditional on the
/// version read, so of two writers that read the same version one wins.
pub async fn saves_are_conditional_on_the_version_read<S: GenerationStore>(store: &S, prefix: &str) {
    let tenant = format!("{prefix}-t");
    let fresh = store.load_generations(&tenant).await.expect("load");
    assert_eq!(fresh, Generations::initial(&tenant));
    let mut a = fresh.clone();
    assert_eq!(a.begin("v1", "cfg", 1), 1);
    let v1 = store.save_generations(&a).await.expect("the first save creates the item");
    assert_eq!(v1, 1);
    let mut racer = fresh.clone();
    racer.begin("v2", "other", 2);
    expect_fenced(store.save_generations(&racer).await, "a save from version 0 after another writer's");
    let mut back = store.load_generations(&tenant).await.expect("load");
    assert_eq!((back.version, back.active), (1, 0));
    assert_eq!(back.records, a.records, "the racer's save wrote nothing");
    back.verified(1, "equal".into(), 3).expect("verified");
    back.cut_over(1, 4).expect("cut over");
    let mut stale = back.clone();
    assert_eq!(store.save_generations(&back).await.expect("cut-over write"), 2);
    stale.rollback(5).expect("rollback in memory");
    expect_fenced(store.save_generations(&stale).await, "a save from a version read before the cut-over");
    let now = store.load_generations(&tenant).await.expect("load");
    assert_eq!((now.active, now.previous, now.version), (1, Some(0), 2));
    assert_eq!(now.record(1).map(|r| r.state), Some(GenerationState::Active));
    assert_eq!(now.record(1).map(|r| r.code_version.as_str()), Some("v1"));
}

/// A handle of generation 1 commits batches and saves sink checkpoints that
/// generation 0 does not see, and the other way round; partition
/// checkpoints (per consumer group) and leases are shared.
pub async fn a_generation_keeps_its_own_manifest_status_and_sink_checkpoints<
    S: LeaseStore + BatchStore + SinkStore + GenerationStore,
>(
    store: &S,
    prefix: &str,
) {
    let g0 = store.in_generation(0);
    let g1 = store.in_generation(1);
    assert_eq!((g0.data_generation(), g1.data_generation()), (0, 1));
    let n = Names::new(prefix, ".gen");
    let table = n.table("lab", "results");
    let f = n.acquire(store).await;
    let p = n.at(0);
    let a = intent(0, 9, &n.key("g1/results/a.parquet"));
    let begun = g1.begin_batch(&p, &f, None, &a).await.expect("begin in generation 1");
    g1.commit_batch(&p, &f, begun.version, &batch_commit(&a, &table, &n.source, 10)).await.expect("commit");
    assert_eq!(g1.manifest(&table).await.expect("manifest").len(), 1);
    assert!(g0.manifest(&table).await.expect("manifest").is_empty(), "generation 0 sees generation 1's file");
    assert_eq!(g1.status(Some(&n.tenant)).await.expect("status").len(), 2, "table and database rows");
    assert!(g0.status(Some(&n.tenant)).await.expect("status").is_empty());
    assert!(!g0.status(None).await.expect("status").iter().any(|s| s.tenant == n.tenant));
    assert!(g1.status(None).await.expect("status").iter().any(|s| s.tenant == n.tenant));
    // The partition checkpoint belongs to the consumer group, not the generation.
    assert!(g0.load_partition(&p).await.expect("load").is_some());

    let sink = format!("{prefix}-sf");
    let lease = store.acquire_lease(&LeaseName::sink(&sink)).await.expect("sink lease");
    let mut cp = SinkCheckpoint::new(&table);
    cp.files = 3;
    g1.save_sink(&sink, lease, &cp).await.expect("save in generation 1");
    assert_eq!(g1.load_sink(&sink, &table).await.expect("load"), Some(cp));
    assert_eq!(g0.load_sink(&sink, &table).await.expect("load"), None);
    assert!(g0.sinks(&sink).await.expect("list").is_empty());
    let err = g1.save_sink(&sink, lease + 7, &SinkCheckpoint::new(&table)).await.expect_err("fenced");
    assert!(matches!(err, CheckpointError::Fenced(_)), "{err:?}");
}
