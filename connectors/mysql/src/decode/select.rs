//! Values read with `SELECT` (snapshot chunks, binary protocol) → the same
//! [`Value`]s the binlog decoder produces for the same column, so a snapshot
//! row equals a streamed row of the same data.
//!
//! The snapshot session runs with `time_zone = '+00:00'` (TIMESTAMP values
//! arrive as UTC wall time) and `character_set_results = NULL` (text arrives
//! in the column's own charset and goes through the binlog's charset
//! decoder). Key values travel as text between chunks ([`key_text`]) and go
//! back to the server as typed parameters ([`key_param`]).

use lablake_model::{Date, DateTime, Value};
use mysql_common::value::Value as My;

use super::charset::Charset;
use super::json;
use super::table::Kind;

/// Converts one selected value of a column of kind `kind`.
pub(crate) fn from_select(kind: &Kind, v: My) -> Result<Value, String> {
    if let My::NULL = v {
        return Ok(Value::Null);
    }
    let unexpected = |what: &str| format!("unexpected {what} value for a {} column", kind_name(kind));
    Ok(match kind {
        Kind::Int { unsigned, .. } => match v {
            My::Int(i) if *unsigned => Value::UInt(i as u64),
            My::Int(i) => Value::Int(i),
            My::UInt(u) if *unsigned => Value::UInt(u),
            My::UInt(u) => Value::Int(u as i64),
            My::Bytes(b) => parse_int(&b, *unsigned)?,
            _ => return Err(unexpected("non-integer")),
        },
        Kind::Float => match v {
            My::Float(f) => Value::Float(f),
            My::Double(d) => Value::Float(d as f32),
            My::Bytes(b) => Value::Float(text(&b)?.parse().map_err(|_| unexpected("text"))?),
            _ => return Err(unexpected("non-float")),
        },
        Kind::Double => match v {
            My::Double(d) => Value::Double(d),
            My::Float(f) => Value::Double(f64::from(f)),
            My::Bytes(b) => Value::Double(text(&b)?.parse().map_err(|_| unexpected("text"))?),
            _ => return Err(unexpected("non-double")),
        },
        Kind::Decimal { .. } => match v {
            My::Bytes(b) => Value::Decimal(normalize_decimal(text(&b)?)),
            My::Int(i) => Value::Decimal(i.to_string()),
            My::UInt(u) => Value::Decimal(u.to_string()),
            _ => return Err(unexpected("non-decimal")),
        },
        Kind::Year => match v {
            My::Int(y) => Value::Year(u16::try_from(y).map_err(|_| unexpected("out-of-range"))?),
            My::UInt(y) => Value::Year(u16::try_from(y).map_err(|_| unexpected("out-of-range"))?),
            My::Bytes(b) => Value::Year(text(&b)?.parse().map_err(|_| unexpected("text"))?),
            _ => return Err(unexpected("non-year")),
        },
        Kind::Date => match v {
            My::Date(year, month, day, ..) => Value::Date(Date { year, month, day }),
            _ => return Err(unexpected("non-date")),
        },
        Kind::TimeV1 | Kind::Time2 { .. } => match v {
            My::Time(neg, days, h, m, s, us) => {
                let secs = (i64::from(days) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s);
                let total = secs * 1_000_000 + i64::from(us);
                Value::Time(if neg { -total } else { total })
            }
            _ => return Err(unexpected("non-time")),
        },
        Kind::DateTimeV1 | Kind::DateTime2 { .. } => match v {
            My::Date(year, month, day, hour, minute, second, micros) => {
                Value::DateTime(DateTime { date: Date { year, month, day }, hour, minute, second, micros })
            }
            _ => return Err(unexpected("non-datetime")),
        },
        Kind::TimestampV1 | Kind::Timestamp2 { .. } => match v {
            // The session time zone is UTC; the zero timestamp is epoch 0 in the binlog too.
            My::Date(year, month, day, hour, minute, second, micros) => {
                let dt = DateTime { date: Date { year, month, day }, hour, minute, second, micros };
                Value::Timestamp(dt.micros_since_epoch().unwrap_or(0))
            }
            _ => return Err(unexpected("non-timestamp")),
        },
        Kind::Bit { bits } => match v {
            My::Bytes(mut b) => {
                // Big-endian, as many bytes as the binlog carries.
                let want = usize::from(*bits).div_ceil(8);
                if b.len() < want {
                    let mut padded = vec![0; want - b.len()];
                    padded.extend_from_slice(&b);
                    b = padded;
                } else if b.len() > want {
                    b.drain(..b.len() - want);
                }
                Value::Bit(b)
            }
            My::Int(i) => Value::Bit(be_bytes(i as u64, *bits)),
            My::UInt(u) => Value::Bit(be_bytes(u, *bits)),
            _ => return Err(unexpected("non-bit")),
        },
        Kind::Enum { .. } => Value::Enum(String::from_utf8_lossy(&bytes(v, kind)?).into_owned()),
        Kind::Set { .. } => Value::Set(String::from_utf8_lossy(&bytes(v, kind)?).into_owned()),
        Kind::Str { charset, json, pad_to, .. } => {
            let mut b = bytes(v, kind)?;
            if *json {
                Value::Json(charset.decode(&b)?)
            } else if charset.is_text() {
                Value::String(charset.decode(&b)?)
            } else {
                if let Some(n) = pad_to
                    && b.len() < *n
                {
                    b.resize(*n, 0);
                }
                Value::Bytes(b)
            }
        }
        // The server prints JSON its own way; the canonical form is what the
        // binlog decoder renders.
        Kind::Json { .. } => {
            let b = bytes(v, kind)?;
            let t = Charset::Utf8.decode(&b)?;
            Value::Json(json::parse_text(&t)?.to_text())
        }
        Kind::Raw { .. } => Value::Bytes(bytes(v, kind)?),
    })
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Int { .. } => "integer",
        Kind::Float | Kind::Double => "floating-point",
        Kind::Decimal { .. } => "DECIMAL",
        Kind::Year => "YEAR",
        Kind::Date => "DATE",
        Kind::TimeV1 | Kind::Time2 { .. } => "TIME",
        Kind::DateTimeV1 | Kind::DateTime2 { .. } => "DATETIME",
        Kind::TimestampV1 | Kind::Timestamp2 { .. } => "TIMESTAMP",
        Kind::Bit { .. } => "BIT",
        Kind::Enum { .. } => "ENUM",
        Kind::Set { .. } => "SET",
        Kind::Str { .. } => "string",
        Kind::Json { .. } => "JSON",
        Kind::Raw { .. } => "spatial",
    }
}

