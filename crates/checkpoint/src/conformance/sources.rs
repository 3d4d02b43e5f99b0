//! [`SourceStore`]: source checkpoints, guarded by the source's lease.

use lablake_model::Resume;

use super::expect_fenced;
use crate::{LeaseName, LeaseStore, SourceCheckpoint, SourceStore};

/// Runs every source checkpoint check.
pub async fn run<S: LeaseStore + SourceStore>(store: &S, prefix: &str) {
    old_generations_are_fenced(store, &format!("{prefix}-fence")).await;
    checkpoints_round_trip(store, &format!("{prefix}-trip")).await;
}

/// Only the current generation of `source#<source>` saves: an older one, a
/// future one and one of a lease never acquired are fenced and change
/// nothing.
pub async fn old_generations_are_fenced<S: LeaseStore + SourceStore>(store: &S, prefix: &str) {
    let source = format!("{prefix}-mysql");
    let lease = LeaseName::source(&source);
    let g1 = store.acquire_lease(&lease).await.expect("acquire lease");
    let g2 = store.acquire_lease(&lease).await.expect("acquire lease again");
    assert!(g2 > g1, "generations must increase: {g1} then {g2}");

    let cp = binlog("binlog.000001", 4, None);
    expect_fenced(store.save_source(&source, g1, &cp).await, "save_source with an old generation");
    assert_eq!(store.load_source(&source).await.expect("load"), None, "a fenced save_source wrote");
    store.save_source(&source, g2, &cp).await.expect("save_source with the current generation");
    let newer = binlog("binlog.000002", 4, None);
    expect_fenced(store.save_source(&source, g1, &newer).await, "save_source with an old generation");
    expect_fenced(store.save_source(&source, g2 + 1, &newer).await, "save_source with a future generation");
    assert_eq!(store.load_source(&source).await.expect("load"), Some(cp.clone()), "a fenced save_source wrote");

    let never = format!("{prefix}-never-acquired");
    expect_fenced(store.save_source(&never, 1, &cp).await, "save_source without a lease");
    assert_eq!(store.load_source(&never).await.expect("load"), None);
    // Another kind of lease with the same name is not the source's.
    let g = store.acquire_lease(&LeaseName::sink(&never)).await.expect("acquire the sink lease");
    expect_fenced(store.save_source(&never, g, &cp).await, "save_source holding the sink lease of that name");
}

/// A saved source checkpoint loads back unchanged, and a later save replaces
/// it entirely: binlog coordinates (with and without GTID, and GTID only)
/// and LSNs, in any order.
pub async fn checkpoints_round_trip<S: LeaseStore + SourceStore>(store: &S, prefix: &str) {
    let source = format!("{prefix}-mysql");
    assert_eq!(store.load_source(&source).await.expect("load"), None);
    let g = store.acquire_lease(&LeaseName::source(&source)).await.expect("lease");
    let first = binlog("binlog.000007", 1234, Some("0-1-42"));
    store.save_source(&source, g, &first).await.expect("save");
    assert_eq!(store.load_source(&source).await.expect("load"), Some(first));
    let second = SourceCheckpoint { commit_ts_ms: -5, ..binlog("binlog.000008", u64::MAX, None) };
    store.save_source(&source, g, &second).await.expect("save again");
    assert_eq!(store.load_source(&source).await.expect("load"), Some(second), "gtid must be cleared too");

    for (cp, what) in [
        (lsn(0x1_6B37_4D48), "an LSN after binlog coordinates"),
        (lsn(u64::MAX), "the largest LSN"),
        (lsn(0), "LSN 0"),
        (binlog("", 0, Some("0-1-42,1-2-7")), "a GTID-only resume point after an LSN"),
        (binlog("binlog.000009", 4, Some("0-1-43")), "binlog coordinates after a GTID-only one"),
        (lsn(42), "an LSN after a GTID"),
    ] {
        store.save_source(&source, g, &cp).await.unwrap_or_else(|e| panic!("save {what}: {e}"));
        assert_eq!(store.load_source(&source).await.expect("load"), Some(cp), "{what} must round-trip");
    }

    // Sources are independent.
    let other = format!("{prefix}-pg");
    let g = store.acquire_lease(&LeaseName::source(&other)).await.expect("lease");
    store.save_source(&other, g, &lsn(7)).await.expect("save another source");
    assert_eq!(store.load_source(&source).await.expect("load"), Some(lsn(42)));
    assert_eq!(store.load_source(&other).await.expect("load"), Some(lsn(7)));
}

fn binlog(file: &str, pos: u64, gtid: Option<&str>) -> SourceCheckpoint {
    SourceCheckpoint {
        resume: Resume::Binlog { file: file.into(), pos, gtid: gtid.map(Into::into) },
        position: format!("{file}-{pos:020}"),
        commit_ts_ms: 1_700_000_000_000,
    }
}

fn lsn(lsn: u64) -> SourceCheckpoint {
    SourceCheckpoint {
        resume: Resume::Lsn(lsn),
        position: format!("{lsn:016X}:0000000000"),
        commit_ts_ms: 1_700_000_000_000,
    }
}
