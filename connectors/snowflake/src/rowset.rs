//! Query results: Snowflake's JSON rowsets and Arrow IPC rowsets (inline
//! `rowsetBase64` and result chunks) to rows of optional strings, in the
//! textual forms Snowflake's JSON rowsets use (numbers as decimal text,
//! dates as days since the epoch, timestamps as `seconds.fraction` since the
//! epoch, binary as hex), so both formats read the same.

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int8Array, Int16Array,
    Int32Array, Int64Array, LargeBinaryArray, LargeStringArray, StringArray, StructArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use arrow::datatypes::{DataType, TimeUnit};
use arrow::ipc::reader::StreamReader;
use serde::Deserialize;

/// One result column as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ColumnMeta {
    pub name: String,
    /// Snowflake type: `fixed`, `real`, `text`, `date`, `timestamp_ntz`, …
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub scale: Option<i64>,
    #[serde(default)]
    pub precision: Option<i64>,
    #[serde(default)]
    pub nullable: bool,
}

pub type Row = Vec<Option<String>>;

/// Rows of a JSON rowset (`[[..],[..]]`; every value a string or null).
pub(crate) fn json_rows(value: &serde_json::Value) -> Result<Vec<Row>, String> {
    let rows = value.as_array().ok_or("rowset is not an array")?;
    rows.iter()
        .map(|r| {
            r.as_array()
                .ok_or_else(|| "row is not an array".to_owned())?
                .iter()
                .map(|v| match v {
                    serde_json::Value::Null => Ok(None),
                    serde_json::Value::String(s) => Ok(Some(s.clone())),
                    serde_json::Value::Bool(b) => Ok(Some(if *b { "1" } else { "0" }.to_owned())),
                    serde_json::Value::Number(n) => Ok(Some(n.to_string())),
                    other => Ok(Some(other.to_string())),
                })
                .collect()
        })
        .collect()
}

/// A JSON result chunk: rows without the enclosing brackets (`[..],[..]`).
pub(crate) fn json_chunk_rows(body: &[u8]) -> Result<Vec<Row>, String> {
    let mut text = Vec::with_capacity(body.len() + 2);
    text.push(b'[');
    text.extend_from_slice(body);
    text.push(b']');
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| format!("JSON chunk: {e}"))?;
    json_rows(&value)
}

/// Rows of an Arrow IPC stream.
pub(crate) fn arrow_rows(bytes: &[u8], columns: &[ColumnMeta]) -> Result<Vec<Row>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| format!("Arrow stream: {e}"))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format!("Arrow batch: {e}"))?;
        let cols: Vec<&ArrayRef> = batch.columns().iter().collect();
        for i in 0..batch.num_rows() {
            let mut row = Vec::with_capacity(cols.len());
            for (c, array) in cols.iter().enumerate() {
                row.push(cell(array, i, columns.get(c))?);
            }
            out.push(row);
        }
    }
    Ok(out)
}

