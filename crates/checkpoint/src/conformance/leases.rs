//! [`LeaseStore`]: generations. That an older generation is fenced is
//! checked with each guarded write, in [`super::sources`],
//! [`super::batches`], [`super::snapshots`] and [`super::sinks`].

use crate::{LeaseName, LeaseStore};

/// Runs every lease check.
pub async fn run<S: LeaseStore>(store: &S, prefix: &str) {
    generations_increase_per_lease(store, prefix).await;
    a_superseded_holder_cannot_take_the_lease_back(store, prefix).await;
    a_holder_renews_and_learns_it_was_superseded(store, prefix).await;
}

/// [`LeaseStore::renew_lease`] holds for the current generation only (for
/// the holder that took the lease and for one that took it back), writes
/// nothing for a superseded holder, and moves the renewal time
/// [`LeaseStore::lease_state`] shows; a lease never taken has no state.
pub async fn a_holder_renews_and_learns_it_was_superseded<S: LeaseStore>(store: &S, prefix: &str) {
    let lease = LeaseName::sink(&format!("{prefix}-renew"));
    assert_eq!(store.lease_state(&lease).await.expect("state"), None, "a lease never taken has no state");
    assert!(
        matches!(store.renew_lease(&lease, 1).await, Err(crate::CheckpointError::Fenced(_))),
        "a lease never taken has no holder"
    );
    let before = crate::rules::now_ms();
    let g1 = store.acquire_lease(&lease).await.expect("acquire");
    let taken = store.lease_state(&lease).await.expect("state").expect("taken");
    assert_eq!(taken.generation, g1);
    assert!(taken.renewed_ms >= before, "taking a lease renews it: {} < {before}", taken.renewed_ms);
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.renew_lease(&lease, g1).await.expect("the holder renews");
    store.renew_lease(&lease, g1).await.expect("renewing twice is harmless");
    let renewed = store.lease_state(&lease).await.expect("state").expect("taken");
    assert!(renewed.renewed_ms > taken.renewed_ms, "renewal moves the time");
    assert_eq!(renewed.generation, g1, "renewal keeps the generation");
    let g2 = store.acquire_lease(&lease).await.expect("another holder takes over");
    let after_takeover = store.lease_state(&lease).await.expect("state").expect("taken");
    match store.renew_lease(&lease, g1).await {
        Err(crate::CheckpointError::Fenced(reason)) => assert!(reason.contains("taken over"), "{reason}"),
        other => panic!("a superseded holder must learn it, got {other:?}"),
    }
    assert_eq!(
        store.lease_state(&lease).await.expect("state").expect("taken"),
        after_takeover,
        "a superseded holder's renewal writes nothing"
    );
    store.renew_lease(&lease, g2).await.expect("the new holder renews");
    let g3 = store.reacquire_lease(&lease, g2).await.expect("the new holder restarts");
    store.renew_lease(&lease, g3).await.expect("renewed after a restart");
    assert!(store.renew_lease(&lease, g2).await.is_err(), "the generation before the restart is gone");
}

/// A holder starting again takes the next generation while the lease is
/// still its own, and is fenced once someone else took it over.
pub async fn a_superseded_holder_cannot_take_the_lease_back<S: LeaseStore>(store: &S, prefix: &str) {
    let lease = LeaseName::source(&format!("{prefix}-retake"));
    let g1 = store.acquire_lease(&lease).await.expect("acquire");
    let g2 = store.reacquire_lease(&lease, g1).await.expect("take it again while still held");
    assert!(g2 > g1, "a re-acquisition returns a greater generation: {g1} then {g2}");
    let other = store.acquire_lease(&lease).await.expect("another holder takes over");
    match store.reacquire_lease(&lease, g2).await {
        Err(crate::CheckpointError::Fenced(reason)) => assert!(reason.contains("taken over"), "{reason}"),
        other => panic!("a superseded holder must be fenced, got {other:?}"),
    }
    let back = store.reacquire_lease(&lease, other).await.expect("the new holder may restart");
    assert!(back > other);

    // `held` 0: only a lease nobody took yet; of two such takers one wins.
    let fresh = LeaseName::sink(&format!("{prefix}-fresh"));
    let first = store.reacquire_lease(&fresh, 0).await.expect("a lease nobody took");
    assert!(first >= 1);
    assert!(
        matches!(store.reacquire_lease(&fresh, 0).await, Err(crate::CheckpointError::Fenced(_))),
        "a lease someone took is not taken as new"
    );
}

/// The first generation is at least 1 and each acquisition returns a
/// greater one, for every kind of lease, also while other leases are
/// acquired in between.
pub async fn generations_increase_per_lease<S: LeaseStore>(store: &S, prefix: &str) {
    let source = LeaseName::source(&format!("{prefix}-mysql"));
    let g1 = store.acquire_lease(&source).await.expect("acquire lease");
    assert!(g1 >= 1, "first generation must be at least 1, got {g1}");
    let g2 = store.acquire_lease(&source).await.expect("acquire lease again");
    assert!(g2 > g1, "generations must increase: {g1} then {g2}");

    // Other leases (of every kind) have generations of their own.
    for other in [LeaseName::sink(&format!("{prefix}-mysql")), LeaseName::curator(prefix, "0")] {
        let first = store.acquire_lease(&other).await.expect("acquire another lease");
        assert!(first >= 1, "first generation of `{other}` must be at least 1, got {first}");
        let second = store.acquire_lease(&other).await.expect("acquire another lease again");
        assert!(second > first, "generations of `{other}` must increase: {first} then {second}");
    }
    let g3 = store.acquire_lease(&source).await.expect("acquire the first lease again");
    assert!(g3 > g2, "generations must increase across other leases' acquisitions: {g2} then {g3}");
}
