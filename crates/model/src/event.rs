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

impl TableId {
    /// A table of a tenant.
    pub fn new(tenant: &str, database: &str, table: &str) -> Self {
        TableId { tenant: tenant.into(), database: database.into(), table: table.into() }
    }
}

/// `tenant/database.table` — the one way a table is named in messages,
/// logs and command output.
impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}.{}", self.tenant, self.database, self.table)
    }
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

    /// Whether this is an update that changed the primary key (both images
    /// present and their key values differ; with no primary key, every
    /// column is the key).
    pub fn changes_key(&self) -> bool {
        match (&self.before, &self.after) {
            (Some(b), Some(a)) if self.op == Op::Update => {
                self.schema.primary_key.iter().any(|i| match (b.get(*i), a.get(*i)) {
                    // TOAST-unchanged values and absent columns are not key changes.
                    (Some(Value::Unchanged), _) | (_, Some(Value::Unchanged)) => false,
                    (x, y) => x != y,
                })
            }
            _ => false,
        }
    }

    /// An update that changed the primary key as a delete of the old key
    /// followed by a create of the new one, both at the update's position
    /// (what Debezium emits): downstream state keyed by primary key then
    /// drops the old row. Any other event is returned as it is.
    pub fn split_key_change(self) -> (ChangeEvent, Option<ChangeEvent>) {
        if !self.changes_key() {
            return (self, None);
        }
        let create = ChangeEvent { op: Op::Create, before: None, ..self.clone() };
        let delete = ChangeEvent { op: Op::Delete, after: None, ..self };
        (delete, Some(create))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Column, ColumnType, TableSchema};

    fn update(before: [i64; 2], after: [i64; 2]) -> ChangeEvent {
        let schema = TableSchema::new(
            vec![
                Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: false },
                Column { name: "v".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: true },
            ],
            vec![0],
        );
        ChangeEvent {
            table: TableId { tenant: "t".into(), database: "d".into(), table: "x".into() },
            op: Op::Update,
            schema,
            before: Some(before.iter().map(|v| Value::Int(*v)).collect()),
            after: Some(after.iter().map(|v| Value::Int(*v)).collect()),
            source: SourceInfo {
                connector: "mysql".into(),
                name: "s".into(),
                server_id: 1,
                file: "binlog.000001".into(),
                pos: 100,
                row: 0,
                gtid: None,
                ts_ms: 0,
                position: SourcePosition::mysql(1, 100, 0),
            },
            ts_ms: 0,
        }
    }

    #[test]
    fn key_changing_updates_split_into_delete_and_create() {
        let (same, none) = update([1, 5], [1, 6]).split_key_change();
        assert_eq!((same.op, none), (Op::Update, None));
        let (delete, create) = update([1, 5], [2, 5]).split_key_change();
        let create = create.unwrap();
        assert_eq!((delete.op, delete.key_values(), delete.after.is_none()), (Op::Delete, vec![&Value::Int(1)], true));
        assert_eq!((create.op, create.key_values(), create.before.is_none()), (Op::Create, vec![&Value::Int(2)], true));
        assert_eq!(delete.source.position, create.source.position);
        let mut toast = update([1, 5], [1, 5]);
        toast.before.as_mut().unwrap()[0] = Value::Unchanged;
        assert!(!toast.changes_key());
    }
}
