//! PostgreSQL binary wire values (`typsend` formats, as pgoutput sends them
//! with `binary 'true'`) to exact Lablake values. Binary is independent of
//! the walsender's `DateStyle`, `TimeZone`, `IntervalStyle` and
//! `extra_float_digits`, which a replication connection cannot set.
//! Never panics on malformed input.

use lablake_model::{ColumnType, Date, DateTime, Value};

/// Microseconds and days between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;
/// Arrays nest at most this deep (PostgreSQL's MAXDIM).
const MAX_DIMS: usize = 6;

/// How values of a column are decoded; resolved once per column from the
/// catalog (domains are resolved to their base type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    /// `numeric(p,s)`.
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// `numeric` without a declared precision (or wider than 76 digits).
    Numeric,
    /// text, varchar, bpchar, name, char, citext... (UTF-8 text).
    Text,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    Json,
    Jsonb,
    Enum,
    Array(Box<PgKind>),
    /// A type without a decoder here: its binary form is kept as bytes.
    Other,
}

impl PgKind {
    /// The curated column type of this kind.
    pub fn column_type(&self) -> ColumnType {
        match self {
            PgKind::Bool => ColumnType::Bool,
            PgKind::Int2 => ColumnType::Int { bytes: 2, unsigned: false },
            PgKind::Int4 => ColumnType::Int { bytes: 4, unsigned: false },
            PgKind::Int8 => ColumnType::Int { bytes: 8, unsigned: false },
            PgKind::Oid => ColumnType::Int { bytes: 4, unsigned: true },
            PgKind::Float4 => ColumnType::Float,
            PgKind::Float8 => ColumnType::Double,
            PgKind::Decimal { precision, scale } => ColumnType::Decimal { precision: *precision, scale: *scale },
            PgKind::Numeric => ColumnType::Numeric,
            PgKind::Text => ColumnType::String,
            PgKind::Bytea | PgKind::Other => ColumnType::Bytes,
            PgKind::Date => ColumnType::Date,
            PgKind::Time => ColumnType::Time,
            PgKind::TimeTz => ColumnType::TimeTz,
            PgKind::Timestamp => ColumnType::DateTime,
            PgKind::TimestampTz => ColumnType::Timestamp,
            PgKind::Interval => ColumnType::Interval,
            PgKind::Uuid => ColumnType::Uuid,
            PgKind::Json | PgKind::Jsonb => ColumnType::Json,
            PgKind::Enum => ColumnType::Enum,
            PgKind::Array(_) => ColumnType::Array,
        }
    }

    /// The kind of a built-in type OID, with its type modifier; `None` for
    /// types that need the catalog (enums, domains, arrays of those, ...).
    pub fn builtin(oid: u32, typmod: i32) -> Option<PgKind> {
        Some(match oid {
            16 => PgKind::Bool,
            17 => PgKind::Bytea,
            18 | 19 | 25 | 1042 | 1043 => PgKind::Text,
            20 => PgKind::Int8,
            21 => PgKind::Int2,
            23 => PgKind::Int4,
            26 => PgKind::Oid,
            114 => PgKind::Json,
            700 => PgKind::Float4,
            701 => PgKind::Float8,
            1082 => PgKind::Date,
            1083 => PgKind::Time,
            1114 => PgKind::Timestamp,
            1184 => PgKind::TimestampTz,
            1186 => PgKind::Interval,
            1266 => PgKind::TimeTz,
            1700 => numeric_kind(typmod),
            2950 => PgKind::Uuid,
            3802 => PgKind::Jsonb,
            _ => return None,
        })
    }
}

/// `numeric(p,s)` from its type modifier (`((p << 16) | s) + 4`).
fn numeric_kind(typmod: i32) -> PgKind {
    if typmod < 4 {
        return PgKind::Numeric;
    }
    let m = typmod - 4;
    let (p, s) = ((m >> 16) & 0xffff, m & 0xffff);
    // Negative scales (PostgreSQL 15) and precisions beyond Decimal256 stay text.
    match (u8::try_from(p), u8::try_from(s)) {
        (Ok(precision), Ok(scale)) if (1..=76).contains(&precision) && scale <= precision => {
            PgKind::Decimal { precision, scale }
        }
        _ => PgKind::Numeric,
    }
}

