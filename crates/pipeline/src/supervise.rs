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
#[derive(Debug, Clone, Default)]
pub struct LeaseHeld(Arc<AtomicU64>);

impl LeaseHeld {
    /// The lease for this start of the stage.
    pub async fn acquire<S: LeaseStore>(&self, store: &S, lease: &LeaseName) -> Result<u64, CheckpointError> {
        let generation = match self.0.load(Ordering::SeqCst) {
            0 => store.acquire_lease(lease).await?,
            held => store.reacquire_lease(lease, held).await?,
        };
        self.0.store(generation, Ordering::SeqCst);
        Ok(generation)
    }
}

/// How often a stage asks whether it still holds its lease
/// ([`still_held`]), so that a superseded stage with nothing to write (a
/// paused process woken after a successor took over) ends within this long.
pub const LEASE_CHECK: Duration = Duration::from_secs(5);

/// `Err` (fenced) once `lease` no longer has `generation`. A check that
/// fails for another reason (the store briefly unreachable) is only logged:
/// the stage's guarded writes fence it anyway, this check only ends an idle
/// one sooner.
pub async fn still_held<S: LeaseStore>(store: &S, lease: &LeaseName, generation: u64) -> Result<(), PipelineError> {
    match store.check_lease(lease, generation).await {
        Ok(()) => Ok(()),
        Err(e @ CheckpointError::Fenced(_)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(lease = %lease, error = %chain(&e), "cannot check the lease; checking again later");
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
/// `lablake_stage_restarts_total{stage}`.
pub async fn supervise<F, Fut>(
    stage: String,
    mut shutdown: watch::Receiver<bool>,
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
        let result = supervise("test".into(), rx.clone(), move || {
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
        let result = supervise("test".into(), rx, move || {
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
}
