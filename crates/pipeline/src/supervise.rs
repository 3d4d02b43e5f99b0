//! Keeps a stage running through failures that retrying can fix.
//!
//! A stage that fails with a retryable [`PipelineError`] (a dropped
//! database connection, a broker or store that is briefly unreachable,
//! throttling) is started again in the same process after a backoff — it
//! re-acquires its lease and resumes from its checkpoints, exactly as after a
//! process restart, so nothing is lost or repeated beyond what the delivery
//! guarantees already allow. Errors that need a person (configuration, a
//! lost position, a fenced writer, a broken expectation) end the stage, and
//! with it the process, naming what happened.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lablake_checkpoint::{CheckpointError, LeaseName, LeaseStore};
use tokio::sync::watch;

use crate::PipelineError;
use crate::metrics;

/// The generation a stage holds, kept across its in-process restarts (share
/// one between the attempts of [`supervise`]). The first start takes the
/// lease ([`LeaseStore::acquire_lease`]: a newcomer takes over); a restart
/// takes it again only while it is still the stage's own
/// ([`LeaseStore::reacquire_lease`]): a stage superseded while it was
/// failing is fenced and ends, instead of taking the lease back from its
/// successor, which would then do the same to it, forever.
///
/// A standby ([`LeaseHeld::standby`]) instead waits while another holder
/// keeps the lease renewed, takes it over once the holder has been silent
/// for the standby's `ttl` (conditional on the generation it saw, so of two
/// standbys one wins), and when superseded goes back to waiting.
#[derive(Debug, Clone, Default)]
pub struct LeaseHeld {
    held: Arc<AtomicU64>,
    standby: Option<Standby>,
}

/// How a standby waits for a lease.
#[derive(Debug, Clone)]
pub struct Standby {
    /// A holder silent this long (no renewal) is taken for dead.
    pub ttl: Duration,
    /// Waiting ends when it turns true.
    pub shutdown: watch::Receiver<bool>,
}

/// How often a standby looks at the lease it waits for.
const STANDBY_POLL: Duration = Duration::from_secs(1);

impl LeaseHeld {
    /// A lease holder that waits for the current holder to fall silent.
    pub fn standby(ttl: Duration, shutdown: watch::Receiver<bool>) -> Self {
        LeaseHeld { held: Arc::default(), standby: Some(Standby { ttl, shutdown }) }
    }

    /// Whether this holder waits as a standby (a fenced stage restarts and waits).
    pub fn is_standby(&self) -> bool {
        self.standby.is_some()
    }

    /// The lease for this start of the stage; `None` when shutdown came
    /// while a standby waited (the stage then ends at once).
    pub async fn acquire<S: LeaseStore>(&self, store: &S, lease: &LeaseName) -> Result<Option<u64>, CheckpointError> {
        let held = self.held.load(Ordering::SeqCst);
        let generation = match (&self.standby, held) {
            (None, 0) => store.acquire_lease(lease).await?,
            (None, held) => store.reacquire_lease(lease, held).await?,
            (Some(standby), held) => {
                let again = match held {
                    0 => None,
                    held => match store.reacquire_lease(lease, held).await {
                        Ok(g) => Some(g),
                        Err(CheckpointError::Fenced(_)) => None,
                        Err(e) => return Err(e),
                    },
                };
                match again {
                    Some(g) => g,
                    None => match wait_for(store, lease, standby).await? {
                        Some(g) => g,
                        None => return Ok(None),
                    },
                }
            }
        };
        self.held.store(generation, Ordering::SeqCst);
        Ok(Some(generation))
    }
}

