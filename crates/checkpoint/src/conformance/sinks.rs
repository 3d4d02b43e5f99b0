//! [`SinkStore`]: sink checkpoints, guarded by the sink's lease.

use lablake_model::TableId;

use super::expect_fenced;
use crate::{CheckpointError, LeaseName, LeaseStore, SinkCheckpoint, SinkStore};

/// Runs every sink checkpoint check.
pub async fn run<S: LeaseStore + SinkStore>(store: &S, prefix: &str) {
    checkpoints_round_trip_and_are_fenced(store, prefix).await;
}

/// Sink checkpoints round-trip per table, list per sink, and are saved only
/// by the current holder of the sink's lease.
pub async fn checkpoints_round_trip_and_are_fenced<S: LeaseStore + SinkStore>(store: &S, prefix: &str) {
    let sink = format!("{prefix}-snowflake");
    let a = TableId { tenant: format!("{prefix}a").into(), database: "lab".into(), table: "orders".into() };
    let b = TableId { table: "results".into(), ..a.clone() };
    assert!(store.load_sink(&sink, &a).await.expect("load").is_none());
    let g1 = store.acquire_lease(&LeaseName::sink(&sink)).await.expect("lease");
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
    let g2 = store.acquire_lease(&LeaseName::sink(&sink)).await.expect("lease again");
    let mut stale = cp.clone();
    stale.files = 2;
    let err = store.save_sink(&sink, g1, &stale).await.expect_err("a stale sink is fenced");
    assert!(matches!(err, CheckpointError::Fenced { .. }), "{err:?}");
    assert_eq!(store.load_sink(&sink, &a).await.expect("load").as_ref(), Some(&cp), "a fenced save_sink wrote");
    store.save_sink(&sink, g2, &stale).await.expect("the new holder saves");
    assert_eq!(store.load_sink(&sink, &a).await.expect("load"), Some(stale), "a save replaces the checkpoint");
    // Holding the source lease of the same name does not make a sink writer.
    let g = store.acquire_lease(&LeaseName::source(&sink)).await.expect("source lease");
    if g != g2 {
        expect_fenced(store.save_sink(&sink, g, &cp).await, "save_sink with a generation of the source lease");
    }
}
