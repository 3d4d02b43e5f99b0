//! What a snapshot (full load) read returns, whatever the source.

use crate::Value;

/// One chunk of a table read in key order.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Rows in key order, columns as the table's schema lists them.
    pub rows: Vec<Vec<Value>>,
    /// Text forms of the last row's key columns, what the next read starts
    /// after; `None` when the chunk is empty.
    pub last_key: Option<Vec<String>>,
}