/// A standby's wait: until the lease is free or its holder silent for the
/// ttl, then takes it (`None`: shutdown came first).
async fn wait_for<S: LeaseStore>(
    store: &S,
    lease: &LeaseName,
    standby: &Standby,
) -> Result<Option<u64>, CheckpointError> {
    let mut shutdown = standby.shutdown.clone();
    let ttl_ms = i64::try_from(standby.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut announced = false;
    loop {
        if *shutdown.borrow() {
            return Ok(None);
        }
        let taken = match store.lease_state(lease).await? {
            // Of several standbys finding no lease, exactly one takes it.
            None => match store.reacquire_lease(lease, 0).await {
                Ok(g) => Some(g),
                Err(CheckpointError::Fenced(_)) => None,
                Err(e) => return Err(e),
            },
            Some(s) if metrics::now_ms() - s.renewed_ms >= ttl_ms => {
                match store.reacquire_lease(lease, s.generation).await {
                    Ok(g) => Some(g),
                    // Another standby was faster.
                    Err(CheckpointError::Fenced(_)) => None,
                    Err(e) => return Err(e),
                }
            }
            Some(s) => {
                if !announced {
                    tracing::info!(lease = %lease, generation = s.generation, ttl_s = standby.ttl.as_secs(),
                        "standby: another instance holds the lease; taking over when it falls silent");
                    announced = true;
                }
                None
            }
        };
        metrics::STANDBY.with_label_values(&[lease.as_str()]).set(if taken.is_some() { 0.0 } else { 1.0 });
        if let Some(g) = taken {
            tracing::info!(lease = %lease, generation = g, "standby: lease taken over");
            return Ok(Some(g));
        }
        tokio::select! {
            _ = tokio::time::sleep(STANDBY_POLL) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// How often a stage renews its lease ([`still_held`]): a standby takes over
/// a lease not renewed for its ttl, and a superseded stage with nothing
/// else to write (a paused process woken after a successor took over) ends
/// within this long.
pub const LEASE_CHECK: Duration = Duration::from_secs(5);

/// Renews `lease` at `generation`; `Err` (fenced) once another holder took
/// it. A renewal that fails for another reason (the store briefly
/// unreachable) is only logged: the stage's guarded writes fence it anyway.
pub async fn still_held<S: LeaseStore>(store: &S, lease: &LeaseName, generation: u64) -> Result<(), PipelineError> {
    match store.renew_lease(lease, generation).await {
        Ok(()) => Ok(()),
        Err(e @ CheckpointError::Fenced(_)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(lease = %lease, error = %chain(&e), "cannot renew the lease; trying again later");
            Ok(())
        }
    }
}

/// First wait after a failure; doubled per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next failure starts the backoff over.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The wait before restart number `failures` (1, 2, …): exponential, capped.
pub fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// Runs `start()` until it succeeds, fails with an error that retrying
/// cannot fix, or `shutdown` turns true. `stage` names it in logs and in
/// `lablake_stage_restarts_total{stage}`. A `standby` stage that was fenced
/// (another instance took its lease over) starts again too, and waits for
/// the lease ([`LeaseHeld::standby`]).
pub async fn supervise<F, Fut>(
    stage: String,
    mut shutdown: watch::Receiver<bool>,
    standby: bool,
    mut start: F,
) -> Result<(), PipelineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), PipelineError>>,
{
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let error = match start().await {
            Ok(()) => return Ok(()),
            Err(e) if standby && e.is_fenced() => {
                tracing::warn!(stage, error = %chain(&e), "superseded by another instance; back to standby");
                metrics::STAGE_RESTARTS.with_label_values(&[&stage]).inc();
                failures = 0;
                continue;
            }
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => e,
        };
        if *shutdown.borrow() {
            return Err(error);
        }
        failures = if started.elapsed() >= HEALTHY_RUN { 1 } else { failures + 1 };
        let wait = backoff(failures);
        metrics::STAGE_RESTARTS.with_label_values(&[&stage]).inc();
        tracing::warn!(stage, error = %chain(&error), failures, retry_in_ms = wait.as_millis() as u64,
            "stage failed; starting it again from its checkpoints");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// An error and its sources, `a: b: c`, for one log line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use lablake_checkpoint::CheckpointError;

    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_and_others_end_the_stage() {
        let (_tx, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let result = supervise("test".into(), rx.clone(), false, move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Err(CheckpointError::Backend { message: "throttled".into(), source: None }.into()),
                    _ => Ok(()),
                }
            }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 3, "two retryable failures, then success");

        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let result = supervise("test".into(), rx, false, move || {
            r.fetch_add(1, Ordering::SeqCst);
            async { Err(CheckpointError::Fenced("lease moved".into()).into()) }
        })
        .await;
        assert!(result.is_err_and(|e| e.is_fenced()));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "a fenced stage is not restarted");
    }

    #[test]
    fn chains_name_every_source() {
        let e: PipelineError = CheckpointError::Backend { message: "timeout".into(), source: None }.into();
        assert_eq!(chain(&e), "checkpoint store: checkpoint backend error: timeout");
    }

    #[tokio::test]
    async fn a_standby_takes_over_a_silent_lease_and_shutdown_ends_its_wait() {
        use lablake_checkpoint::MemoryStore;
        let store = MemoryStore::new();
        let lease = LeaseName::sink("snowflake");
        let (tx, rx) = watch::channel(false);
        let holder = LeaseHeld::standby(Duration::from_millis(300), rx.clone());
        let g1 = holder.acquire(&store, &lease).await.unwrap().unwrap();
        // Silent for longer than the ttl (no renewal): a standby takes it over,
        // conditionally on the generation it saw.
        let standby = LeaseHeld::standby(Duration::from_millis(300), rx.clone());
        let g2 = standby.acquire(&store, &lease).await.unwrap().unwrap();
        assert!(g2 > g1);
        assert!(store.renew_lease(&lease, g1).await.is_err(), "the silent holder is fenced");
        // The superseded holder, restarted, waits again instead of taking the lease back.
        let renewer = tokio::spawn({
            let (store, lease) = (store.clone(), lease.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if store.renew_lease(&lease, g2).await.is_err() {
                        break;
                    }
                }
            }
        });
        let waiting = tokio::spawn({
            let (holder, store, lease) = (holder.clone(), store.clone(), lease.clone());
            async move { holder.acquire(&store, &lease).await }
        });
        // It looks every second: without the renewals it would take the lease at its second look.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!waiting.is_finished(), "a renewed lease is not taken back");
        tx.send(true).unwrap();
        let out = waiting.await.unwrap().unwrap();
        assert_eq!(out, None, "shutdown ends a standby's wait");
        renewer.abort();
    }
}
