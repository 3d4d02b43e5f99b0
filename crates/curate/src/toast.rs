//! Materializes values the source did not send because they did not change
//! (PostgreSQL unchanged TOAST): a curated row holds the value its key had
//! at its previous change, so every curated row is a complete row image.
//!
//! The previous change of a key is, deterministically, the nearest earlier
//! row of the same key in the same Kafka partition (records are keyed by
//! primary key): first earlier in the batch being written, then in the
//! earlier curated files of that partition, newest first. The caller offers
//! those files ([`Resolution::offer`]) until [`Resolution::is_complete`];
//! the result depends only on the partition's records before the batch, so a
//! rebuilt batch gets the same values.
//!
//! A previous delete or truncate means there is no previous value. A column
//! that cannot be resolved (the key's earlier changes are not in the lake,
//! e.g. it predates the first snapshot; or its earlier type cannot be cast)
//! stays null and stays listed in `_unchanged`, which therefore always means
//! "this value is not known here, keep the one you have".

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::{cast, interleave};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::{CurateError, meta};

/// Where an unchanged value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// An earlier row of the batch itself.
    Batch(usize),
    /// The previous change of the key, not yet found (index into `pending`).
    Pending(usize),
    /// A row of an offered earlier batch: (offer index, row).
    Offered(usize, usize),
    /// No previous value.
    Missing,
}

/// One unchanged value of the batch: row, column index, source.
#[derive(Debug, Clone, Copy)]
struct Slot {
    row: usize,
    col: usize,
    src: Src,
}

/// The unchanged values of one curated batch being resolved.
pub struct Resolution {
    batch: RecordBatch,
    slots: Vec<Slot>,
    /// Keys whose previous change lies before the batch, and what was found.
    pending: Vec<(String, Option<Src>)>,
    by_key: HashMap<String, usize>,
    offered: Vec<RecordBatch>,
}

impl Resolution {
    /// Resolves what the batch itself can; the rest is pending.
    pub fn new(batch: RecordBatch) -> Result<Self, CurateError> {
        let mut slots: Vec<Slot> = Vec::new();
        let mut pending: Vec<(String, Option<Src>)> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        if let Some(unchanged) = string_column(&batch, meta::UNCHANGED)?
            && unchanged.null_count() < unchanged.len()
        {
            let ops = string_column(&batch, meta::OP)?.ok_or_else(|| missing(meta::OP))?;
            let keys = Keys::new(&batch)?;
            let schema = batch.schema();
            // Rows by key seen so far in the batch, and whether a truncate came before.
            let mut last: HashMap<String, usize> = HashMap::new();
            let mut truncated = false;
            // Slot index of (row, column), for chains of unchanged values.
            let mut slot_of: HashMap<(usize, usize), usize> = HashMap::new();
            for row in 0..batch.num_rows() {
                if ops.value(row) == "t" {
                    last.clear();
                    truncated = true;
                    continue;
                }
                let Some(key) = keys.key(row) else { continue };
                if !unchanged.is_null(row) {
                    for name in unchanged.value(row).split(',') {
                        let Ok(col) = schema.index_of(name) else { continue };
                        let src = match last.get(&key) {
                            Some(&prev) if ops.value(prev) == "d" => Src::Missing,
                            Some(&prev) => match slot_of.get(&(prev, col)) {
                                Some(&s) => slots[s].src,
                                None => Src::Batch(prev),
                            },
                            None if truncated => Src::Missing,
                            None => Src::Pending(*by_key.entry(key.clone()).or_insert_with(|| {
                                pending.push((key.clone(), None));
                                pending.len() - 1
                            })),
                        };
                        slot_of.insert((row, col), slots.len());
                        slots.push(Slot { row, col, src });
                    }
                }
                last.insert(key, row);
            }
        }
        Ok(Resolution { batch, slots, pending, by_key, offered: Vec::new() })
    }

    /// Whether every previous change needed was found (or cannot exist).
    pub fn is_complete(&self) -> bool {
        self.pending.iter().all(|(_, found)| found.is_some())
    }

