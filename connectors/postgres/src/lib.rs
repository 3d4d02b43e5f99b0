//! PostgreSQL logical-replication source (pgoutput, protocol version 2 with
//! streaming of large transactions, binary values).
//!
//! - [`pgoutput`]: pure parser of the replication messages.
//! - [`values`]: binary wire values to exact Lablake values.

pub mod config;
pub mod decoder;
pub mod error;
pub mod pgoutput;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod values;

pub use config::{PgSourceConfig, TenantConfig};
pub use decoder::{DecoderConfig, PgDecoder, PgItem, PgOrigin, WATERMARK_PREFIX};
pub use error::PgError;
pub use lablake_model::Chunk;
pub use snapshot::{PgSnapshotter, SnapshotTable};
pub use source::{PgAcker, PgSource};
pub use tls::{TlsConfig, TlsMode};