fn scaled(v: i128, scale: i64) -> String {
    if scale <= 0 {
        return v.to_string();
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded =
        if digits.len() <= scale { format!("{}{digits}", "0".repeat(scale - digits.len() + 1)) } else { digits };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// `seconds.fraction` with `digits` fraction digits from an integer count of
/// `10^-digits` seconds.
fn epoch(v: i64, digits: u32) -> String {
    scaled(i128::from(v), i64::from(digits))
}

fn downcast<T: 'static>(a: &ArrayRef) -> Result<&T, String> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| format!("unexpected Arrow array for {:?}", a.data_type()))
}

fn cell(a: &ArrayRef, i: usize, meta: Option<&ColumnMeta>) -> Result<Option<String>, String> {
    if a.is_null(i) {
        return Ok(None);
    }
    let scale = meta.and_then(|m| m.scale).unwrap_or(0);
    let ty = meta.map(|m| m.type_name.to_ascii_lowercase()).unwrap_or_default();
    let is_time = ty.starts_with("timestamp") || ty == "time";
    Ok(Some(match a.data_type() {
        DataType::Utf8 => downcast::<StringArray>(a)?.value(i).to_owned(),
        DataType::LargeUtf8 => downcast::<LargeStringArray>(a)?.value(i).to_owned(),
        DataType::Boolean => (if downcast::<BooleanArray>(a)?.value(i) { "1" } else { "0" }).to_owned(),
        // Snowflake sends FIXED as scaled integers, TIME/TIMESTAMP as scaled epoch integers.
        DataType::Int8 => scaled(i128::from(downcast::<Int8Array>(a)?.value(i)), scale),
        DataType::Int16 => scaled(i128::from(downcast::<Int16Array>(a)?.value(i)), scale),
        DataType::Int32 => scaled(i128::from(downcast::<Int32Array>(a)?.value(i)), scale),
        DataType::Int64 => scaled(i128::from(downcast::<Int64Array>(a)?.value(i)), scale),
        DataType::Decimal128(_, s) => scaled(downcast::<Decimal128Array>(a)?.value(i), i64::from(*s)),
        DataType::Float64 => {
            let v = downcast::<Float64Array>(a)?.value(i);
            if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { v.to_string() }
        }
        DataType::Date32 => downcast::<Date32Array>(a)?.value(i).to_string(),
        DataType::Timestamp(unit, _) => {
            let (v, digits) = match unit {
                TimeUnit::Second => (downcast::<TimestampSecondArray>(a)?.value(i), 0),
                TimeUnit::Millisecond => (downcast::<TimestampMillisecondArray>(a)?.value(i), 3),
                TimeUnit::Microsecond => (downcast::<TimestampMicrosecondArray>(a)?.value(i), 6),
                TimeUnit::Nanosecond => (downcast::<TimestampNanosecondArray>(a)?.value(i), 9),
            };
            // As many fraction digits as the column's scale, like JSON rowsets.
            let want = meta.and_then(|m| m.scale).map_or(digits, |s| s.clamp(0, 9) as u32);
            match want.cmp(&digits) {
                std::cmp::Ordering::Less => epoch(v.div_euclid(10i64.pow(digits - want)), want),
                std::cmp::Ordering::Greater => epoch(v.saturating_mul(10i64.pow(want - digits)), want),
                std::cmp::Ordering::Equal => epoch(v, digits),
            }
        }
        // Snowflake's TIMESTAMP_TZ/NTZ/LTZ with high precision: {epoch, fraction[, timezone]}.
        DataType::Struct(_) if is_time => {
            let s = downcast::<StructArray>(a)?;
            let epoch_col = s.column_by_name("epoch").ok_or("timestamp struct without epoch")?;
            let secs = downcast::<Int64Array>(epoch_col)?.value(i);
            let frac = match s.column_by_name("fraction") {
                Some(f) => downcast::<Int32Array>(f)?.value(i),
                None => 0,
            };
            format!("{secs}.{frac:09}")
        }
        DataType::Binary => hex(downcast::<BinaryArray>(a)?.value(i)),
        DataType::LargeBinary => hex(downcast::<LargeBinaryArray>(a)?.value(i)),
        _ => arrow::util::display::array_value_to_string(a, i).map_err(|e| format!("Arrow value: {e}"))?,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};
    use arrow::ipc::writer::StreamWriter;
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    fn meta(name: &str, ty: &str, scale: i64) -> ColumnMeta {
        ColumnMeta { name: name.into(), type_name: ty.into(), scale: Some(scale), precision: None, nullable: true }
    }

    #[test]
    fn json_rowsets_and_chunks() {
        let v: serde_json::Value = serde_json::from_str(r#"[["1","a"],[null,"b"]]"#).unwrap();
        assert_eq!(
            json_rows(&v).unwrap(),
            vec![vec![Some("1".into()), Some("a".into())], vec![None, Some("b".into())]]
        );
        assert_eq!(json_chunk_rows(br#"["2",null],["3","x"]"#).unwrap().len(), 2);
        assert!(json_rows(&serde_json::json!({"a": 1})).is_err());
        assert!(json_chunk_rows(b"[1,").is_err());
    }

    #[test]
    fn arrow_rowsets_read_like_json_ones() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("N", DataType::Int64, true),
            Field::new("D", DataType::Int32, true),
            Field::new("S", DataType::Utf8, true),
            Field::new("T", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            Field::new("DEC", DataType::Decimal128(12, 2), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![Some(-5), None])),
                Arc::new(Int32Array::from(vec![Some(1234), Some(-7)])),
                Arc::new(StringArray::from(vec![Some("é"), Some("x")])),
                Arc::new(TimestampMicrosecondArray::from(vec![Some(1_700_000_000_123_456), None])),
                Arc::new(Decimal128Array::from(vec![Some(-5), Some(12345)]).with_precision_and_scale(12, 2).unwrap()),
            ],
        )
        .unwrap();
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let cols = [
            meta("N", "fixed", 0),
            meta("D", "fixed", 2),
            meta("S", "text", 0),
            meta("T", "timestamp_ntz", 6),
            meta("DEC", "fixed", 2),
        ];
        let rows = arrow_rows(&buf, &cols).unwrap();
        assert_eq!(
            rows[0],
            vec![
                Some("-5".into()),
                Some("12.34".into()),
                Some("é".into()),
                Some("1700000000.123456".into()),
                Some("-0.05".into())
            ]
        );
        assert_eq!(rows[1], vec![None, Some("-0.07".into()), Some("x".into()), None, Some("123.45".into())]);
        // A nanosecond Arrow timestamp of a TIMESTAMP(6) column reads with six digits.
        let ns = Arc::new(Schema::new(vec![Field::new("T", DataType::Timestamp(TimeUnit::Nanosecond, None), true)]));
        let b = RecordBatch::try_new(
            ns.clone(),
            vec![Arc::new(TimestampNanosecondArray::from(vec![1_700_000_000_123_456_789]))],
        )
        .unwrap();
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &ns).unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
        }
        let rows = arrow_rows(&buf, &[meta("T", "timestamp_tz", 6)]).unwrap();
        assert_eq!(rows[0][0].as_deref(), Some("1700000000.123456"));
        assert!(arrow_rows(b"garbage", &cols).is_err());
        assert!(arrow_rows(b"", &cols).unwrap().is_empty());
    }
}