    /// Offers an earlier batch of the same partition. Offer them newest
    /// first (files by descending offset, and a file's record batches last
    /// to first); rows of an offered batch are searched last to first.
    pub fn offer(&mut self, earlier: RecordBatch) -> Result<(), CurateError> {
        if self.is_complete() {
            return Ok(());
        }
        let index = self.offered.len();
        let used = self.search(&earlier, index)?;
        if used {
            self.offered.push(earlier);
        }
        Ok(())
    }

    /// Looks for the pending keys in `earlier` (to become offer `index`);
    /// returns whether a row of it was taken.
    fn search(&mut self, earlier: &RecordBatch, index: usize) -> Result<bool, CurateError> {
        let ops = string_column(earlier, meta::OP)?.ok_or_else(|| missing(meta::OP))?;
        let keys = Keys::new(earlier)?;
        let mut used = false;
        for row in (0..earlier.num_rows()).rev() {
            if ops.value(row) == "t" {
                // Everything still open was removed by this truncate.
                for (_, found) in &mut self.pending {
                    found.get_or_insert(Src::Missing);
                }
                break;
            }
            let Some(key) = keys.key(row) else { continue };
            let Some(&i) = self.by_key.get(&key) else { continue };
            if self.pending[i].1.is_none() {
                self.pending[i].1 = Some(if ops.value(row) == "d" { Src::Missing } else { Src::Offered(index, row) });
                used = true;
                if self.is_complete() {
                    break;
                }
            }
        }
        Ok(used)
    }

    /// The batch with every resolvable unchanged value filled in, and
    /// `_unchanged` listing only the columns that stay unknown.
    pub fn finish(self) -> Result<RecordBatch, CurateError> {
        let Resolution { batch, slots, pending, offered, .. } = self;
        if slots.is_empty() {
            return Ok(batch);
        }
        let schema = batch.schema();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        let mut unresolved: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut by_col: HashMap<usize, Vec<(usize, Src)>> = HashMap::new();
        for s in &slots {
            let src = match s.src {
                Src::Pending(i) => pending[i].1.unwrap_or(Src::Missing),
                other => other,
            };
            by_col.entry(s.col).or_default().push((s.row, src));
        }
        let mut cols: Vec<_> = by_col.into_iter().collect();
        cols.sort_by_key(|(c, _)| *c);
        for (col, rows) in cols {
            let target = schema.field(col);
            // Array 0: the batch's column; array 1 + k: offered batch k's column, cast to its type.
            let mut arrays: Vec<Option<ArrayRef>> = vec![Some(batch.column(col).clone())];
            for o in &offered {
                let a =
                    o.schema().index_of(target.name()).ok().and_then(|i| cast(o.column(i), target.data_type()).ok());
                arrays.push(a);
            }
            let mut indices: Vec<(usize, usize)> = (0..batch.num_rows()).map(|r| (0, r)).collect();
            for (row, src) in rows {
                let from = match src {
                    Src::Batch(prev) => Some((0, prev)),
                    // A value that was itself unknown in the earlier file stays unknown.
                    Src::Offered(k, r) if arrays[k + 1].is_some() && !lists(&offered[k], r, target.name()) => {
                        Some((k + 1, r))
                    }
                    _ => None,
                };
                match from {
                    Some(f) => indices[row] = f,
                    None => unresolved.entry(row).or_default().push(col),
                }
            }
            // Unavailable arrays are never indexed; an empty stand-in keeps positions.
            let empty = arrow::array::new_empty_array(target.data_type());
            let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_deref().unwrap_or(empty.as_ref())).collect();
            columns[col] = interleave(&refs, &indices)?;
        }
        let idx = schema.index_of(meta::UNCHANGED).map_err(|_| missing(meta::UNCHANGED))?;
        let names: StringArray = (0..batch.num_rows())
            .map(|row| {
                unresolved.get(&row).map(|cols| {
                    let mut cols = cols.clone();
                    cols.sort_unstable();
                    cols.iter().map(|c| schema.field(*c).name().as_str()).collect::<Vec<_>>().join(",")
                })
            })
            .collect();
        columns[idx] = Arc::new(names);
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// Primary-key values of a curated batch's rows as one string per row
/// (formatters built once per batch, not per row).
struct Keys<'a> {
    columns: Vec<(&'a dyn Array, ArrayFormatter<'a>)>,
}

