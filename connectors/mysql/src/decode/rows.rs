//! Rows events (WRITE/UPDATE/DELETE v1 and v2, PARTIAL_UPDATE_ROWS) to row
//! images and row changes. Pure: no I/O, no allocation beyond the output.

use lablake_model::{Op, Value};
use mysql_common::binlog::events::RowsEventData;

use super::json::{self, JsonDiff};
use super::reader::{ReadResult, Reader, sign_extend};
use super::table::{Kind, TableInfo};
use super::{decimal, temporal};
use crate::MysqlError;

/// One column of a row image as logged.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Not in the image (`binlog_row_image` is not FULL).
    Absent,
    Value(Value),
    /// A MySQL JSON partial update of this column (after images of
    /// `PARTIAL_UPDATE_ROWS` only).
    JsonDiff(Vec<JsonDiff>),
}

/// The before and after images of one row as logged, before completion.
#[derive(Debug, Clone, PartialEq)]
pub struct RowImages {
    pub op: Op,
    pub before: Option<Vec<Cell>>,
    pub after: Option<Vec<Cell>>,
}

/// One complete row change: both images (as present for the op) hold every
/// column of the table in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub op: Op,
    pub before: Option<Vec<Value>>,
    pub after: Option<Vec<Value>>,
}

/// Decodes every row of a rows event into complete [`RowChange`]s.
///
/// This is the function the live reader and the fixture tests use; it is
/// public so decode throughput can be benchmarked on its own.
///
/// Columns missing from an image (a MINIMAL or NOBLOB row image) are taken
/// from the before image for updates; otherwise the row is an error, as is a
/// JSON partial update whose before image lacks the document.
pub fn decode_rows(table: &TableInfo, rows: &RowsEventData<'_>) -> Result<Vec<RowChange>, MysqlError> {
    decode_row_images(table, rows)?.into_iter().map(|r| complete(table, r)).collect()
}

/// Decodes every row of a rows event into its images as logged (absent
/// columns and JSON diffs kept). Lower level than [`decode_rows`].
pub fn decode_row_images(table: &TableInfo, rows: &RowsEventData<'_>) -> Result<Vec<RowImages>, MysqlError> {
    let mut out = Vec::new();
    for_each_row_image(table, rows, |r| out.push(r))?;
    Ok(out)
}

/// Decodes a rows event row by row without giving up at the first bad row:
/// one result per row, in order. A row whose images cannot be completed is
/// an `Err` and the next rows follow; a row whose bytes cannot be read ends
/// the list with an `Err` standing for it and every row after it (rows are
/// not length-prefixed, so nothing after an unreadable row can be found).
pub fn decode_rows_each(table: &TableInfo, rows: &RowsEventData<'_>) -> Vec<Result<RowChange, MysqlError>> {
    let mut out = Vec::new();
    if let Err(e) = for_each_row_image(table, rows, |r| out.push(complete(table, r))) {
        out.push(Err(e));
    }
    out
}

fn for_each_row_image(
    table: &TableInfo,
    rows: &RowsEventData<'_>,
    mut f: impl FnMut(RowImages),
) -> Result<(), MysqlError> {
    let ncols = table.kinds.len();
    if rows.num_columns() != ncols as u64 {
        return Err(MysqlError::decode(
            &table.qualified_name(),
            "ROWS",
            format!("rows event has {} columns, table map {ncols}", rows.num_columns()),
        ));
    }
    let (op, partial) = match rows {
        RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => (Op::Create, false),
        RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => (Op::Update, false),
        RowsEventData::PartialUpdateRowsEvent(_) => (Op::Update, true),
        RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => (Op::Delete, false),
    };
    let before_cols = rows.columns_before_image().map(|b| (0..ncols).map(|i| i < b.len() && b[i]).collect::<Vec<_>>());
    let after_cols = rows.columns_after_image().map(|b| (0..ncols).map(|i| i < b.len() && b[i]).collect::<Vec<_>>());
    let mut r = Reader::new(rows.rows_data());
    while !r.is_empty() {
        let left = r.len();
        let before = match &before_cols {
            Some(cols) => Some(read_image(table, &mut r, cols, false)?),
            None => None,
        };
        let after = match &after_cols {
            Some(cols) => Some(read_image(table, &mut r, cols, partial)?),
            None => None,
        };
        if r.len() == left {
            return Err(MysqlError::decode(&table.qualified_name(), "ROWS", "rows event with empty row images"));
        }
        f(RowImages { op, before, after });
    }
    Ok(())
}