/// Decodes one binary value.
pub fn decode(kind: &PgKind, b: &[u8]) -> Result<Value, String> {
    Ok(match kind {
        PgKind::Bool => match b {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            _ => return Err("bad bool".into()),
        },
        PgKind::Int2 => Value::Int(i64::from(i16::from_be_bytes(fixed(b)?))),
        PgKind::Int4 => Value::Int(i64::from(i32::from_be_bytes(fixed(b)?))),
        PgKind::Int8 => Value::Int(i64::from_be_bytes(fixed(b)?)),
        PgKind::Oid => Value::UInt(u64::from(u32::from_be_bytes(fixed(b)?))),
        PgKind::Float4 => Value::Float(f32::from_be_bytes(fixed(b)?)),
        PgKind::Float8 => Value::Double(f64::from_be_bytes(fixed(b)?)),
        PgKind::Decimal { .. } => {
            let text = numeric_text(b)?;
            if matches!(text.as_str(), "NaN" | "Infinity" | "-Infinity") {
                return Err(format!("{text} in a numeric column with a declared precision"));
            }
            Value::Decimal(text)
        }
        PgKind::Numeric => Value::Decimal(numeric_text(b)?),
        PgKind::Text => Value::String(utf8(b)?),
        PgKind::Enum => Value::Enum(utf8(b)?),
        PgKind::Json => Value::Json(utf8(b)?),
        PgKind::Jsonb => match b.split_first() {
            Some((1, rest)) => Value::Json(utf8(rest)?),
            _ => return Err("unknown jsonb version".into()),
        },
        PgKind::Bytea | PgKind::Other => Value::Bytes(b.to_vec()),
        PgKind::Date => {
            let days = i32::from_be_bytes(fixed(b)?);
            Value::Date(date(days)?)
        }
        PgKind::Time => Value::Time(i64::from_be_bytes(fixed(b)?)),
        PgKind::TimeTz => {
            let [t @ .., z0, z1, z2, z3] = fixed::<12>(b)?;
            let micros = i64::from_be_bytes(t);
            // The zone is in seconds *west* of UTC.
            Value::String(timetz_text(micros, -i32::from_be_bytes([z0, z1, z2, z3]))?)
        }
        PgKind::Timestamp => Value::DateTime(timestamp(i64::from_be_bytes(fixed(b)?))?),
        PgKind::TimestampTz => {
            let us = i64::from_be_bytes(fixed(b)?);
            timestamp(us)?;
            Value::Timestamp(us + PG_EPOCH_MICROS)
        }
        PgKind::Interval => {
            let [t @ .., d0, d1, d2, d3, m0, m1, m2, m3] = fixed::<16>(b)?;
            Value::String(interval_text(
                i64::from_be_bytes(t),
                i32::from_be_bytes([d0, d1, d2, d3]),
                i32::from_be_bytes([m0, m1, m2, m3]),
            ))
        }
        PgKind::Uuid => Value::String(uuid_text(&fixed::<16>(b)?)),
        PgKind::Array(elem) => Value::Json(array_json(elem, b)?),
    })
}

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    <[u8; N]>::try_from(b).map_err(|_| format!("expected {N} bytes, got {}", b.len()))
}

fn utf8(b: &[u8]) -> Result<String, String> {
    std::str::from_utf8(b).map(str::to_owned).map_err(|_| "text is not UTF-8".to_owned())
}

