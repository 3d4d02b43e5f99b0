use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, Float32Builder, Float64Builder,
    Int8Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder, UInt8Builder,
    UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, i256};
use arrow::record_batch::RecordBatch;
use lablake_model::{ChangeEvent, ColumnType, TableSchema, Value};
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
    let pk: Vec<&str> = table.primary_key.iter().map(|i| table.columns[*i].name.as_str()).collect();
    Arc::new(Schema::new(fields).with_metadata(std::collections::HashMap::from([
        ("lablake.schema".to_owned(), table.fingerprint().to_owned()),
        ("lablake.primary_key".to_owned(), pk.join(",")),
    ])))
}

/// Accumulates the changes of one table (one schema) and builds a curated
/// record batch. Memory is bounded by the caller's batch policy.
pub struct BatchBuilder {
    schema: Arc<TableSchema>,
    rows: Vec<(ChangeEvent, i32, i64)>,
}

impl BatchBuilder {
    pub fn new(schema: Arc<TableSchema>) -> Self {
        BatchBuilder { schema, rows: Vec::new() }
    }

    pub fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The changes added so far, in order.
    pub fn events(&self) -> impl Iterator<Item = &ChangeEvent> {
        self.rows.iter().map(|(e, _, _)| e)
    }

    /// Whether a change of `schema` belongs in this batch (same columns and key).
    pub fn accepts(&self, schema: &Arc<TableSchema>) -> bool {
        Arc::ptr_eq(&self.schema, schema) || self.schema.fingerprint() == schema.fingerprint()
    }

    /// Adds a change read at `partition`/`offset`. Checks every value first,
    /// so a bad row is rejected alone (to the dead-letter topic) and
    /// [`Self::finish`] cannot fail on values.
    pub fn push(&mut self, event: ChangeEvent, partition: i32, offset: i64) -> Result<(), CurateError> {
        if !self.accepts(&event.schema) {
            return Err(CurateError::SchemaMismatch);
        }
        let row = row_of(&event);
        if row.len() != self.schema.columns.len() {
            return Err(CurateError::Value { column: "*".into(), reason: "row has the wrong number of values".into() });
        }
        for (c, v) in self.schema.columns.iter().zip(row) {
            check_value(&c.ty, v).map_err(|reason| CurateError::Value { column: c.name.clone(), reason })?;
        }
        self.rows.push((event, partition, offset));
        Ok(())
    }

