//! MySQL / MariaDB binlog source for Lablake (incremental load).
//!
//! The reader connects as a replica (`mysql_async`'s binlog stream, see
//! `docs/adr/0001-mysql-binlog-client.md`) and turns row-based binlog events
//! into [`lablake_model::ChangeEvent`]s:
//!
//! * [`MysqlSource`] — the live reader, a [`lablake_source::ChangeSource`]:
//!   `start(config, resume)`, then `next()` until an error; each
//!   [`lablake_source::SourceItem::Commit`] carries the
//!   [`lablake_model::Resume`] to restart from. [`MysqlSourceConfig`] is its
//!   [`lablake_source::Connector`].
//! * [`BinlogDecoder`] — the pure event-stream state machine both the live
//!   reader and offline tools use (positions, GTIDs, transactions, tenants).
//! * [`decode`] — the pure value decoding layer; [`decode::decode_rows`] is
//!   the benchmark hook.
//! * [`MysqlSnapshotter`] — snapshot (full load) chunk reads and watermarks,
//!   a [`lablake_source::Snapshotter`].
//! * [`BinlogFileReader`] — reads binlog files with the same event framing.
//!
//! Guarantees, type mapping and limitations are in the crate README.

mod catalog;
pub mod config;
mod ddl;
pub mod decode;
mod error;
mod file;
mod snapshot;
mod source;
mod stream;

pub use config::{MysqlSourceConfig, StartPosition, TenantConfig, TlsConfig, TlsMode};
pub use decode::{CatalogColumn, CatalogTable, Flavor, RowChange, TableInfo, decode_rows};
pub use error::MysqlError;
pub use file::BinlogFileReader;
pub use snapshot::{MysqlSnapshotTable, MysqlSnapshotter};
pub use source::MysqlSource;
pub use stream::{BinlogDecoder, CatalogRequest, DecoderConfig};

/// Re-export of the `mysql_common` binlog types used in this crate's API
/// (`Event`, `TableMapEvent`, `RowsEventData`), so callers and benchmarks
/// use the same version.
pub use mysql_common::binlog as mysql_binlog;