fn read_image(
    table: &TableInfo,
    r: &mut Reader<'_>,
    present: &[bool],
    shared_image: bool,
) -> Result<Vec<Cell>, MysqlError> {
    let row_err = |reason: String| MysqlError::decode(&table.qualified_name(), "ROWS", reason);
    let mut partial_json = vec![false; table.json_columns.len()];
    if shared_image {
        let options = r.lenenc().map_err(row_err)?;
        if options & 1 != 0 {
            let bytes = r.take(table.json_columns.len().div_ceil(8)).map_err(row_err)?;
            for (j, slot) in partial_json.iter_mut().enumerate() {
                *slot = bytes[j / 8] >> (j % 8) & 1 == 1;
            }
        }
    }
    let count = present.iter().filter(|p| **p).count();
    let nulls = r.take(count.div_ceil(8)).map_err(row_err)?;
    let mut cells = Vec::with_capacity(present.len());
    let mut image_i = 0usize;
    for (i, kind) in table.kinds.iter().enumerate() {
        if !present[i] {
            cells.push(Cell::Absent);
            continue;
        }
        let is_null = nulls[image_i / 8] >> (image_i % 8) & 1 == 1;
        image_i += 1;
        if is_null {
            cells.push(Cell::Value(Value::Null));
            continue;
        }
        let col_err =
            |reason: String| MysqlError::decode(&table.qualified_name(), &table.schema.columns[i].name, reason);
        let is_partial = match kind {
            Kind::Json { .. } => {
                let j = table.json_columns.iter().position(|c| *c == i).unwrap_or(usize::MAX);
                partial_json.get(j).copied().unwrap_or(false)
            }
            _ => false,
        };
        let cell = if is_partial {
            let Kind::Json { prefix } = kind else { return Err(col_err("partial update of a non-JSON column".into())) };
            let bytes = r.prefixed(usize::from(*prefix)).map_err(col_err)?;
            Cell::JsonDiff(json::read_diffs(bytes).map_err(col_err)?)
        } else {
            Cell::Value(decode_value(kind, r).map_err(col_err)?)
        };
        cells.push(cell);
    }
    Ok(cells)
}

