//! The Lablake data model: what a row change *is*, independent of where it
//! came from or where it goes.
//!
//! This crate does no I/O and has no async runtime. Everything here is pure and
//! deterministic so the same code runs in the source connectors, the curation
//! consumers, tests and benchmarks.
//!
//! * [`value`] — an exact value model ([`Value`]) and column types ([`ColumnType`]).
//! * [`event`] — a row change ([`ChangeEvent`]) with its tenant, table, position.
//! * [`envelope`] — the documented, Debezium-compatible JSON envelope on Kafka.
//! * [`tenant`] — table selection, tenant rules and the routing of a row
//!   change to its tenant(s) ([`tenant::route`]), shared by every source.
//! * [`snapshot`] — a chunk of a snapshot read ([`Chunk`]).
//! * [`topic`] — per-tenant Kafka topic naming.

pub mod envelope;
pub mod error;
pub mod event;
pub mod position;
pub mod snapshot;
pub mod tenant;
pub mod topic;

/// Milliseconds since the Unix epoch by the system clock (0 before the
/// epoch): the one clock reading every crate stamps events and checkpoints
/// with. (The only impure function of this crate.)
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
pub mod value;

pub use error::ModelError;
pub use event::{ChangeEvent, Op, SourceInfo, TableId};
pub use position::{Resume, SourcePosition};
pub use snapshot::Chunk;
pub use value::{Column, ColumnType, Date, DateTime, TableSchema, Value};
