//! PostgreSQL logical-replication source (pgoutput, protocol version 2 with
//! streaming of large transactions, binary values).
//!
//! - [`PgSource`]: the live reader, a [`lablake_source::ChangeSource`];
//!   [`PgSourceConfig`] is its [`lablake_source::Connector`].
//! - [`PgSnapshotter`]: snapshot chunk reads and watermarks, a
//!   [`lablake_source::Snapshotter`].
//! - [`PgDecoder`]: the pure pgoutput state machine (transactions, streamed
//!   transactions spilled to disk, relations, tenants).
//! - [`pgoutput`]: pure parser of the replication messages.
//! - [`values`]: binary wire values to exact Lablake values.

pub mod config;
pub mod decoder;
pub mod error;
pub mod identity;
pub mod pgoutput;
pub mod snapshot;
pub mod source;
pub mod tls;
pub mod values;

pub use config::{PgSourceConfig, TenantConfig};
pub use decoder::{DecoderConfig, PgDecoder, PgOrigin, WATERMARK_PREFIX};
pub use error::PgError;
pub use snapshot::{PgSnapshotTable, PgSnapshotter};
pub use source::PgSource;
pub use tls::{TlsConfig, TlsMode};
