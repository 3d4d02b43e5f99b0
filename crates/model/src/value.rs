//! Exact values and column types.
//!
//! Every source value maps to one [`Value`] variant without loss: integers keep
//! their signedness and width, decimals keep every digit as text, temporal
//! values keep microseconds, character data is decoded with its charset, and
//! ENUM/SET arrive as labels.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::ModelError;

/// A calendar date as stored by the source. Zero parts are allowed because
/// MySQL permits `0000-00-00` and `2024-00-00` in non-strict modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Days since 1970-01-01, or `None` for zero/invalid dates.
    pub fn days_since_epoch(&self) -> Option<i32> {
        if self.month == 0 || self.month > 12 || self.day == 0 || self.day > days_in_month(self.year, self.month) {
            return None;
        }
        Some(days_from_civil(i64::from(self.year), u32::from(self.month), u32::from(self.day)) as i32)
    }

    /// The date of a day number (days since 1970-01-01).
    pub fn from_days_since_epoch(days: i32) -> Self {
        let (y, m, d) = civil_from_days(i64::from(days));
        Date { year: y as u16, month: m as u8, day: d as u8 }
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A wall-clock date and time without time zone, microsecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateTime {
    pub date: Date,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub micros: u32,
}

impl DateTime {
    /// Microseconds since the epoch when read as UTC, or `None` for zero dates.
    pub fn micros_since_epoch(&self) -> Option<i64> {
        let days = i64::from(self.date.days_since_epoch()?);
        Some(
            ((days * 24 + i64::from(self.hour)) * 60 + i64::from(self.minute)) * 60_000_000
                + i64::from(self.second) * 1_000_000
                + i64::from(self.micros),
        )
    }

    /// The inverse of [`DateTime::micros_since_epoch`].
    pub fn from_micros_since_epoch(micros: i64) -> Self {
        let days = micros.div_euclid(86_400_000_000);
        let rem = micros.rem_euclid(86_400_000_000);
        let secs = rem / 1_000_000;
        DateTime {
            date: Date::from_days_since_epoch(days as i32),
            hour: (secs / 3600) as u8,
            minute: ((secs / 60) % 60) as u8,
            second: (secs % 60) as u8,
            micros: (rem % 1_000_000) as u32,
        }
    }
}

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}T{:02}:{:02}:{:02}.{:06}", self.date, self.hour, self.minute, self.second, self.micros)
    }
}

/// One exact value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Signed integer of any width up to 64 bits.
    Int(i64),
    /// Unsigned integer of any width up to 64 bits.
    UInt(u64),
    Float(f32),
    Double(f64),
    /// Exact decimal as canonical text (`-123.4500`), up to 65 digits.
    Decimal(String),
    Date(Date),
    /// MySQL TIME: a signed duration in microseconds (range ±838:59:59).
    Time(i64),
    /// Date and time without zone.
    DateTime(DateTime),
    /// An instant: microseconds since the epoch, UTC.
    Timestamp(i64),
    Year(u16),
    /// Character data, already decoded from its charset.
    String(String),
    Bytes(Vec<u8>),
    /// ENUM label.
    Enum(String),
    /// SET labels joined by `,` in definition order (as MySQL prints them).
    Set(String),
    /// BIT(n) as big-endian bytes.
    Bit(Vec<u8>),
    /// JSON document as text.
    Json(String),
    /// Not sent by the source because it did not change (a PostgreSQL
    /// TOASTed value in an UPDATE without the old row): the previous value
    /// of the column stands. Only in `after` images of updates.
    Unchanged,
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Rough in-memory size in bytes, for byte budgets.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Decimal(s) | Value::String(s) | Value::Enum(s) | Value::Set(s) | Value::Json(s) => 16 + s.len(),
            Value::Bytes(b) | Value::Bit(b) => 16 + b.len(),
            _ => 16,
        }
    }
}