fn date(pg_days: i32) -> Result<Date, String> {
    if pg_days == i32::MAX || pg_days == i32::MIN {
        return Err("infinite date".into());
    }
    let days = pg_days.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?;
    // Years 1..9999 only (the model keeps a 4-digit year; BC dates do not fit).
    if !(-719_162..=2_932_896).contains(&days) {
        return Err("date outside years 1-9999".into());
    }
    Ok(Date::from_days_since_epoch(days))
}

fn timestamp(pg_us: i64) -> Result<DateTime, String> {
    if pg_us == i64::MAX || pg_us == i64::MIN {
        return Err("infinite timestamp".into());
    }
    let us = pg_us.checked_add(PG_EPOCH_MICROS).ok_or("timestamp out of range")?;
    date(
        i32::try_from(us.div_euclid(86_400_000_000) - i64::from(PG_EPOCH_DAYS))
            .map_err(|_| "timestamp out of range")?,
    )?;
    Ok(DateTime::from_micros_since_epoch(us))
}

/// Canonical text of a binary `numeric`: every digit up to the display
/// scale, or `NaN` / `Infinity` / `-Infinity`.
pub fn numeric_text(b: &[u8]) -> Result<String, String> {
    let head = b.get(..8).ok_or("truncated numeric")?;
    let ndigits = i16::from_be_bytes([head[0], head[1]]);
    let weight = i16::from_be_bytes([head[2], head[3]]);
    let sign = u16::from_be_bytes([head[4], head[5]]);
    let dscale = u16::from_be_bytes([head[6], head[7]]);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err("bad numeric sign".into()),
    }
    let n = usize::try_from(ndigits).map_err(|_| "negative numeric digit count")?;
    if b.len() != 8 + 2 * n || dscale > 16_383 {
        return Err("bad numeric length".into());
    }
    let mut digits = Vec::with_capacity(n);
    for i in 0..n {
        let d = u16::from_be_bytes([b[8 + 2 * i], b[9 + 2 * i]]);
        if d >= 10_000 {
            return Err("bad numeric digit".into());
        }
        digits.push(d);
    }
    let group = |idx: i32| -> u16 { usize::try_from(idx).ok().and_then(|i| digits.get(i).copied()).unwrap_or(0) };
    let weight = i32::from(weight);
    let mut int = String::new();
    for i in 0..=weight.max(-1) {
        let d = group(i);
        if int.is_empty() {
            if d != 0 {
                int.push_str(&d.to_string());
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let dscale = usize::from(dscale);
    let mut frac = String::with_capacity(dscale + 4);
    let mut k = 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", group(weight + k)));
        k += 1;
    }
    frac.truncate(dscale);
    let zero = int == "0" && frac.bytes().all(|c| c == b'0');
    let mut out = String::with_capacity(int.len() + frac.len() + 2);
    if sign == 0x4000 && !zero {
        out.push('-');
    }
    out.push_str(&int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

/// `HH:MM:SS[.ffffff]+HH[:MM[:SS]]` as PostgreSQL prints `timetz`.
fn timetz_text(micros: i64, offset_secs: i32) -> Result<String, String> {
    if !(0..=86_400_000_000).contains(&micros) {
        return Err("timetz out of range".into());
    }
    let mut out = clock_text(micros);
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let o = offset_secs.unsigned_abs();
    out.push_str(&format!("{sign}{:02}", o / 3600));
    if !o.is_multiple_of(3600) {
        out.push_str(&format!(":{:02}", (o / 60) % 60));
        if !o.is_multiple_of(60) {
            out.push_str(&format!(":{:02}", o % 60));
        }
    }
    Ok(out)
}

/// `HH:MM:SS` plus `.ffffff` with trailing zeros removed.
fn clock_text(micros: i64) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60);
    if frac != 0 {
        let f = format!(".{frac:06}");
        out.push_str(f.trim_end_matches('0'));
    }
    out
}

/// ISO 8601 duration as PostgreSQL prints it with `IntervalStyle = iso_8601`
/// (`P1Y2M3DT4H5M6.000007S`, `PT0S`; components keep their own signs).
pub fn interval_text(micros: i64, days: i32, months: i32) -> String {
    if micros == 0 && days == 0 && months == 0 {
        return "PT0S".into();
    }
    let mut out = String::from("P");
    let (years, mons) = (months / 12, months % 12);
    if years != 0 {
        out.push_str(&format!("{years}Y"));
    }
    if mons != 0 {
        out.push_str(&format!("{mons}M"));
    }
    if days != 0 {
        out.push_str(&format!("{days}D"));
    }
    if micros != 0 {
        out.push('T');
        let hours = micros / 3_600_000_000;
        let minutes = (micros / 60_000_000) % 60;
        let sec_micros = micros % 60_000_000;
        if hours != 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if sec_micros != 0 {
            let neg = sec_micros < 0;
            let abs = sec_micros.unsigned_abs();
            let mut s = format!("{}{}", if neg { "-" } else { "" }, abs / 1_000_000);
            if !abs.is_multiple_of(1_000_000) {
                let f = format!(".{:06}", abs % 1_000_000);
                s.push_str(f.trim_end_matches('0'));
            }
            out.push_str(&s);
            out.push('S');
        }
    }
    out
}

fn uuid_text(b: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A binary array as a JSON array (nested per dimension) of its elements as
/// the envelope encodes them; NULL elements are `null`. Lower bounds are not
/// kept.
fn array_json(elem: &PgKind, b: &[u8]) -> Result<String, String> {
    let mut r = b;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if r.len() < n {
            return Err("truncated array".into());
        }
        let (h, t) = r.split_at(n);
        r = t;
        Ok(h)
    };
    let ndim = i32::from_be_bytes(fixed(take(4)?)?);
    let _has_null = take(4)?;
    let _elem_oid = take(4)?;
    let ndim = usize::try_from(ndim).map_err(|_| "negative array dimensions")?;
    if ndim > MAX_DIMS {
        return Err("too many array dimensions".into());
    }
    let mut dims = Vec::with_capacity(ndim);
    let mut total: usize = 1;
    for _ in 0..ndim {
        let len = usize::try_from(i32::from_be_bytes(fixed(take(4)?)?)).map_err(|_| "negative array length")?;
        let _lbound = take(4)?;
        total = total.checked_mul(len).ok_or("array too large")?;
        dims.push(len);
    }
    if ndim == 0 {
        return Ok("[]".into());
    }
    let mut elems = Vec::with_capacity(total.min(b.len() / 4));
    for _ in 0..total {
        let len = i32::from_be_bytes(fixed(take(4)?)?);
        if len < 0 {
            elems.push(b"null".to_vec());
        } else {
            let v = decode(elem, take(len as usize)?)?;
            let mut out = Vec::new();
            lablake_model::envelope::encode_value(&v, &mut out);
            elems.push(out);
        }
    }
    // Nest: the last dimension varies fastest.
    fn nest(out: &mut Vec<u8>, dims: &[usize], elems: &mut std::slice::Iter<'_, Vec<u8>>) {
        out.push(b'[');
        for i in 0..dims[0] {
            if i > 0 {
                out.push(b',');
            }
            if dims.len() == 1 {
                if let Some(e) = elems.next() {
                    out.extend_from_slice(e);
                }
            } else {
                nest(out, &dims[1..], elems);
            }
        }
        out.push(b']');
    }
    let mut out = Vec::new();
    nest(&mut out, &dims, &mut elems.iter());
    String::from_utf8(out).map_err(|_| "array is not UTF-8".to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn numeric(ndigits: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(ndigits.len() as i16).to_be_bytes());
        b.extend_from_slice(&weight.to_be_bytes());
        b.extend_from_slice(&sign.to_be_bytes());
        b.extend_from_slice(&dscale.to_be_bytes());
        for d in ndigits {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numerics_are_exact() {
        assert_eq!(numeric_text(&numeric(&[12, 3456, 7800], 1, 0, 3)).unwrap(), "123456.780");
        assert_eq!(numeric_text(&numeric(&[5], -1, 0x4000, 4)).unwrap(), "-0.0005");
        assert_eq!(numeric_text(&numeric(&[5], -2, 0, 8)).unwrap(), "0.00000005");
        assert_eq!(numeric_text(&numeric(&[], 0, 0x4000, 2)).unwrap(), "0.00");
        assert_eq!(numeric_text(&numeric(&[1], 2, 0, 0)).unwrap(), "100000000");
        assert_eq!(numeric_text(&numeric(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert_eq!(numeric_text(&numeric(&[], 0, 0xF000, 0)).unwrap(), "-Infinity");
        assert!(numeric_text(&numeric(&[10_000], 0, 0, 0)).is_err());
        assert!(numeric_text(&[0, 1]).is_err());
        assert_eq!(numeric_kind(((10 << 16) | 2) + 4), PgKind::Decimal { precision: 10, scale: 2 });
        assert_eq!(numeric_kind(-1), PgKind::Numeric);
        assert_eq!(numeric_kind(((1000 << 16) | 2) + 4), PgKind::Numeric);
    }

    #[test]
    fn temporal_values() {
        assert_eq!(
            decode(&PgKind::Date, &0i32.to_be_bytes()).unwrap(),
            Value::Date(Date { year: 2000, month: 1, day: 1 })
        );
        assert!(decode(&PgKind::Date, &i32::MAX.to_be_bytes()).is_err());
        assert_eq!(decode(&PgKind::TimestampTz, &1i64.to_be_bytes()).unwrap(), Value::Timestamp(PG_EPOCH_MICROS + 1));
        assert!(decode(&PgKind::Timestamp, &i64::MIN.to_be_bytes()).is_err());
        let mut tz = 45_296_000_001i64.to_be_bytes().to_vec();
        tz.extend_from_slice(&(-19_800i32).to_be_bytes());
        assert_eq!(decode(&PgKind::TimeTz, &tz).unwrap(), Value::String("12:34:56.000001+05:30".into()));
        assert_eq!(interval_text(14_706_000_007, 3, 14), "P1Y2M3DT4H5M6.000007S");
        assert_eq!(interval_text(0, 0, 0), "PT0S");
        assert_eq!(interval_text(-1_500_000, -1, -13), "P-1Y-1M-1DT-1.5S");
    }

    #[test]
    fn arrays_nest_and_keep_nulls() {
        let mut b = Vec::new();
        for v in [2i32, 1, 23, 2, 1, 2, 1] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        for v in [Some(1i32), None, Some(3), Some(-4)] {
            match v {
                Some(v) => {
                    b.extend_from_slice(&4i32.to_be_bytes());
                    b.extend_from_slice(&v.to_be_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        assert_eq!(
            decode(&PgKind::Array(Box::new(PgKind::Int4)), &b).unwrap(),
            Value::Json("[[1,null],[3,-4]]".into())
        );
        let empty = [0u8; 12];
        assert_eq!(decode(&PgKind::Array(Box::new(PgKind::Text)), &empty).unwrap(), Value::Json("[]".into()));
    }

    #[test]
    fn garbage_never_panics() {
        let kinds = [
            PgKind::Bool,
            PgKind::Int8,
            PgKind::Decimal { precision: 10, scale: 2 },
            PgKind::Numeric,
            PgKind::Text,
            PgKind::Jsonb,
            PgKind::Date,
            PgKind::TimeTz,
            PgKind::Timestamp,
            PgKind::TimestampTz,
            PgKind::Interval,
            PgKind::Uuid,
            PgKind::Array(Box::new(PgKind::Array(Box::new(PgKind::Numeric)))),
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for k in &kinds {
            for _ in 0..3000 {
                let mut buf = Vec::new();
                for _ in 0..(x % 48) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    buf.push(x as u8);
                }
                let _ = decode(k, &buf);
            }
        }
        assert_eq!(uuid_text(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
    }
}
