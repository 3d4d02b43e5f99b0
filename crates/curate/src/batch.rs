use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, Float32Builder,
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
    UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, i256};
use arrow::record_batch::RecordBatch;
use lablake_model::{ChangeEvent, ColumnType, Op, TableId, TableSchema, Value};
use thiserror::Error;

/// Names of the CDC metadata columns.
pub mod meta {
    pub const OP: &str = "_op";
    pub const POSITION: &str = "_position";
    pub const COMMIT_TS: &str = "_commit_ts";
    pub const GTID: &str = "_gtid";
    pub const SOURCE: &str = "_source";
    pub const KAFKA_PARTITION: &str = "_kafka_partition";
    pub const KAFKA_OFFSET: &str = "_kafka_offset";
    /// Comma-separated names of the columns the source did not send because
    /// they did not change (PostgreSQL unchanged TOAST); those columns are
    /// null in the row and keep their previous value. Null when none.
    pub const UNCHANGED: &str = "_unchanged";
}

/// The indices of a curated schema's primary-key columns, in key order, as
/// its `lablake.primary_key` metadata names them (a name the schema lacks is
/// left out; empty without the metadata).
pub fn primary_key_indices(schema: &Schema) -> Vec<usize> {
    schema
        .metadata()
        .get("lablake.primary_key")
        .map(|s| s.split(',').filter_map(|c| schema.index_of(c).ok()).collect())
        .unwrap_or_default()
}

/// Errors of curation. A row error sends that record to the dead-letter topic.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CurateError {
    /// A value cannot be represented in its curated column (names the column).
    #[error("column `{column}`: {reason}")]
    Value { column: String, reason: String },
    /// A record's schema differs from the batch's; close the batch first.
    #[error("record schema differs from the open batch")]
    SchemaMismatch,
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The Arrow type of a curated column.
///
/// | source | Arrow |
/// |---|---|
/// | int8/16/24/32/64 | Int8/Int16/Int32/Int32/Int64 |
/// | uint8/16/24/32/64 | UInt8/UInt16/UInt32/UInt32/UInt64 |
/// | float, double | Float32, Float64 |
/// | decimal(p,s), p ≤ 38 | Decimal128(p,s) |
/// | decimal(p,s), p > 38 | Decimal256(p,s) |
/// | date | Date32 (zero dates → null) |
/// | time | Int64 microseconds (MySQL TIME is a signed duration) |
/// | datetime | Timestamp(µs) without zone (zero dates → null) |
/// | timestamp | Timestamp(µs, UTC) |
/// | year | UInt16 |
/// | string, enum, set, json | Utf8 |
/// | uuid, numeric (no precision), interval, timetz, array | Utf8 (text as in the envelope) |
/// | bool | Boolean |
/// | bytes, bit | Binary |
pub fn arrow_type(ty: &ColumnType) -> DataType {
    match ty {
        ColumnType::Int { bytes, unsigned: false } => match bytes {
            1 => DataType::Int8,
            2 => DataType::Int16,
            3 | 4 => DataType::Int32,
            _ => DataType::Int64,
        },
        ColumnType::Int { bytes, unsigned: true } => match bytes {
            1 => DataType::UInt8,
            2 => DataType::UInt16,
            3 | 4 => DataType::UInt32,
            _ => DataType::UInt64,
        },
        ColumnType::Float => DataType::Float32,
        ColumnType::Double => DataType::Float64,
        ColumnType::Decimal { precision, scale } if *precision <= 38 => DataType::Decimal128(*precision, *scale as i8),
        ColumnType::Decimal { precision, scale } => DataType::Decimal256(*precision, *scale as i8),
        ColumnType::Date => DataType::Date32,
        ColumnType::Time => DataType::Int64,
        ColumnType::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
        ColumnType::Year => DataType::UInt16,
        ColumnType::String | ColumnType::Enum | ColumnType::Set | ColumnType::Json => DataType::Utf8,
        ColumnType::Uuid | ColumnType::Numeric | ColumnType::Interval | ColumnType::TimeTz | ColumnType::Array => {
            DataType::Utf8
        }
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Bytes | ColumnType::Bit { .. } => DataType::Binary,
    }
}