/// The type of a column, as far as Lablake needs to keep values exact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// Integer of `bytes` width (1, 2, 3, 4 or 8).
    Int {
        bytes: u8,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: u8,
        scale: u8,
    },
    Date,
    Time,
    DateTime,
    Timestamp,
    Year,
    String,
    Bytes,
    Enum,
    Set,
    Bit {
        bits: u16,
    },
    Json,
    /// PostgreSQL boolean ([`Value::Bool`]).
    Bool,
    /// UUID as canonical lowercase text ([`Value::String`]).
    Uuid,
    /// Decimal without declared precision (PostgreSQL `numeric`): canonical
    /// text of any length, or `NaN`, `Infinity`, `-Infinity`
    /// ([`Value::Decimal`]).
    Numeric,
    /// PostgreSQL `interval` in the server's `postgres` output style
    /// (`1 year 2 mons 3 days 04:05:06.000007`) ([`Value::String`]).
    Interval,
    /// PostgreSQL `timetz` as text (`04:05:06.789+02`) ([`Value::String`]).
    TimeTz,
    /// PostgreSQL array as a JSON array of its elements' text forms (nested
    /// for multi-dimensional arrays, `null` for NULL elements) ([`Value::Json`]).
    Array,
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::Int { bytes, unsigned } => {
                write!(f, "{}int{}", if *unsigned { "u" } else { "" }, u32::from(*bytes) * 8)
            }
            ColumnType::Float => f.write_str("float"),
            ColumnType::Double => f.write_str("double"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Time => f.write_str("time"),
            ColumnType::DateTime => f.write_str("datetime"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::Year => f.write_str("year"),
            ColumnType::String => f.write_str("string"),
            ColumnType::Bytes => f.write_str("bytes"),
            ColumnType::Enum => f.write_str("enum"),
            ColumnType::Set => f.write_str("set"),
            ColumnType::Bit { bits } => write!(f, "bit({bits})"),
            ColumnType::Json => f.write_str("json"),
            ColumnType::Bool => f.write_str("bool"),
            ColumnType::Uuid => f.write_str("uuid"),
            ColumnType::Numeric => f.write_str("numeric"),
            ColumnType::Interval => f.write_str("interval"),
            ColumnType::TimeTz => f.write_str("timetz"),
            ColumnType::Array => f.write_str("array"),
        }
    }
}

impl FromStr for ColumnType {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || ModelError::UnknownType(s.to_owned());
        Ok(match s {
            "int8" => ColumnType::Int { bytes: 1, unsigned: false },
            "int16" => ColumnType::Int { bytes: 2, unsigned: false },
            "int24" => ColumnType::Int { bytes: 3, unsigned: false },
            "int32" => ColumnType::Int { bytes: 4, unsigned: false },
            "int64" => ColumnType::Int { bytes: 8, unsigned: false },
            "uint8" => ColumnType::Int { bytes: 1, unsigned: true },
            "uint16" => ColumnType::Int { bytes: 2, unsigned: true },
            "uint24" => ColumnType::Int { bytes: 3, unsigned: true },
            "uint32" => ColumnType::Int { bytes: 4, unsigned: true },
            "uint64" => ColumnType::Int { bytes: 8, unsigned: true },
            "float" => ColumnType::Float,
            "double" => ColumnType::Double,
            "date" => ColumnType::Date,
            "time" => ColumnType::Time,
            "datetime" => ColumnType::DateTime,
            "timestamp" => ColumnType::Timestamp,
            "year" => ColumnType::Year,
            "string" => ColumnType::String,
            "bytes" => ColumnType::Bytes,
            "enum" => ColumnType::Enum,
            "set" => ColumnType::Set,
            "json" => ColumnType::Json,
            "bool" => ColumnType::Bool,
            "uuid" => ColumnType::Uuid,
            "numeric" => ColumnType::Numeric,
            "interval" => ColumnType::Interval,
            "timetz" => ColumnType::TimeTz,
            "array" => ColumnType::Array,
            _ => {
                if let Some(args) = s.strip_prefix("decimal(").and_then(|r| r.strip_suffix(')')) {
                    let (p, sc) = args.split_once(',').ok_or_else(unknown)?;
                    let precision: u8 = p.trim().parse().map_err(|_| unknown())?;
                    let scale: u8 = sc.trim().parse().map_err(|_| unknown())?;
                    if precision == 0 || precision > 76 || scale > precision {
                        return Err(unknown());
                    }
                    ColumnType::Decimal { precision, scale }
                } else if let Some(arg) = s.strip_prefix("bit(").and_then(|r| r.strip_suffix(')')) {
                    let bits: u16 = arg.parse().map_err(|_| unknown())?;
                    if bits == 0 || bits > 64 {
                        return Err(unknown());
                    }
                    ColumnType::Bit { bits }
                } else {
                    return Err(unknown());
                }
            }
        })
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
}

/// The columns of a table at one point in time, with its primary key.
///
/// Build it with [`TableSchema::new`] and do not mutate it afterwards: the
/// fingerprint and the envelope's schema fragment are computed once there.
#[derive(Debug, Clone)]
pub struct TableSchema {
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary-key columns, in key order.
    pub primary_key: Vec<usize>,
    fingerprint: String,
    /// The table's schema-history version of this shape, once registered
    /// (see `lablake_checkpoint::SchemaVersion`); `None` before.
    version: Option<u32>,
    /// `"schema":"…",["schema_version":n,]"columns":[…],"pk":[…]` as written in every envelope.
    pub(crate) envelope_fragment: Vec<u8>,
}

