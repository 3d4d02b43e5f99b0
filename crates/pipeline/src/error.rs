//! The one error type of the stages and its retry classification.

use lablake_bus::BusError;
use lablake_checkpoint::CheckpointError;
use lablake_curate::CurateError;
use lablake_lake::LakeError;
use lablake_snowflake::SnowflakeError;
use lablake_source::SourceError;
use thiserror::Error;

/// Everything that stops a stage. Each variant keeps the failing crate's
/// error as its `source`; `context` says what the stage was doing, naming
/// sources, tenants, tables, topics, partitions and offsets — never row
/// values or secrets.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A source connector failed: connection, server settings, a lost
    /// position, an undecodable log. `retryable` is the connector's own
    /// classification ([`SourceError::is_retryable`]).
    #[error("{context}")]
    Source {
        context: String,
        retryable: bool,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The checkpoint store failed, or fenced this writer
    /// ([`PipelineError::is_fenced`]: another instance took over).
    #[error("{context}")]
    Checkpoint {
        context: String,
        #[source]
        source: CheckpointError,
    },
    /// Kafka: client, topic creation or delivery.
    #[error("{context}")]
    Bus {
        context: String,
        #[source]
        source: Box<BusError>,
    },
    /// The object store or Parquet encoding.
    #[error("{context}")]
    Lake {
        context: String,
        #[source]
        source: Box<LakeError>,
    },
    /// Building a curated batch (Arrow).
    #[error("{context}")]
    Curate {
        context: String,
        #[source]
        source: Box<CurateError>,
    },
    /// Snowflake: login, statements, loads.
    #[error("{context}")]
    Warehouse {
        context: String,
        #[source]
        source: Box<SnowflakeError>,
    },
    /// The configuration cannot work; `key` names it.
    #[error("configuration `{key}`: {reason}")]
    Config { key: String, reason: String },
    /// A broken expectation: a peer (broker, store) answered outside its
    /// contract, or a bug. Names what was expected.
    #[error("{0}")]
    Invariant(String),
    /// An operation refused because doing it would lose or mix data; the
    /// message says why and what to do instead.
    #[error("{0}")]
    Refused(String),
    /// The stage must start again with its state read anew (a tenant's
    /// active generation moved); retryable, nothing is wrong.
    #[error("{0}")]
    Restart(String),
    /// A stage's task panicked or was cancelled.
    #[error("{context}: {reason}")]
    Task { context: String, reason: String },
}

impl PipelineError {
    /// Whether the failed work may succeed if done again after a backoff
    /// (a connection, a throttled store, an unreachable endpoint). Fencing,
    /// configuration, lost positions and broken expectations need a person
    /// or a restart with new state.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Source { retryable, .. } => *retryable,
            PipelineError::Checkpoint { source, .. } => source.is_retryable(),
            PipelineError::Bus { source, .. } => !matches!(**source, BusError::Config(_)),
            PipelineError::Lake { source, .. } => matches!(**source, LakeError::Store(_)),
            PipelineError::Warehouse { source, .. } => source.is_retryable(),
            PipelineError::Restart(_) => true,
            PipelineError::Curate { .. }
            | PipelineError::Config { .. }
            | PipelineError::Invariant(_)
            | PipelineError::Refused(_)
            | PipelineError::Task { .. } => false,
        }
    }

    /// Whether another holder of this stage's lease fenced it: the stage
    /// must stop writing at once.
    pub fn is_fenced(&self) -> bool {
        matches!(self, PipelineError::Checkpoint { source: CheckpointError::Fenced(_), .. })
    }

    /// A failure of a source connector, classified by the connector.
    pub fn source(context: impl Into<String>, error: impl SourceError) -> Self {
        PipelineError::Source { context: context.into(), retryable: error.is_retryable(), source: Box::new(error) }
    }

    pub(crate) fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        PipelineError::Config { key: key.into(), reason: reason.into() }
    }

    pub(crate) fn task(context: impl Into<String>, error: tokio::task::JoinError) -> Self {
        let reason = if error.is_panic() { "panicked" } else { "was cancelled" };
        PipelineError::Task { context: context.into(), reason: reason.into() }
    }

    /// The same error with `context` in front of its own.
    pub(crate) fn within_context(mut self, outer: String) -> Self {
        match &mut self {
            PipelineError::Source { context, .. }
            | PipelineError::Checkpoint { context, .. }
            | PipelineError::Bus { context, .. }
            | PipelineError::Lake { context, .. }
            | PipelineError::Curate { context, .. }
            | PipelineError::Warehouse { context, .. }
            | PipelineError::Task { context, .. } => *context = format!("{outer}: {context}"),
            PipelineError::Invariant(m) | PipelineError::Refused(m) | PipelineError::Restart(m) => {
                *m = format!("{outer}: {m}")
            }
            PipelineError::Config { .. } => {}
        }
        self
    }
}

/// Errors of the crates below, each with a default context for a plain `?`.
/// (The large ones boxed: an error stays small on the happy path's stack.)
macro_rules! from_crate {
    ($ty:ty, $variant:ident, $what:literal, $wrap:path) => {
        impl From<$ty> for PipelineError {
            fn from(source: $ty) -> Self {
                PipelineError::$variant { context: $what.into(), source: $wrap(source) }
            }
        }
        impl Contextual for $ty {
            fn contextual(self, context: String) -> PipelineError {
                PipelineError::$variant { context, source: $wrap(self) }
            }
        }
    };
}

fn unboxed<T>(t: T) -> T {
    t
}

/// An error that can take a stage's context.
pub(crate) trait Contextual {
    fn contextual(self, context: String) -> PipelineError;
}

from_crate!(CheckpointError, Checkpoint, "checkpoint store", unboxed);
from_crate!(BusError, Bus, "kafka", Box::new);
from_crate!(LakeError, Lake, "lake", Box::new);
from_crate!(CurateError, Curate, "curation", Box::new);
from_crate!(SnowflakeError, Warehouse, "snowflake", Box::new);

impl Contextual for PipelineError {
    fn contextual(self, context: String) -> PipelineError {
        self.within_context(context)
    }
}

/// `.context(…)` for the stages' results, like `anyhow::Context` but typed.
pub(crate) trait Context<T> {
    fn context(self, context: impl Into<String>) -> Result<T, PipelineError>;
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T, PipelineError>;
}

impl<T, E: Contextual> Context<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, PipelineError> {
        self.map_err(|e| e.contextual(context.into()))
    }
    fn with_context(self, context: impl FnOnce() -> String) -> Result<T, PipelineError> {
        self.map_err(|e| e.contextual(context()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_failing_crate() {
        let fenced: PipelineError = CheckpointError::Fenced("lease moved".into()).into();
        assert!(fenced.is_fenced() && !fenced.is_retryable());
        let e: Result<(), _> = Err(SnowflakeError::Unavailable { endpoint: "http://x".into(), reason: "503".into() });
        let e = e.context("loading acme/lab_acme.orders").unwrap_err();
        assert!(e.is_retryable() && !e.is_fenced());
        assert_eq!(e.to_string(), "loading acme/lab_acme.orders");
        let nested: Result<(), PipelineError> = Err(PipelineError::Invariant("gap".into()));
        assert_eq!(nested.context("partition t/0").unwrap_err().to_string(), "partition t/0: gap");
        assert!(!PipelineError::config("sources[0]", "bad").is_retryable());
    }
}