/// The curated Arrow schema of a table: its columns, then the metadata columns.
/// Field metadata `lablake.type` keeps the source type (e.g. `json`, `time`).
pub fn curated_schema(table: &TableSchema) -> SchemaRef {
    let mut fields: Vec<Field> = table
        .columns
        .iter()
        .map(|c| {
            Field::new(&c.name, arrow_type(&c.ty), true)
                .with_metadata(std::collections::HashMap::from([("lablake.type".to_owned(), c.ty.to_string())]))
        })
        .collect();
    fields.push(Field::new(meta::OP, DataType::Utf8, false));
    fields.push(Field::new(meta::POSITION, DataType::Utf8, false));
    fields.push(Field::new(meta::COMMIT_TS, DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())), false));
    fields.push(Field::new(meta::GTID, DataType::Utf8, true));
    fields.push(Field::new(meta::SOURCE, DataType::Utf8, false));
    fields.push(Field::new(meta::KAFKA_PARTITION, DataType::Int32, false));
    fields.push(Field::new(meta::KAFKA_OFFSET, DataType::Int64, false));
    fields.push(Field::new(meta::UNCHANGED, DataType::Utf8, true));
    let pk: Vec<&str> = table.primary_key.iter().map(|i| table.columns[*i].name.as_str()).collect();
    let mut metadata = std::collections::HashMap::from([
        ("lablake.schema".to_owned(), table.fingerprint().to_owned()),
        ("lablake.primary_key".to_owned(), pk.join(",")),
    ]);
    if let Some(v) = table.version() {
        metadata.insert("lablake.schema_version".to_owned(), v.to_string());
    }
    Arc::new(Schema::new(fields).with_metadata(metadata))
}

/// Accumulates the changes of one table (one schema) straight into Arrow
/// column builders and builds a curated record batch. Rows are not kept as
/// events: memory is the columnar size of the batch, bounded by the caller's
/// batch policy.
pub struct BatchBuilder {
    schema: Arc<TableSchema>,
    columns: Vec<ColumnBuilder>,
    meta: MetaBuilders,
    rows: usize,
    summary: Option<BatchSummary>,
    /// Scratch for decimals parsed while a row is validated.
    decimals: Vec<Decimal>,
}

/// What a batch's rows say about it, kept as they are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    /// The table of the first row (a batch holds one table).
    pub table: TableId,
    /// The source name of the first row.
    pub source: String,
    /// Greatest source position among the rows.
    pub max_position: String,
    /// Greatest commit time among the rows, milliseconds since the epoch.
    pub max_commit_ms: i64,
}

impl BatchBuilder {
    pub fn new(schema: Arc<TableSchema>) -> Self {
        let columns = schema.columns.iter().map(|c| ColumnBuilder::new(&c.ty)).collect();
        BatchBuilder { schema, columns, meta: MetaBuilders::default(), rows: 0, summary: None, decimals: Vec::new() }
    }

    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Table, source and the newest position and commit time of the rows
    /// added so far; `None` while empty.
    pub fn summary(&self) -> Option<&BatchSummary> {
        self.summary.as_ref()
    }

    /// Whether a change of `schema` belongs in this batch (same columns, key and schema version).
    pub fn accepts(&self, schema: &Arc<TableSchema>) -> bool {
        Arc::ptr_eq(&self.schema, schema)
            || (self.schema.fingerprint() == schema.fingerprint() && self.schema.version() == schema.version())
    }