fn bytes(v: My, kind: &Kind) -> Result<Vec<u8>, String> {
    match v {
        My::Bytes(b) => Ok(b),
        My::Int(i) => Ok(i.to_string().into_bytes()),
        My::UInt(u) => Ok(u.to_string().into_bytes()),
        _ => Err(format!("unexpected non-string value for a {} column", kind_name(kind))),
    }
}

fn text(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| "numeric text is not ASCII".to_owned())
}

fn parse_int(b: &[u8], unsigned: bool) -> Result<Value, String> {
    let t = text(b)?;
    let bad = |_| "integer text out of range".to_owned();
    Ok(if unsigned { Value::UInt(t.parse().map_err(bad)?) } else { Value::Int(t.parse().map_err(bad)?) })
}

/// The binlog decoder's decimal text: a `-` only for non-zero values.
fn normalize_decimal(t: &str) -> String {
    match t.strip_prefix('-') {
        Some(rest) if rest.bytes().all(|c| c == b'0' || c == b'.') => rest.to_owned(),
        _ => t.to_owned(),
    }
}

fn be_bytes(v: u64, bits: u16) -> Vec<u8> {
    let n = usize::from(bits).div_ceil(8);
    v.to_be_bytes()[8 - n.min(8)..].to_vec()
}

/// The text form of a key value, `None` for kinds that cannot be
/// compared reliably as a chunk boundary (floating point, ENUM/SET order by
/// index, BIT, JSON, spatial).
pub(crate) fn key_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Decimal(d) => d.clone(),
        Value::Year(y) => y.to_string(),
        Value::Date(d) => d.to_string(),
        Value::DateTime(dt) => format_datetime(dt),
        Value::Timestamp(us) => format_datetime(&DateTime::from_micros_since_epoch(*us)),
        Value::Time(us) => super::temporal::format_time(*us, true),
        Value::String(s) => s.clone(),
        Value::Bytes(b) => hex(b),
        _ => return None,
    })
}

