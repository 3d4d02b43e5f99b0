//! [`SnapshotStore`]: snapshot requests and progress, progress guarded by the
//! source's lease and the request number.

use lablake_model::TableId;

use super::expect_fenced;
use crate::{LeaseName, LeaseStore, SnapshotState, SnapshotStore};

/// Runs every snapshot check.
pub async fn run<S: LeaseStore + SnapshotStore>(store: &S, prefix: &str) {
    requests_progress_and_supersede(store, prefix).await;
}

/// Snapshot requests: first-seen requests are recorded once, on-demand ones
/// renumber; progress saves need the source lease and the current request,
/// and a save for a superseded request writes nothing.
pub async fn requests_progress_and_supersede<S: LeaseStore + SnapshotStore>(store: &S, prefix: &str) {
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

    let g = store.acquire_lease(&LeaseName::source(&source)).await.expect("lease");
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
