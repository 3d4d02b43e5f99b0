//! The stages of the Lablake pipeline, as a library the `lablake` binary,
//! the end-to-end tests and the benchmarks drive.
//!
//! | module | stage | reads → writes |
//! |---|---|---|
//! | [`source`] | source stage | any [`lablake_source::Connector`] → Kafka; positions saved after acks |
//! | [`snapshot`] | snapshot workers | chunks between watermarks, emitted by the source stage |
//! | [`curator`] | curation | Kafka → curated Parquet, two-phase commit with fencing |
//! | [`sink`] | warehouse | curated batches → Snowflake, checkpoint after MERGE |
//! | [`replay`] | replay | Kafka from offset 0 → a new generation, verified, one-write cut-over |
//! | [`lane`] | — | which tables a worker or curator owns (core / user-defined) |
//! | [`metrics`] | — | Prometheus metrics of every stage and the `/metrics` endpoint |
//!
//! Every stage runs until its shutdown signal turns true, keeps all its
//! progress in the checkpoint store, and returns a [`PipelineError`] that
//! says whether retrying can help. The guarantees are stated once, in
//! `docs/ARCHITECTURE.md` ("Delivery guarantees").

pub mod curator;
mod error;
pub mod lane;
pub mod metrics;
pub mod replay;
pub mod sink;
pub mod snapshot;
pub mod source;

pub use curator::{CurateConfig, Curator};
pub use error::PipelineError;
pub use lane::{Lane, Lanes, UserTablesConfig};
pub use sink::SinkConfig;
pub use snapshot::SnapshotConfig;
pub use source::SourceConfig;
pub mod supervise;