impl PartialEq for TableSchema {
    fn eq(&self, other: &Self) -> bool {
        self.columns == other.columns && self.primary_key == other.primary_key
    }
}

impl Eq for TableSchema {}

impl std::hash::Hash for TableSchema {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.columns.hash(state);
        self.primary_key.hash(state);
    }
}

impl TableSchema {
    pub fn new(columns: Vec<Column>, primary_key: Vec<usize>) -> Arc<Self> {
        let fingerprint = compute_fingerprint(&columns, &primary_key);
        let envelope_fragment = crate::envelope::schema_fragment(&fingerprint, None, &columns, &primary_key);
        Arc::new(TableSchema { columns, primary_key, fingerprint, version: None, envelope_fragment })
    }

    /// The same schema marked with its schema-history version (a new `Arc`:
    /// schemas are immutable once built).
    pub fn with_version(&self, version: u32) -> Arc<Self> {
        let envelope_fragment =
            crate::envelope::schema_fragment(&self.fingerprint, Some(version), &self.columns, &self.primary_key);
        Arc::new(TableSchema {
            columns: self.columns.clone(),
            primary_key: self.primary_key.clone(),
            fingerprint: self.fingerprint.clone(),
            version: Some(version),
            envelope_fragment,
        })
    }

    /// The schema-history version, when registered.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// A stable fingerprint of names, types and key (FNV-1a, hex). Files roll
    /// when it changes; it is carried in every envelope.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

fn compute_fingerprint(columns: &[Column], primary_key: &[usize]) -> String {
    {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        for c in columns {
            feed(c.name.as_bytes());
            feed(b"\x00");
            feed(c.ty.to_string().as_bytes());
            feed(if c.nullable { b"\x01" } else { b"\x02" });
        }
        for k in primary_key {
            feed(&(*k as u64).to_le_bytes());
        }
        format!("{h:016x}")
    }
}

fn is_leap(y: u16) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_in_month(y: u16, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_type_round_trips_through_text() {
        let all = [
            ColumnType::Int { bytes: 1, unsigned: false },
            ColumnType::Int { bytes: 3, unsigned: true },
            ColumnType::Int { bytes: 8, unsigned: true },
            ColumnType::Float,
            ColumnType::Double,
            ColumnType::Decimal { precision: 65, scale: 30 },
            ColumnType::Date,
            ColumnType::Time,
            ColumnType::DateTime,
            ColumnType::Timestamp,
            ColumnType::Year,
            ColumnType::String,
            ColumnType::Bytes,
            ColumnType::Enum,
            ColumnType::Set,
            ColumnType::Bit { bits: 13 },
            ColumnType::Json,
        ];
        for ty in all {
            assert_eq!(ty.to_string().parse::<ColumnType>().unwrap(), ty);
        }
        assert!("decimal(3,4)".parse::<ColumnType>().is_err());
        assert!("bit(0)".parse::<ColumnType>().is_err());
        assert!("varchar".parse::<ColumnType>().is_err());
    }

    #[test]
    fn dates_convert_both_ways() {
        for days in [-719_162, -1, 0, 1, 11_016, 19_723, 2_932_896] {
            let d = Date::from_days_since_epoch(days);
            assert_eq!(d.days_since_epoch(), Some(days), "{d}");
        }
        assert_eq!(Date { year: 2024, month: 2, day: 29 }.days_since_epoch(), Some(19_782));
        assert_eq!(Date { year: 2023, month: 2, day: 29 }.days_since_epoch(), None);
        assert_eq!(Date { year: 0, month: 0, day: 0 }.days_since_epoch(), None);
        let dt = DateTime {
            date: Date { year: 1969, month: 12, day: 31 },
            hour: 23,
            minute: 59,
            second: 59,
            micros: 999_999,
        };
        assert_eq!(dt.micros_since_epoch(), Some(-1));
        assert_eq!(DateTime::from_micros_since_epoch(-1), dt);
        assert_eq!(dt.to_string(), "1969-12-31T23:59:59.999999");
    }

    #[test]
    fn fingerprint_changes_with_schema() {
        let cols =
            vec![Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: false }];
        let a = TableSchema::new(cols.clone(), vec![0]);
        let mut other = cols.clone();
        other[0].ty = ColumnType::Int { bytes: 4, unsigned: false };
        let b = TableSchema::new(other, vec![0]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), TableSchema::new(cols, vec![0]).fingerprint());
    }
}