    /// Adds a change read at `partition`/`offset`. Checks every value first,
    /// so a bad row is rejected alone (to the dead-letter topic), nothing of
    /// it is added, and [`Self::finish`] cannot fail on values.
    ///
    /// A truncate (no row image) fits any batch of its table: it becomes a
    /// row with `_op = t` and every column null.
    pub fn push(&mut self, event: &ChangeEvent, partition: i32, offset: i64) -> Result<(), CurateError> {
        if event.op == Op::Truncate {
            let mut none = std::iter::empty();
            for b in &mut self.columns {
                b.append(&Value::Null, &mut none);
            }
        } else {
            if !self.accepts(&event.schema) {
                return Err(CurateError::SchemaMismatch);
            }
            let row = row_of(event);
            if row.len() != self.schema.columns.len() {
                return Err(CurateError::Value {
                    column: "*".into(),
                    reason: "row has the wrong number of values".into(),
                });
            }
            self.decimals.clear();
            for (c, v) in self.schema.columns.iter().zip(row) {
                check_value(&c.ty, v, &mut self.decimals)
                    .map_err(|reason| CurateError::Value { column: c.name.clone(), reason })?;
            }
            let mut decimals = self.decimals.drain(..);
            for (b, v) in self.columns.iter_mut().zip(row) {
                b.append(v, &mut decimals);
            }
        }
        self.meta.append(event, partition, offset);
        self.rows += 1;
        let src = &event.source;
        match &mut self.summary {
            None => {
                self.summary = Some(BatchSummary {
                    table: event.table.clone(),
                    source: src.name.to_string(),
                    max_position: src.position.as_str().to_owned(),
                    max_commit_ms: src.ts_ms,
                })
            }
            Some(s) => {
                if src.position.as_str() > s.max_position.as_str() {
                    s.max_position.clear();
                    s.max_position.push_str(src.position.as_str());
                }
                s.max_commit_ms = s.max_commit_ms.max(src.ts_ms);
            }
        }
        Ok(())
    }

