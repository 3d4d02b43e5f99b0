//! Row change events.

use std::sync::Arc;

use crate::{SourcePosition, TableSchema, Value};

/// The kind of change, with Debezium's one-letter codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `c`: a row was inserted.
    Create,
    /// `u`: a row was updated.
    Update,
    /// `d`: a row was deleted.
    Delete,
    /// `r`: a row was read by a snapshot.
    Read,
    /// `t`: every row of the table was removed (TRUNCATE). No row images;
    /// the record is sent to every partition of the table's topic so each
    /// partition's stream is complete on its own.
    Truncate,
}

impl Op {
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }

    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            _ => return None,
        })
    }
}

/// Which tenant's table a change belongs to.
///
/// Names are shared (`Arc<str>`): every change of a table carries the same
/// three names, and cloning them must not allocate per row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub tenant: Arc<str>,
    pub database: Arc<str>,
    pub table: Arc<str>,
}

/// Where a change came from: enough to resume, audit and order it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// `mysql` or `postgresql`.
    pub connector: Arc<str>,
    /// The configured source name (a logical server name).
    pub name: Arc<str>,
    pub server_id: u32,
    /// Binlog file and the end offset of the rows event.
    pub file: Arc<str>,
    pub pos: u64,
    /// Row index within the rows event.
    pub row: u32,
    /// GTID of the transaction (MySQL `uuid:n`, MariaDB `domain-server-seq`).
    pub gtid: Option<Arc<str>>,
    /// Commit time of the transaction, milliseconds since the epoch.
    pub ts_ms: i64,
    /// Sortable position; see [`SourcePosition`].
    pub position: SourcePosition,
}

/// One row change of one table of one tenant.
///
/// `before` is present for updates and deletes, `after` for creates, updates
/// and snapshot reads; both follow `schema.columns` order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    pub table: TableId,
    pub op: Op,
    pub schema: Arc<TableSchema>,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
    pub source: SourceInfo,
    /// When Lablake produced the event, milliseconds since the epoch.
    pub ts_ms: i64,
}

impl ChangeEvent {
    /// The row image that identifies the row: `after`, or `before` for deletes.
    pub fn key_row(&self) -> Option<&[Value]> {
        self.after.as_deref().or(self.before.as_deref())
    }

    /// Primary-key values in key order.
    pub fn key_values(&self) -> Vec<&Value> {
        match self.key_row() {
            Some(row) => self.schema.primary_key.iter().filter_map(|i| row.get(*i)).collect(),
            None => Vec::new(),
        }
    }

    /// Rough size in bytes, for byte budgets.
    pub fn approx_size(&self) -> usize {
        let row = |r: &Option<Vec<Value>>| r.as_ref().map_or(0, |r| r.iter().map(Value::approx_size).sum());
        256 + row(&self.before) + row(&self.after)
    }
}