fn format_datetime(dt: &DateTime) -> String {
    format!("{} {:02}:{:02}:{:02}.{:06}", dt.date, dt.hour, dt.minute, dt.second, dt.micros)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether a column of this kind can be a chunk key.
pub(crate) fn chunkable(kind: &Kind) -> bool {
    match kind {
        Kind::Int { .. }
        | Kind::Decimal { .. }
        | Kind::Year
        | Kind::Date
        | Kind::TimeV1
        | Kind::Time2 { .. }
        | Kind::DateTimeV1
        | Kind::DateTime2 { .. }
        | Kind::TimestampV1
        | Kind::Timestamp2 { .. } => true,
        // Text compares in the column's collation on both sides; binary as bytes.
        Kind::Str { json, charset, .. } => !json && *charset != Charset::Unsupported,
        _ => false,
    }
}

/// The SQL placeholder and parameter that compare a key column with the
/// text from [`key_text`].
pub(crate) fn key_param(kind: &Kind, text: &str) -> Result<(&'static str, My), String> {
    let bad = || "chunk boundary does not fit the key column (table altered?)".to_owned();
    Ok(match kind {
        Kind::Int { unsigned: true, .. } => ("?", My::UInt(text.parse().map_err(|_| bad())?)),
        Kind::Int { unsigned: false, .. } | Kind::Year => ("?", My::Int(text.parse().map_err(|_| bad())?)),
        Kind::Decimal { .. } => ("CAST(? AS DECIMAL(65,30))", My::Bytes(text.as_bytes().to_vec())),
        Kind::Date => ("CAST(? AS DATE)", My::Bytes(text.as_bytes().to_vec())),
        Kind::DateTimeV1 | Kind::DateTime2 { .. } | Kind::TimestampV1 | Kind::Timestamp2 { .. } => {
            ("CAST(? AS DATETIME(6))", My::Bytes(text.as_bytes().to_vec()))
        }
        Kind::TimeV1 | Kind::Time2 { .. } => ("CAST(? AS TIME(6))", My::Bytes(text.as_bytes().to_vec())),
        Kind::Str { charset, .. } if charset.is_text() => ("?", My::Bytes(text.as_bytes().to_vec())),
        Kind::Str { .. } => ("UNHEX(?)", My::Bytes(text.as_bytes().to_vec())),
        _ => return Err(bad()),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn selected_values_match_the_binlog_forms() {
        let int = |unsigned| Kind::Int { bytes: 4, unsigned };
        assert_eq!(from_select(&int(false), My::Int(-5)).unwrap(), Value::Int(-5));
        assert_eq!(from_select(&int(true), My::UInt(u64::MAX)).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(from_select(&int(true), My::Int(7)).unwrap(), Value::UInt(7));
        assert_eq!(from_select(&int(false), My::NULL).unwrap(), Value::Null);
        let dec = Kind::Decimal { precision: 10, scale: 2 };
        assert_eq!(from_select(&dec, My::Bytes(b"-0.00".to_vec())).unwrap(), Value::Decimal("0.00".into()));
        assert_eq!(from_select(&dec, My::Bytes(b"-12.50".to_vec())).unwrap(), Value::Decimal("-12.50".into()));
        let ts = Kind::Timestamp2 { fsp: 6 };
        assert_eq!(
            from_select(&ts, My::Date(2023, 11, 14, 22, 13, 20, 123_456)).unwrap(),
            Value::Timestamp(1_700_000_000_123_456)
        );
        assert_eq!(from_select(&ts, My::Date(0, 0, 0, 0, 0, 0, 0)).unwrap(), Value::Timestamp(0));
        assert_eq!(
            from_select(&Kind::Time2 { fsp: 0 }, My::Time(true, 1, 2, 3, 4, 5)).unwrap(),
            Value::Time(-(((24 + 2) * 3600 + 3 * 60 + 4) * 1_000_000 + 5))
        );
        assert_eq!(from_select(&Kind::Bit { bits: 12 }, My::Bytes(vec![1])).unwrap(), Value::Bit(vec![0, 1]));
        let latin1 = Kind::Str { prefix: 1, charset: Charset::from_name("latin1"), json: false, pad_to: None };
        assert_eq!(from_select(&latin1, My::Bytes(vec![0xe9])).unwrap(), Value::String("é".into()));
        let bin = Kind::Str { prefix: 1, charset: Charset::Binary, json: false, pad_to: Some(4) };
        assert_eq!(from_select(&bin, My::Bytes(vec![1, 2])).unwrap(), Value::Bytes(vec![1, 2, 0, 0]));
        let json = Kind::Json { prefix: 4 };
        assert_eq!(
            from_select(&json, My::Bytes(br#"{"b": 1, "a": [true, null]}"#.to_vec())).unwrap(),
            Value::Json(r#"{"a":[true,null],"b":1}"#.into())
        );
        let e = Kind::Enum { pack: 1, labels: Arc::from(vec!["a".to_owned()]) };
        assert_eq!(from_select(&e, My::Bytes(b"a".to_vec())).unwrap(), Value::Enum("a".into()));
        // Wrong shapes are errors, never panics.
        assert!(from_select(&Kind::Date, My::Int(1)).is_err());
        assert!(from_select(&int(false), My::Bytes(b"x".to_vec())).is_err());
    }

    #[test]
    fn key_text_round_trips_through_parameters() {
        let dt = Value::DateTime(DateTime {
            date: Date { year: 2024, month: 2, day: 29 },
            hour: 1,
            minute: 2,
            second: 3,
            micros: 4,
        });
        assert_eq!(key_text(&dt).unwrap(), "2024-02-29 01:02:03.000004");
        assert_eq!(key_text(&Value::Bytes(vec![0xab, 1])).unwrap(), "ab01");
        assert_eq!(key_text(&Value::Double(1.0)), None);
        let (sql, p) = key_param(&Kind::Int { bytes: 8, unsigned: false }, "-42").unwrap();
        assert_eq!((sql, p), ("?", My::Int(-42)));
        assert!(key_param(&Kind::Int { bytes: 8, unsigned: true }, "-1").is_err());
        let bin = Kind::Str { prefix: 1, charset: Charset::Binary, json: false, pad_to: None };
        assert_eq!(key_param(&bin, "ab01").unwrap().0, "UNHEX(?)");
        assert!(!chunkable(&Kind::Double));
        assert!(chunkable(&Kind::Int { bytes: 1, unsigned: true }));
    }
}