impl<'a> Keys<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, CurateError> {
        let schema = batch.schema_ref();
        let pk = schema.metadata().get("lablake.primary_key").map(String::as_str).unwrap_or("");
        let mut columns = Vec::new();
        for name in pk.split(',').filter(|n| !n.is_empty()) {
            let i = schema.index_of(name).map_err(|_| missing(name))?;
            let array = batch.column(i).as_ref();
            columns.push((array, ArrayFormatter::try_new(array, &FormatOptions::default())?));
        }
        Ok(Keys { columns })
    }

    /// The key of `row`; `None` when the table has no key columns or a key
    /// value is null (truncate rows).
    fn key(&self, row: usize) -> Option<String> {
        use std::fmt::Write;
        if self.columns.is_empty() {
            return None;
        }
        let mut out = String::new();
        for (n, (array, f)) in self.columns.iter().enumerate() {
            if array.is_null(row) {
                return None;
            }
            if n > 0 {
                out.push('\u{1f}');
            }
            write!(out, "{}", f.value(row)).ok()?;
        }
        Some(out)
    }
}

/// Whether `_unchanged` of `row` lists `column`.
fn lists(batch: &RecordBatch, row: usize, column: &str) -> bool {
    match string_column(batch, meta::UNCHANGED) {
        Ok(Some(a)) if !a.is_null(row) => a.value(row).split(',').any(|c| c == column),
        _ => false,
    }
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<Option<&'a StringArray>, CurateError> {
    match batch.schema().index_of(name) {
        Err(_) => Ok(None),
        Ok(i) => batch
            .column(i)
            .as_string_opt::<i32>()
            .map(Some)
            .ok_or_else(|| CurateError::Value { column: name.into(), reason: "not a utf8 column".into() }),
    }
}