    /// Builds the record batch and empties the builder.
    pub fn finish(&mut self) -> Result<RecordBatch, CurateError> {
        let schema = curated_schema(&self.schema);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for b in &mut self.columns {
            columns.push(b.finish());
        }
        self.meta.finish(&mut columns);
        self.rows = 0;
        self.summary = None;
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// Builders of the CDC metadata columns.
struct MetaBuilders {
    op: StringBuilder,
    position: StringBuilder,
    commit_ts: TimestampMicrosecondBuilder,
    gtid: StringBuilder,
    source: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    unchanged: StringBuilder,
}

impl Default for MetaBuilders {
    fn default() -> Self {
        MetaBuilders {
            op: StringBuilder::new(),
            position: StringBuilder::new(),
            commit_ts: TimestampMicrosecondBuilder::new().with_timezone(UTC),
            gtid: StringBuilder::new(),
            source: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            unchanged: StringBuilder::new(),
        }
    }
}

impl MetaBuilders {
    fn append(&mut self, e: &ChangeEvent, partition: i32, offset: i64) {
        self.op.append_value(e.op.code());
        self.position.append_value(e.source.position.as_str());
        self.commit_ts.append_value(e.source.ts_ms.saturating_mul(1000));
        self.gtid.append_option(e.source.gtid.as_deref());
        self.source.append_value(&e.source.name);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        match e.after.as_deref().filter(|row| row.iter().any(|v| matches!(v, Value::Unchanged))) {
            None => self.unchanged.append_null(),
            Some(row) => {
                let names: Vec<&str> = row
                    .iter()
                    .zip(&e.schema.columns)
                    .filter(|(v, _)| matches!(v, Value::Unchanged))
                    .map(|(_, c)| c.name.as_str())
                    .collect();
                self.unchanged.append_value(names.join(","));
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<ArrayRef>) {
        out.push(Arc::new(self.op.finish()));
        out.push(Arc::new(self.position.finish()));
        out.push(Arc::new(self.commit_ts.finish()));
        out.push(Arc::new(self.gtid.finish()));
        out.push(Arc::new(self.source.finish()));
        out.push(Arc::new(self.partition.finish()));
        out.push(Arc::new(self.offset.finish()));
        out.push(Arc::new(self.unchanged.finish()));
    }
}

const UTC: &str = "+00:00";

/// A decimal parsed (and range-checked) during validation.
enum Decimal {
    D128(i128),
    D256(i256),
}

/// The builder of one source column; its variant follows [`arrow_type`].
enum ColumnBuilder {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    Time(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    Year(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    D128(Decimal128Builder, u8, i8),
    D256(Decimal256Builder, u8, i8),
    Date(Date32Builder),
    DateTime(TimestampMicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
    Binary(BinaryBuilder),
    Utf8(StringBuilder),
    Bool(BooleanBuilder),
}

impl ColumnBuilder {
    fn new(ty: &ColumnType) -> Self {
        match (arrow_type(ty), ty) {
            (DataType::Int8, _) => ColumnBuilder::I8(Int8Builder::new()),
            (DataType::Int16, _) => ColumnBuilder::I16(Int16Builder::new()),
            (DataType::Int32, _) => ColumnBuilder::I32(Int32Builder::new()),
            (DataType::Int64, ColumnType::Time) => ColumnBuilder::Time(Int64Builder::new()),
            (DataType::Int64, _) => ColumnBuilder::I64(Int64Builder::new()),
            (DataType::UInt8, _) => ColumnBuilder::U8(UInt8Builder::new()),
            (DataType::UInt16, ColumnType::Year) => ColumnBuilder::Year(UInt16Builder::new()),
            (DataType::UInt16, _) => ColumnBuilder::U16(UInt16Builder::new()),
            (DataType::UInt32, _) => ColumnBuilder::U32(UInt32Builder::new()),
            (DataType::UInt64, _) => ColumnBuilder::U64(UInt64Builder::new()),
            (DataType::Float32, _) => ColumnBuilder::F32(Float32Builder::new()),
            (DataType::Float64, _) => ColumnBuilder::F64(Float64Builder::new()),
            (DataType::Decimal128(p, s), _) => ColumnBuilder::D128(Decimal128Builder::new(), p, s),
            (DataType::Decimal256(p, s), _) => ColumnBuilder::D256(Decimal256Builder::new(), p, s),
            (DataType::Date32, _) => ColumnBuilder::Date(Date32Builder::new()),
            (DataType::Timestamp(_, None), _) => ColumnBuilder::DateTime(TimestampMicrosecondBuilder::new()),
            (DataType::Timestamp(_, Some(_)), _) => {
                ColumnBuilder::Timestamp(TimestampMicrosecondBuilder::new().with_timezone(UTC))
            }
            (DataType::Binary, _) => ColumnBuilder::Binary(BinaryBuilder::new()),
            (DataType::Boolean, _) => ColumnBuilder::Bool(BooleanBuilder::new()),
            _ => ColumnBuilder::Utf8(StringBuilder::new()),
        }
    }

    /// Appends a value [`check_value`] accepted for this column; decimals
    /// come parsed from `decimals`, in column order.
    fn append(&mut self, v: &Value, decimals: &mut impl Iterator<Item = Decimal>) {
        match (self, v) {
            (ColumnBuilder::I8(b), Value::Int(i)) => b.append_value(*i as i8),
            (ColumnBuilder::I16(b), Value::Int(i)) => b.append_value(*i as i16),
            (ColumnBuilder::I32(b), Value::Int(i)) => b.append_value(*i as i32),
            (ColumnBuilder::I64(b), Value::Int(i)) => b.append_value(*i),
            (ColumnBuilder::Time(b), Value::Time(t)) => b.append_value(*t),
            (ColumnBuilder::U8(b), Value::UInt(i)) => b.append_value(*i as u8),
            (ColumnBuilder::U16(b), Value::UInt(i)) => b.append_value(*i as u16),
            (ColumnBuilder::Year(b), Value::Year(y)) => b.append_value(*y),
            (ColumnBuilder::U32(b), Value::UInt(i)) => b.append_value(*i as u32),
            (ColumnBuilder::U64(b), Value::UInt(i)) => b.append_value(*i),
            (ColumnBuilder::F32(b), Value::Float(f)) => b.append_value(*f),
            (ColumnBuilder::F64(b), Value::Double(f)) => b.append_value(*f),
            (ColumnBuilder::D128(b, ..), Value::Decimal(_)) => match decimals.next() {
                Some(Decimal::D128(x)) => b.append_value(x),
                _ => b.append_null(),
            },
            (ColumnBuilder::D256(b, ..), Value::Decimal(_)) => match decimals.next() {
                Some(Decimal::D256(x)) => b.append_value(x),
                _ => b.append_null(),
            },
            (ColumnBuilder::Date(b), Value::Date(d)) => b.append_option(d.days_since_epoch()),
            (ColumnBuilder::DateTime(b), Value::DateTime(d)) => b.append_option(d.micros_since_epoch()),
            (ColumnBuilder::Timestamp(b), Value::Timestamp(t)) => b.append_value(*t),
            (ColumnBuilder::Binary(b), Value::Bytes(x) | Value::Bit(x)) => b.append_value(x),
            (ColumnBuilder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (
                ColumnBuilder::Utf8(b),
                Value::String(s) | Value::Enum(s) | Value::Set(s) | Value::Json(s) | Value::Decimal(s),
            ) => b.append_value(s),
            (b, _) => b.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::I8(b) => b.append_null(),
            ColumnBuilder::I16(b) => b.append_null(),
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) | ColumnBuilder::Time(b) => b.append_null(),
            ColumnBuilder::U8(b) => b.append_null(),
            ColumnBuilder::U16(b) | ColumnBuilder::Year(b) => b.append_null(),
            ColumnBuilder::U32(b) => b.append_null(),
            ColumnBuilder::U64(b) => b.append_null(),
            ColumnBuilder::F32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::D128(b, ..) => b.append_null(),
            ColumnBuilder::D256(b, ..) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::DateTime(b) | ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::I8(b) => Arc::new(b.finish()),
            ColumnBuilder::I16(b) => Arc::new(b.finish()),
            ColumnBuilder::I32(b) => Arc::new(b.finish()),
            ColumnBuilder::I64(b) | ColumnBuilder::Time(b) => Arc::new(b.finish()),
            ColumnBuilder::U8(b) => Arc::new(b.finish()),
            ColumnBuilder::U16(b) | ColumnBuilder::Year(b) => Arc::new(b.finish()),
            ColumnBuilder::U32(b) => Arc::new(b.finish()),
            ColumnBuilder::U64(b) => Arc::new(b.finish()),
            ColumnBuilder::F32(b) => Arc::new(b.finish()),
            ColumnBuilder::F64(b) => Arc::new(b.finish()),
            // Precision and scale were checked when the builder was made
            // (`arrow_type`); values were range-checked by `parse_decimal`.
            ColumnBuilder::D128(b, p, s) => {
                let a = b.finish();
                let n = a.len();
                Arc::new(a.with_precision_and_scale(*p, *s).unwrap_or_else(|_| null_decimal128(n)))
            }
            ColumnBuilder::D256(b, p, s) => {
                let a = b.finish();
                let n = a.len();
                Arc::new(a.with_precision_and_scale(*p, *s).unwrap_or_else(|_| null_decimal256(n)))
            }
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::DateTime(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish().with_timezone(UTC)),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

fn null_decimal128(n: usize) -> arrow::array::Decimal128Array {
    let mut b = Decimal128Builder::with_capacity(n);
    b.append_nulls(n);
    b.finish()
}

fn null_decimal256(n: usize) -> arrow::array::Decimal256Array {
    let mut b = Decimal256Builder::with_capacity(n);
    b.append_nulls(n);
    b.finish()
}

/// The row image a curated row shows: `after`, or `before` for deletes.
fn row_of(e: &ChangeEvent) -> &[Value] {
    e.key_row().unwrap_or(&[])
}

/// Whether `v` fits a column of type `ty`; a decimal is parsed once here and
/// queued in `decimals` for the append.
fn check_value(ty: &ColumnType, v: &Value, decimals: &mut Vec<Decimal>) -> Result<(), String> {
    let ok = match (ty, v) {
        (_, Value::Null | Value::Unchanged) => true,
        (ColumnType::Int { unsigned: false, .. }, Value::Int(_)) => true,
        (ColumnType::Int { unsigned: true, .. }, Value::UInt(_)) => true,
        (ColumnType::Float, Value::Float(_)) | (ColumnType::Double, Value::Double(_)) => true,
        (ColumnType::Decimal { precision, scale }, Value::Decimal(s)) => {
            let digits = parse_decimal(s, *precision, *scale)?;
            let parsed = if *precision <= 38 {
                digits.parse::<i128>().ok().map(Decimal::D128)
            } else {
                i256::from_string(&digits).map(Decimal::D256)
            };
            decimals.push(parsed.ok_or_else(|| "decimal out of range".to_owned())?);
            true
        }
        (ColumnType::Date, Value::Date(_)) | (ColumnType::DateTime, Value::DateTime(_)) => true,
        (ColumnType::Time, Value::Time(_)) | (ColumnType::Timestamp, Value::Timestamp(_)) => true,
        (ColumnType::Year, Value::Year(_)) => true,
        (ColumnType::String, Value::String(_)) | (ColumnType::Enum, Value::Enum(_)) => true,
        (ColumnType::Set, Value::Set(_)) | (ColumnType::Json, Value::Json(_)) => true,
        (ColumnType::Bytes, Value::Bytes(_)) | (ColumnType::Bit { .. }, Value::Bit(_)) => true,
        (ColumnType::Bool, Value::Bool(_)) | (ColumnType::Array, Value::Json(_)) => true,
        (ColumnType::Uuid | ColumnType::Interval | ColumnType::TimeTz, Value::String(_)) => true,
        (ColumnType::Numeric, Value::Decimal(_)) => true,
        _ => false,
    };
    if ok { Ok(()) } else { Err(format!("value does not match column type {ty}")) }
}

/// Decimal text → unscaled integer digits (as text) at exactly `scale`.
fn parse_decimal(s: &str, precision: u8, scale: u8) -> Result<String, String> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a decimal".into());
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale as usize {
        return Err(format!("more than {scale} fractional digits"));
    }
    let int = int.trim_start_matches('0');
    let mut digits = String::with_capacity(int.len() + scale as usize + 1);
    if neg {
        digits.push('-');
    }
    digits.push_str(int);
    digits.push_str(frac_trimmed);
    for _ in frac_trimmed.len()..scale as usize {
        digits.push('0');
    }
    if int.len() + scale as usize > precision as usize {
        return Err(format!("more than {precision} digits"));
    }
    if digits.is_empty() || digits == "-" {
        digits = "0".into();
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Decimal256Type, UInt64Type};
    use lablake_model::{Column, Op, SourceInfo, SourcePosition};

    fn event(schema: Arc<TableSchema>, row: Vec<Value>, op: Op, n: u32) -> ChangeEvent {
        ChangeEvent {
            table: TableId { tenant: "t".into(), database: "d".into(), table: "x".into() },
            op,
            schema,
            before: (op == Op::Delete).then(|| row.clone()),
            after: (op != Op::Delete).then_some(row),
            source: SourceInfo {
                connector: "mysql".into(),
                name: "main".into(),
                server_id: 1,
                file: "binlog.000001".into(),
                pos: 100,
                row: n,
                gtid: None,
                ts_ms: 1_700_000_000_000,
                position: SourcePosition::mysql(1, 100, n),
            },
            ts_ms: 0,
        }
    }

    #[test]
    fn builds_typed_columns_and_metadata() {
        let schema = TableSchema::new(
            vec![
                Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: true }, nullable: false },
                Column { name: "d".into(), ty: ColumnType::Decimal { precision: 10, scale: 2 }, nullable: true },
                Column { name: "big".into(), ty: ColumnType::Decimal { precision: 65, scale: 30 }, nullable: true },
            ],
            vec![0],
        );
        let mut b = BatchBuilder::new(schema.clone());
        b.push(
            &event(
                schema.clone(),
                vec![
                    Value::UInt(u64::MAX),
                    Value::Decimal("-12.5".into()),
                    Value::Decimal("12345678901234567890123456789012345.000000000000000000000000000001".into()),
                ],
                Op::Create,
                0,
            ),
            2,
            7,
        )
        .unwrap();
        b.push(&event(schema.clone(), vec![Value::UInt(1), Value::Null, Value::Null], Op::Delete, 1), 2, 8).unwrap();
        let err = b.push(
            &event(schema.clone(), vec![Value::UInt(2), Value::Decimal("1.234".into()), Value::Null], Op::Create, 2),
            2,
            9,
        );
        assert!(matches!(err, Err(CurateError::Value { ref column, .. }) if column == "d"));
        let err = b.push(&event(schema.clone(), vec![Value::Int(2), Value::Null, Value::Null], Op::Create, 2), 2, 9);
        assert!(err.is_err());
        let summary = b.summary().unwrap();
        assert_eq!(&*summary.table.table, "x");
        assert_eq!(summary.max_position, SourcePosition::mysql(1, 100, 1).as_str(), "rejected rows do not count");
        let batch = b.finish().unwrap();
        assert!(b.summary().is_none());
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(0).as_primitive::<UInt64Type>().value(0), u64::MAX);
        let d = batch.column(1).as_primitive::<Decimal128Type>();
        assert_eq!(d.value(0), -1250);
        assert!(d.is_null(1));
        let big = batch.column(2).as_primitive::<Decimal256Type>();
        assert_eq!(big.value_as_string(0), "12345678901234567890123456789012345.000000000000000000000000000001");
        assert_eq!(batch.column_by_name(meta::OP).unwrap().as_string::<i32>().value(1), "d");
        assert_eq!(
            batch.column_by_name(meta::KAFKA_OFFSET).unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(1),
            8
        );
        assert!(b.is_empty());
        // The builder is reusable after finish.
        b.push(&event(schema.clone(), vec![Value::UInt(3), Value::Null, Value::Null], Op::Create, 3), 2, 10).unwrap();
        let again = b.finish().unwrap();
        assert_eq!(again.num_rows(), 1);
        assert_eq!(again.schema(), batch.schema());
        assert_eq!(again.column(0).as_primitive::<UInt64Type>().value(0), 3);
    }

    #[test]
    fn postgres_types_are_curated() {
        let c = |name: &str, ty: ColumnType| Column { name: name.into(), ty, nullable: true };
        let schema = TableSchema::new(
            vec![
                c("b", ColumnType::Bool),
                c("n", ColumnType::Numeric),
                c("u", ColumnType::Uuid),
                c("a", ColumnType::Array),
            ],
            vec![],
        );
        let mut b = BatchBuilder::new(schema.clone());
        let row = vec![
            Value::Bool(true),
            Value::Decimal("NaN".into()),
            Value::String("0f0e0d0c-0b0a-0908-0706-050403020100".into()),
            Value::Json("[\"1\",null]".into()),
        ];
        b.push(&event(schema.clone(), row, Op::Create, 0), 0, 0).unwrap();
        let batch = b.finish().unwrap();
        assert!(batch.column(0).as_boolean().value(0));
        assert_eq!(batch.column(1).as_string::<i32>().value(0), "NaN");
        assert_eq!(batch.column(3).as_string::<i32>().value(0), "[\"1\",null]");
    }

    #[test]
    fn decimal_text_is_scaled_exactly() {
        assert_eq!(parse_decimal("-0.50", 5, 2).unwrap(), "-50");
        assert_eq!(parse_decimal("0", 5, 2).unwrap(), "00");
        assert_eq!(parse_decimal("123.4", 5, 2).unwrap(), "12340");
        assert!(parse_decimal("1234.4", 5, 2).is_err());
        assert!(parse_decimal("1.2.3", 5, 2).is_err());
    }
}