    /// Builds the record batch and empties the builder.
    pub fn finish(&mut self) -> Result<RecordBatch, CurateError> {
        let rows = std::mem::take(&mut self.rows);
        let schema = curated_schema(&self.schema);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (i, c) in self.schema.columns.iter().enumerate() {
            columns.push(build_column(&c.ty, rows.iter().map(|(e, _, _)| &row_of(e)[i])));
        }
        let n = rows.len();
        let mut op = StringBuilder::with_capacity(n, n);
        let mut pos = StringBuilder::with_capacity(n, n * 32);
        let mut ts = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("+00:00");
        let mut gtid = StringBuilder::new();
        let mut source = StringBuilder::new();
        let mut part = Int32Builder::with_capacity(n);
        let mut off = Int64Builder::with_capacity(n);
        for (e, p, o) in &rows {
            op.append_value(e.op.code());
            pos.append_value(e.source.position.as_str());
            ts.append_value(e.source.ts_ms.saturating_mul(1000));
            gtid.append_option(e.source.gtid.as_deref());
            source.append_value(&e.source.name);
            part.append_value(*p);
            off.append_value(*o);
        }
        columns.push(Arc::new(op.finish()));
        columns.push(Arc::new(pos.finish()));
        columns.push(Arc::new(ts.finish()));
        columns.push(Arc::new(gtid.finish()));
        columns.push(Arc::new(source.finish()));
        columns.push(Arc::new(part.finish()));
        columns.push(Arc::new(off.finish()));
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// The row image a curated row shows: `after`, or `before` for deletes.
fn row_of(e: &ChangeEvent) -> &[Value] {
    e.key_row().unwrap_or(&[])
}

fn check_value(ty: &ColumnType, v: &Value) -> Result<(), String> {
    let ok = match (ty, v) {
        (_, Value::Null) => true,
        (ColumnType::Int { unsigned: false, .. }, Value::Int(_)) => true,
        (ColumnType::Int { unsigned: true, .. }, Value::UInt(_)) => true,
        (ColumnType::Float, Value::Float(_)) | (ColumnType::Double, Value::Double(_)) => true,
        (ColumnType::Decimal { precision, scale }, Value::Decimal(s)) => {
            return parse_decimal(s, *precision, *scale).map(|_| ());
        }
        (ColumnType::Date, Value::Date(_)) | (ColumnType::DateTime, Value::DateTime(_)) => true,
        (ColumnType::Time, Value::Time(_)) | (ColumnType::Timestamp, Value::Timestamp(_)) => true,
        (ColumnType::Year, Value::Year(_)) => true,
        (ColumnType::String, Value::String(_)) | (ColumnType::Enum, Value::Enum(_)) => true,
        (ColumnType::Set, Value::Set(_)) | (ColumnType::Json, Value::Json(_)) => true,
        (ColumnType::Bytes, Value::Bytes(_)) | (ColumnType::Bit { .. }, Value::Bit(_)) => true,
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

fn build_column<'a>(ty: &ColumnType, values: impl Iterator<Item = &'a Value>) -> ArrayRef {
    macro_rules! simple {
        ($builder:expr, $pat:pat => $val:expr) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    $pat => b.append_value($val),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    match arrow_type(ty) {
        DataType::Int8 => simple!(Int8Builder::new(), Value::Int(i) => *i as i8),
        DataType::Int16 => simple!(Int16Builder::new(), Value::Int(i) => *i as i16),
        DataType::Int32 => simple!(Int32Builder::new(), Value::Int(i) => *i as i32),
        DataType::Int64 => match ty {
            ColumnType::Time => simple!(Int64Builder::new(), Value::Time(t) => *t),
            _ => simple!(Int64Builder::new(), Value::Int(i) => *i),
        },
        DataType::UInt8 => simple!(UInt8Builder::new(), Value::UInt(i) => *i as u8),
        DataType::UInt16 => match ty {
            ColumnType::Year => simple!(UInt16Builder::new(), Value::Year(y) => *y),
            _ => simple!(UInt16Builder::new(), Value::UInt(i) => *i as u16),
        },
        DataType::UInt32 => simple!(UInt32Builder::new(), Value::UInt(i) => *i as u32),
        DataType::UInt64 => simple!(UInt64Builder::new(), Value::UInt(i) => *i),
        DataType::Float32 => simple!(Float32Builder::new(), Value::Float(f) => *f),
        DataType::Float64 => simple!(Float64Builder::new(), Value::Double(f) => *f),
        DataType::Decimal128(p, s) => {
            let mut b = Decimal128Builder::new();
            for v in values {
                match v {
                    Value::Decimal(d) => match parse_decimal(d, p, s as u8).ok().and_then(|t| t.parse::<i128>().ok()) {
                        Some(x) => b.append_value(x),
                        None => b.append_null(),
                    },
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish().with_precision_and_scale(p, s).unwrap_or_else(|_| Decimal128Builder::new().finish()))
        }
        DataType::Decimal256(p, s) => {
            let mut b = Decimal256Builder::new();
            for v in values {
                match v {
                    Value::Decimal(d) => match parse_decimal(d, p, s as u8).ok().and_then(|t| i256::from_string(&t)) {
                        Some(x) => b.append_value(x),
                        None => b.append_null(),
                    },
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish().with_precision_and_scale(p, s).unwrap_or_else(|_| Decimal256Builder::new().finish()))
        }
        DataType::Date32 => {
            let mut b = Date32Builder::new();
            for v in values {
                match v {
                    Value::Date(d) => b.append_option(d.days_since_epoch()),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(_, None) => {
            let mut b = TimestampMicrosecondBuilder::new();
            for v in values {
                match v {
                    Value::DateTime(d) => b.append_option(d.micros_since_epoch()),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(_, Some(_)) => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone("+00:00");
            for v in values {
                match v {
                    Value::Timestamp(t) => b.append_value(*t),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            for v in values {
                match v {
                    Value::Bytes(x) | Value::Bit(x) => b.append_value(x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = StringBuilder::new();
            for v in values {
                match v {
                    Value::String(s) | Value::Enum(s) | Value::Set(s) | Value::Json(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Decimal128Type, Decimal256Type, UInt64Type};
    use lablake_model::{Column, Op, SourceInfo, SourcePosition, TableId};

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
            event(
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
        b.push(event(schema.clone(), vec![Value::UInt(1), Value::Null, Value::Null], Op::Delete, 1), 2, 8).unwrap();
        let err = b.push(
            event(schema.clone(), vec![Value::UInt(2), Value::Decimal("1.234".into()), Value::Null], Op::Create, 2),
            2,
            9,
        );
        assert!(matches!(err, Err(CurateError::Value { ref column, .. }) if column == "d"));
        let err = b.push(event(schema.clone(), vec![Value::Int(2), Value::Null, Value::Null], Op::Create, 2), 2, 9);
        assert!(err.is_err());
        let batch = b.finish().unwrap();
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
