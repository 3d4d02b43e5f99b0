//! Curation: turns change events into typed Arrow record batches (the
//! *curated* layout) and decides when a batch closes. Pure: no I/O.
//!
//! # Curated layout
//!
//! Every source column, typed (see [`arrow_type`]), all nullable, followed by
//! the CDC metadata columns:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_op` | utf8 | `c` insert, `u` update, `d` delete (row values are the before image), `r` snapshot read, `t` truncate (every column null; removes every earlier row of the table) |
//! | `_position` | utf8 | sortable source position; `(primary key, _position)` identifies a change |
//! | `_commit_ts` | timestamp(µs, UTC) | source commit time |
//! | `_gtid` | utf8 | transaction GTID, when known |
//! | `_source` | utf8 | configured source name |
//! | `_kafka_partition` | int32 | Kafka partition of the record |
//! | `_kafka_offset` | int64 | Kafka offset of the record |
//! | `_unchanged` | utf8 | comma-separated columns whose value is not known in this row (see [`toast`]); null when none |
//!
//! The latest state of a row is the change with the greatest `_position` for
//! its key; it is deleted when that change has `_op = 'd'`, or when a
//! truncate (`_op = 't'`) has a greater `_position`. A truncate is written to
//! every Kafka partition of the table, so each partition's files are complete
//! on their own. Values the source did not send because they did not change
//! (PostgreSQL unchanged TOAST) are filled in from the key's previous change
//! ([`toast`]).

mod batch;
mod policy;
pub mod toast;

pub use batch::{BatchBuilder, BatchSummary, CurateError, arrow_type, curated_schema, meta, primary_key_indices};
pub use policy::{BatchPolicy, CloseReason, OpenBatch};