/// Decodes one non-NULL value.
pub(crate) fn decode_value(kind: &Kind, r: &mut Reader<'_>) -> ReadResult<Value> {
    Ok(match kind {
        Kind::Int { bytes, unsigned } => {
            let n = usize::from(*bytes);
            let raw = r.uint_le(n)?;
            if *unsigned { Value::UInt(raw) } else { Value::Int(sign_extend(raw, 8 * u32::from(*bytes))) }
        }
        Kind::Float => Value::Float(f32::from_bits(r.uint_le(4)? as u32)),
        Kind::Double => Value::Double(f64::from_bits(r.uint_le(8)?)),
        Kind::Decimal { precision, scale } => {
            let bytes = r.take(decimal::binary_size(*precision, *scale))?;
            Value::Decimal(decimal::decode(bytes, *precision, *scale)?)
        }
        Kind::Year => {
            let y = r.u8()?;
            Value::Year(if y == 0 { 0 } else { 1900 + u16::from(y) })
        }
        Kind::Date => temporal::date(r)?,
        Kind::TimeV1 => temporal::time_v1(r)?,
        Kind::Time2 { fsp } => temporal::time2(r, *fsp)?,
        Kind::DateTimeV1 => temporal::datetime_v1(r)?,
        Kind::DateTime2 { fsp } => temporal::datetime2(r, *fsp)?,
        Kind::TimestampV1 => temporal::timestamp_v1(r)?,
        Kind::Timestamp2 { fsp } => temporal::timestamp2(r, *fsp)?,
        Kind::Bit { bits } => Value::Bit(r.take(usize::from(*bits).div_ceil(8))?.to_vec()),
        Kind::Enum { pack, labels } => {
            let i = r.uint_le(usize::from(*pack))? as usize;
            match i {
                // Index 0 is MySQL's "invalid value" ENUM: the empty string.
                0 => Value::Enum(String::new()),
                i => Value::Enum(labels.get(i - 1).cloned().ok_or_else(|| format!("ENUM index {i} out of range"))?),
            }
        }
        Kind::Set { pack, labels } => {
            let bits = r.uint_le(usize::from(*pack))?;
            if labels.len() < 64 && bits >> labels.len() != 0 {
                return Err("SET bit without a label".into());
            }
            let mut out = String::new();
            for (i, l) in labels.iter().enumerate() {
                if bits >> i & 1 == 1 {
                    if !out.is_empty() {
                        out.push(',');
                    }
                    out.push_str(l);
                }
            }
            Value::Set(out)
        }
        Kind::Str { prefix, charset, json, pad_to } => {
            let bytes = r.prefixed(usize::from(*prefix))?;
            if *json {
                Value::Json(charset.decode(bytes)?)
            } else if charset.is_text() {
                Value::String(charset.decode(bytes)?)
            } else {
                let mut b = bytes.to_vec();
                if let Some(n) = pad_to
                    && b.len() < *n
                {
                    b.resize(*n, 0);
                }
                Value::Bytes(b)
            }
        }
        Kind::Json { prefix } => {
            let bytes = r.prefixed(usize::from(*prefix))?;
            Value::Json(json::from_binary(bytes)?.to_text())
        }
        Kind::Raw { prefix } => Value::Bytes(r.prefixed(usize::from(*prefix))?.to_vec()),
    })
}

/// Completes the images of one row (fills unchanged columns of updates,
/// applies JSON diffs) or explains why it cannot.
pub(crate) fn complete(table: &TableInfo, row: RowImages) -> Result<RowChange, MysqlError> {
    let name = |i: usize| table.schema.columns.get(i).map_or("?", |c| c.name.as_str()).to_owned();
    let not_full = |i: usize, image: &str| {
        MysqlError::decode(
            &table.qualified_name(),
            &name(i),
            format!("column missing from the {image} image; binlog_row_image must be FULL"),
        )
    };
    let before: Option<Vec<Value>> = match row.before {
        None => None,
        Some(cells) => Some(
            cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| match c {
                    Cell::Value(v) => Ok(v),
                    Cell::Absent | Cell::JsonDiff(_) => Err(not_full(i, "before")),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let after: Option<Vec<Value>> = match row.after {
        None => None,
        // A map + collect reuses the cells' allocation for the values.
        Some(cells) => Some(
            cells
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let prior = before.as_ref().and_then(|b| b.get(i));
                    Ok(match c {
                        Cell::Value(v) => v,
                        Cell::Absent => match prior {
                            Some(v) if row.op == Op::Update => v.clone(),
                            _ => return Err(not_full(i, "after")),
                        },
                        Cell::JsonDiff(diffs) => {
                            let Some(Value::Json(text)) = prior else {
                                return Err(MysqlError::decode(
                                    &table.qualified_name(),
                                    &name(i),
                                    "JSON partial update without the JSON document in the before image; \
                                     binlog_row_image must be FULL",
                                ));
                            };
                            let col_err =
                                |reason: String| MysqlError::decode(&table.qualified_name(), &name(i), reason);
                            let mut doc = json::parse_text(text).map_err(col_err)?;
                            for d in &diffs {
                                json::apply_diff(&mut doc, d).map_err(col_err)?;
                            }
                            Value::Json(doc.to_text())
                        }
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(RowChange { op: row.op, before, after })
}