fn missing(column: &str) -> CurateError {
    CurateError::Value { column: column.into(), reason: "missing from the curated batch".into() }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::BatchBuilder;
    use lablake_model::{Column, ColumnType, Op, SourceInfo, SourcePosition, TableId, TableSchema, Value};

    fn schema() -> Arc<TableSchema> {
        TableSchema::new(
            vec![
                Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: false },
                Column { name: "status".into(), ty: ColumnType::String, nullable: true },
                Column { name: "payload".into(), ty: ColumnType::String, nullable: true },
            ],
            vec![0],
        )
    }

    fn event(op: Op, id: i64, status: &str, payload: Option<&str>, seq: u32) -> ChangeEvent {
        let row = vec![
            Value::Int(id),
            Value::String(status.into()),
            match payload {
                Some(p) => Value::String(p.into()),
                None => Value::Unchanged,
            },
        ];
        let (before, after) = match op {
            Op::Delete => (Some(row), None),
            Op::Truncate => (None, None),
            _ => (None, Some(row)),
        };
        ChangeEvent {
            table: TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "msgs".into() },
            op,
            schema: schema(),
            before,
            after,
            source: SourceInfo {
                connector: "postgresql".into(),
                name: "pg".into(),
                server_id: 0,
                file: "".into(),
                pos: 0,
                row: 0,
                gtid: None,
                ts_ms: 0,
                position: SourcePosition::postgres(0x100, seq),
            },
            ts_ms: 0,
        }
    }

    use lablake_model::ChangeEvent;

    fn batch(events: &[ChangeEvent]) -> RecordBatch {
        let mut b = BatchBuilder::new(schema());
        for (i, e) in events.iter().enumerate() {
            b.push(e, 0, i as i64).unwrap();
        }
        b.finish().unwrap()
    }

    fn column(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let a = b.column(b.schema().index_of(name).unwrap()).as_string::<i32>().clone();
        a.iter().map(|v| v.map(str::to_owned)).collect()
    }

    #[test]
    fn batch_without_unchanged_values_is_untouched() {
        let b = batch(&[event(Op::Create, 1, "new", Some("{}"), 0)]);
        let r = Resolution::new(b.clone()).unwrap();
        assert!(r.is_complete());
        assert_eq!(r.finish().unwrap(), b);
    }

    #[test]
    fn values_come_from_earlier_rows_of_the_batch_through_chains() {
        let b = batch(&[
            event(Op::Create, 1, "new", Some("{\"a\":1}"), 0),
            event(Op::Update, 1, "seen", None, 1),
            event(Op::Update, 1, "done", None, 2),
            event(Op::Create, 2, "new", Some("{\"b\":2}"), 3),
            event(Op::Delete, 2, "new", Some("{\"b\":2}"), 4),
        ]);
        let r = Resolution::new(b).unwrap();
        assert!(r.is_complete());
        let out = r.finish().unwrap();
        assert_eq!(
            column(&out, "payload"),
            vec![
                Some("{\"a\":1}".into()),
                Some("{\"a\":1}".into()),
                Some("{\"a\":1}".into()),
                Some("{\"b\":2}".into()),
                Some("{\"b\":2}".into())
            ]
        );
        assert_eq!(column(&out, meta::UNCHANGED), vec![None; 5]);
    }

    #[test]
    fn values_come_from_the_newest_earlier_file_and_deletes_truncates_end_the_search() {
        let older = batch(&[event(Op::Create, 1, "new", Some("old"), 0), event(Op::Create, 3, "new", Some("x"), 1)]);
        let newer = batch(&[
            event(Op::Update, 1, "mid", Some("newer"), 2),
            event(Op::Delete, 3, "new", Some("x"), 3),
            event(Op::Create, 4, "new", Some("four"), 4),
        ]);
        let b = batch(&[
            event(Op::Update, 1, "done", None, 5),
            event(Op::Update, 3, "again", None, 6),
            event(Op::Update, 9, "unknown", None, 7),
            event(Op::Update, 1, "again", None, 8),
        ]);
        let mut r = Resolution::new(b).unwrap();
        assert!(!r.is_complete());
        r.offer(newer).unwrap();
        assert!(!r.is_complete()); // key 9 is still open
        r.offer(older).unwrap();
        let out = r.finish().unwrap();
        assert_eq!(column(&out, "payload"), vec![Some("newer".into()), None, None, Some("newer".into())]);
        // Unknown values stay listed; a deleted key's value is simply absent.
        assert_eq!(column(&out, meta::UNCHANGED), vec![None, Some("payload".into()), Some("payload".into()), None]);

        // A truncate in an earlier file ends the search for every open key.
        let truncated = batch(&[event(Op::Create, 1, "new", Some("old"), 0), event(Op::Truncate, 0, "", None, 1)]);
        let mut r = Resolution::new(batch(&[event(Op::Update, 1, "done", None, 5)])).unwrap();
        r.offer(truncated).unwrap();
        assert!(r.is_complete());
        assert_eq!(column(&r.finish().unwrap(), "payload"), vec![None]);
    }

    #[test]
    fn a_value_unknown_in_the_earlier_file_stays_unknown() {
        // Key 1's first change in the lake was already an unresolved update.
        let earlier = batch(&[event(Op::Update, 1, "seen", None, 0)]);
        let earlier = Resolution::new(earlier).unwrap().finish().unwrap();
        assert_eq!(column(&earlier, meta::UNCHANGED), vec![Some("payload".into())]);
        let mut r = Resolution::new(batch(&[event(Op::Update, 1, "done", None, 1)])).unwrap();
        r.offer(earlier).unwrap();
        let out = r.finish().unwrap();
        assert_eq!(column(&out, "payload"), vec![None]);
        assert_eq!(column(&out, meta::UNCHANGED), vec![Some("payload".into())]);
    }

    #[test]
    fn a_truncate_inside_the_batch_hides_everything_before_it() {
        let b = batch(&[
            event(Op::Create, 1, "new", Some("old"), 0),
            event(Op::Truncate, 0, "", None, 1),
            event(Op::Update, 1, "done", None, 2),
        ]);
        let r = Resolution::new(b).unwrap();
        assert!(r.is_complete());
        let out = r.finish().unwrap();
        assert_eq!(column(&out, "payload"), vec![Some("old".into()), None, None]);
        assert_eq!(column(&out, meta::OP), vec![Some("c".into()), Some("t".into()), Some("u".into())]);
    }
}
