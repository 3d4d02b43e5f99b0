//! The pure decoding layer: no I/O, no async, no panics on external input.
//!
//! * [`TableInfo`] — a TABLE_MAP event (plus optional information_schema
//!   data, [`CatalogTable`]) turned into a decoding plan and a
//!   [`lablake_model::TableSchema`].
//! * [`decode_rows`] — a rows event to complete [`RowChange`]s; the
//!   benchmark hook (see `benches/`).
//! * [`crate::BinlogDecoder`] (in `stream`) drives both over an event stream.

mod charset;
mod decimal;
mod json;

mod reader;
mod rows;
mod select;
mod table;
mod temporal;

pub use charset::Charset;
pub use json::{JsonDiff, JsonDiffOp};
pub(crate) use reader::Reader as ByteReader;
pub use rows::{Cell, RowChange, RowImages, decode_row_images, decode_rows, decode_rows_each};
pub(crate) use select::{chunkable, from_select, key_param, key_text};
pub(crate) use table::Kind;
pub use table::{CatalogColumn, CatalogNeed, CatalogTable, Flavor, TableInfo};
