//! JSON: MySQL's binary JSON format to canonical text, a small text parser,
//! and the partial-update (JSON diff) operations of `PARTIAL_UPDATE_ROWS`.
//!
//! Canonical text is compact (no whitespace), object members are sorted by
//! key bytes, numbers keep their exact digits (integers, `DECIMAL` values as
//! JSON numbers, doubles in shortest round-trip form), and MySQL-only scalar
//! types are rendered the way MySQL prints them: `DATE` → `"2012-03-18"`,
//! `DATETIME`/`TIMESTAMP` → `"2012-03-18 11:30:45.000000"`, `TIME` →
//! `"87:31:46.654321"`, other opaque values → `"base64:type<N>:<data>"`.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::reader::{ReadResult, Reader};
use super::{decimal, temporal};

/// Deepest nesting accepted (MySQL itself stops at 100).
const MAX_DEPTH: usize = 128;

/// A JSON document; numbers keep their text so nothing is rounded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// Canonical compact text.
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => out.push_str(n),
            Json::String(s) => write_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(k, out);
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Binary JSON (sql-common/json_binary.cc)

const T_SMALL_OBJECT: u8 = 0x0;
const T_LARGE_OBJECT: u8 = 0x1;
const T_SMALL_ARRAY: u8 = 0x2;
const T_LARGE_ARRAY: u8 = 0x3;
const T_LITERAL: u8 = 0x4;
const T_INT16: u8 = 0x5;
const T_UINT16: u8 = 0x6;
const T_INT32: u8 = 0x7;
const T_UINT32: u8 = 0x8;
const T_INT64: u8 = 0x9;
const T_UINT64: u8 = 0xA;
const T_DOUBLE: u8 = 0xB;
const T_STRING: u8 = 0xC;
const T_OPAQUE: u8 = 0xF;

struct Budget(usize);

impl Budget {
    fn spend(&mut self) -> ReadResult<()> {
        self.0 = self.0.checked_sub(1).ok_or_else(|| "binary JSON references too many values".to_owned())?;
        Ok(())
    }
}

/// Decodes a binary JSON document (type byte + value). An empty document is
/// JSON `null`, as MySQL treats it.
pub(crate) fn from_binary(bytes: &[u8]) -> ReadResult<Json> {
    let Some((&ty, data)) = bytes.split_first() else {
        return Ok(Json::Null);
    };
    let mut budget = Budget(bytes.len().saturating_mul(4).saturating_add(64));
    value(ty, data, 0, &mut budget)
}

fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

fn value(ty: u8, data: &[u8], depth: usize, budget: &mut Budget) -> ReadResult<Json> {
    budget.spend()?;
    if depth > MAX_DEPTH {
        return Err("binary JSON nested too deeply".into());
    }
    let mut r = Reader::new(data);
    Ok(match ty {
        T_SMALL_OBJECT | T_LARGE_OBJECT | T_SMALL_ARRAY | T_LARGE_ARRAY => {
            let large = ty == T_LARGE_OBJECT || ty == T_LARGE_ARRAY;
            let is_object = ty == T_SMALL_OBJECT || ty == T_LARGE_OBJECT;
            container(data, large, is_object, depth, budget)?
        }
        T_LITERAL => literal(r.u8()?)?,
        T_INT16 => Json::Number((r.uint_le(2)? as u16 as i16).to_string()),
        T_UINT16 => Json::Number(r.uint_le(2)?.to_string()),
        T_INT32 => Json::Number((r.uint_le(4)? as u32 as i32).to_string()),
        T_UINT32 => Json::Number(r.uint_le(4)?.to_string()),
        T_INT64 => Json::Number((r.uint_le(8)? as i64).to_string()),
        T_UINT64 => Json::Number(r.uint_le(8)?.to_string()),
        T_DOUBLE => double(f64::from_bits(r.uint_le(8)?))?,
        T_STRING => {
            let len = varlen(&mut r)?;
            let bytes = r.take(len)?;
            Json::String(std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8 in a JSON string")?.to_owned())
        }
        T_OPAQUE => {
            let field_type = r.u8()?;
            let len = varlen(&mut r)?;
            opaque(field_type, r.take(len)?)?
        }
        x => return Err(format!("unknown binary JSON type 0x{x:02x}")),
    })
}

fn literal(b: u8) -> ReadResult<Json> {
    match b {
        0 => Ok(Json::Null),
        1 => Ok(Json::Bool(true)),
        2 => Ok(Json::Bool(false)),
        x => Err(format!("unknown binary JSON literal 0x{x:02x}")),
    }
}

fn double(x: f64) -> ReadResult<Json> {
    serde_json::Number::from_f64(x)
        .map(|n| Json::Number(n.to_string()))
        .ok_or_else(|| "JSON double is not finite".to_owned())
}

/// The variable-length length of strings and opaque values: 7 bits per
/// byte, least significant first, at most 5 bytes.
fn varlen(r: &mut Reader<'_>) -> ReadResult<usize> {
    let mut len: u64 = 0;
    for i in 0..5 {
        let b = r.u8()?;
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return usize::try_from(len).map_err(|_| "JSON length does not fit in memory".to_owned());
        }
    }
    Err("JSON length is longer than 5 bytes".into())
}

fn container(data: &[u8], large: bool, is_object: bool, depth: usize, budget: &mut Budget) -> ReadResult<Json> {
    let os = if large { 4 } else { 2 };
    let mut r = Reader::new(data);
    let count = r.uint_le(os)? as usize;
    let size = r.uint_le(os)? as usize;
    let doc = data.get(..size).ok_or_else(|| "JSON container larger than its value".to_owned())?;
    let key_entry = os + 2;
    let value_entry = os + 1;
    let keys_at = 2 * os;
    let values_at = keys_at + if is_object { count.saturating_mul(key_entry) } else { 0 };
    let header_end = count.checked_mul(value_entry).and_then(|v| v.checked_add(values_at));
    if header_end.is_none_or(|h| h > size) {
        return Err("JSON container header exceeds its size".into());
    }
    let entry = |at: usize, len: usize| doc.get(at..at + len).ok_or_else(|| "JSON entry out of bounds".to_owned());
    let mut items = Vec::with_capacity(if is_object { 0 } else { count });
    let mut members = BTreeMap::new();
    for i in 0..count {
        let ve = entry(values_at + i * value_entry, value_entry)?;
        let ty = ve[0];
        let raw = &ve[1..];
        let inlined = matches!(ty, T_LITERAL | T_INT16 | T_UINT16) || (large && matches!(ty, T_INT32 | T_UINT32));
        let v = if inlined {
            budget.spend()?;
            match ty {
                T_LITERAL => literal(raw[0])?,
                T_INT16 => Json::Number((le(&raw[..2]) as u16 as i16).to_string()),
                T_UINT16 => Json::Number(le(&raw[..2]).to_string()),
                T_INT32 => Json::Number((le(&raw[..4]) as u32 as i32).to_string()),
                _ => Json::Number(le(&raw[..4]).to_string()),
            }
        } else {
            let offset = le(raw) as usize;
            if offset < header_end.unwrap_or(size) || offset >= size {
                return Err("JSON value offset out of bounds".into());
            }
            value(ty, &doc[offset..], depth + 1, budget)?
        };
        if is_object {
            let ke = entry(keys_at + i * key_entry, key_entry)?;
            let key_offset = le(&ke[..os]) as usize;
            let key_len = le(&ke[os..]) as usize;
            let key = entry(key_offset, key_len)?;
            let key = std::str::from_utf8(key).map_err(|_| "invalid UTF-8 in a JSON key")?;
            members.insert(key.to_owned(), v);
        } else {
            items.push(v);
        }
    }
    Ok(if is_object { Json::Object(members) } else { Json::Array(items) })
}

/// Opaque scalars (field type + raw data) rendered as MySQL prints them.
fn opaque(field_type: u8, data: &[u8]) -> ReadResult<Json> {
    const DECIMAL: u8 = 246;
    const DATE: u8 = 10;
    const NEWDATE: u8 = 14;
    const TIME: u8 = 11;
    const DATETIME: u8 = 12;
    const TIMESTAMP: u8 = 7;
    let packed = || -> ReadResult<i64> {
        let b = data.get(..8).ok_or_else(|| "short packed temporal value in JSON".to_owned())?;
        Ok(le(b) as i64)
    };
    Ok(match field_type {
        DECIMAL => {
            let (&precision, rest) = data.split_first().ok_or("empty JSON decimal")?;
            let (&scale, bin) = rest.split_first().ok_or("short JSON decimal")?;
            Json::Number(decimal::decode(bin, precision, scale)?)
        }
        DATE | NEWDATE | DATETIME | TIMESTAMP => {
            let p = packed()?.unsigned_abs();
            let micros = p % (1 << 24);
            let ymdhms = p >> 24;
            let ymd = ymdhms >> 17;
            let hms = ymdhms % (1 << 17);
            let (year, month, day) = ((ymd >> 5) / 13, (ymd >> 5) % 13, ymd % 32);
            if field_type == DATE || field_type == NEWDATE {
                Json::String(format!("{year:04}-{month:02}-{day:02}"))
            } else {
                let (h, m, s) = (hms >> 12, (hms >> 6) % 64, hms % 64);
                Json::String(format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{micros:06}"))
            }
        }
        TIME => {
            let p = packed()?;
            let a = p.unsigned_abs();
            let hms = a >> 24;
            let total =
                (((hms >> 12) * 60 + (hms >> 6) % 64) * 60 + hms % 64) as i64 * 1_000_000 + (a % (1 << 24)) as i64;
            Json::String(temporal::format_time(if p < 0 { -total } else { total }, true))
        }
        other => Json::String(format!("base64:type{other}:{}", B64.encode(data))),
    })
}

// ---------------------------------------------------------------------------
// Text parser (for applying JSON diffs to a before image)

/// Parses JSON text, keeping number digits as written.
pub(crate) fn parse_text(text: &str) -> ReadResult<Json> {
    let mut p = TextParser { s: text.as_bytes(), i: 0 };
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters after a JSON value".into());
    }
    Ok(v)
}

struct TextParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl TextParser<'_> {
    fn ws(&mut self) {
        while matches!(self.s.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> ReadResult<()> {
        self.ws();
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` in JSON text", char::from(b)))
        }
    }

    fn value(&mut self, depth: usize) -> ReadResult<Json> {
        if depth > MAX_DEPTH {
            return Err("JSON text nested too deeply".into());
        }
        self.ws();
        let rest = &self.s[self.i.min(self.s.len())..];
        match rest.first() {
            Some(b'{') => {
                self.i += 1;
                let mut members = BTreeMap::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    let v = self.value(depth + 1)?;
                    members.insert(k, v);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err("expected `,` or `}` in JSON text".into()),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err("expected `,` or `]` in JSON text".into()),
                    }
                }
            }
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') if rest.starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if rest.starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if rest.starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while matches!(self.s.get(self.i), Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')) {
                    self.i += 1;
                }
                let n = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| "invalid JSON number")?;
                if n.parse::<f64>().is_err() {
                    return Err("invalid JSON number".into());
                }
                Ok(Json::Number(n.to_owned()))
            }
            _ => Err("unexpected character in JSON text".into()),
        }
    }

    fn string(&mut self) -> ReadResult<String> {
        self.eat(b'"')?;
        let mut out = String::new();
        loop {
            let start = self.i;
            while matches!(self.s.get(self.i), Some(b) if *b != b'"' && *b != b'\\') {
                self.i += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).map_err(|_| "invalid UTF-8 in JSON text")?);
            match self.s.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let esc = *self.s.get(self.i).ok_or("unterminated JSON escape")?;
                    self.i += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err("unpaired surrogate in JSON text".into());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("unpaired surrogate in JSON text".into());
                                }
                                char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.ok_or("invalid \\u escape in JSON text")?);
                        }
                        _ => return Err("invalid escape in JSON text".into()),
                    }
                }
                _ => return Err("unterminated JSON string".into()),
            }
        }
    }

    fn hex4(&mut self) -> ReadResult<u32> {
        let h = self.s.get(self.i..self.i + 4).ok_or("short \\u escape in JSON text")?;
        self.i += 4;
        let h = std::str::from_utf8(h).map_err(|_| "invalid \\u escape")?;
        u32::from_str_radix(h, 16).map_err(|_| "invalid \\u escape in JSON text".to_owned())
    }
}

// ---------------------------------------------------------------------------
// Partial updates (sql/json_diff.cc)

/// One operation of a MySQL JSON partial update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonDiffOp {
    Replace,
    Insert,
    Remove,
}

/// A JSON partial update of one column, as logged in the after image of a
/// `PARTIAL_UPDATE_ROWS` event: path (MySQL JSON path syntax), operation and
/// new value as canonical JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonDiff {
    pub path: String,
    pub op: JsonDiffOp,
    pub value: Option<String>,
}

/// Reads the diffs of one partial JSON column value.
pub(crate) fn read_diffs(bytes: &[u8]) -> ReadResult<Vec<JsonDiff>> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while !r.is_empty() {
        let op = match r.u8()? {
            0 => JsonDiffOp::Replace,
            1 => JsonDiffOp::Insert,
            2 => JsonDiffOp::Remove,
            x => return Err(format!("unknown JSON diff operation {x}")),
        };
        let path_len = usize::try_from(r.lenenc()?).map_err(|_| "JSON diff path too long")?;
        let path = std::str::from_utf8(r.take(path_len)?).map_err(|_| "invalid UTF-8 in a JSON diff path")?.to_owned();
        let value = if op == JsonDiffOp::Remove {
            None
        } else {
            let len = usize::try_from(r.lenenc()?).map_err(|_| "JSON diff value too long")?;
            Some(from_binary(r.take(len)?)?.to_text())
        };
        out.push(JsonDiff { path, op, value });
    }
    Ok(out)
}

#[derive(Debug, PartialEq)]
enum Leg {
    Member(String),
    Index(usize),
}

fn parse_path(path: &str) -> ReadResult<Vec<Leg>> {
    let bad = || format!("unsupported JSON diff path `{path}`");
    let s = path.trim();
    let mut rest = s.strip_prefix('$').ok_or_else(bad)?;
    let mut legs = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            if r.starts_with('"') {
                let mut p = TextParser { s: r.as_bytes(), i: 0 };
                let key = p.string().map_err(|_| bad())?;
                legs.push(Leg::Member(key));
                rest = &r[p.i..];
            } else {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                if end == 0 {
                    return Err(bad());
                }
                legs.push(Leg::Member(r[..end].to_owned()));
                rest = &r[end..];
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(bad)?;
            let idx = r[..end].trim().parse::<usize>().map_err(|_| bad())?;
            legs.push(Leg::Index(idx));
            rest = &r[end + 1..];
        } else {
            return Err(bad());
        }
    }
    Ok(legs)
}

/// Applies one diff to a document.
pub(crate) fn apply_diff(doc: &mut Json, diff: &JsonDiff) -> ReadResult<()> {
    let legs = parse_path(&diff.path)?;
    let new_value = match &diff.value {
        Some(text) => Some(parse_text(text)?),
        None => None,
    };
    let missing = || format!("JSON diff path `{}` not found in the before image", diff.path);
    let Some((last, parents)) = legs.split_last() else {
        return match (diff.op, new_value) {
            (JsonDiffOp::Replace, Some(v)) => {
                *doc = v;
                Ok(())
            }
            _ => Err(format!("JSON diff cannot {:?} the document root", diff.op)),
        };
    };
    let mut cur = doc;
    for leg in parents {
        cur = match (leg, cur) {
            (Leg::Member(k), Json::Object(m)) => m.get_mut(k).ok_or_else(missing)?,
            (Leg::Index(i), Json::Array(a)) => a.get_mut(*i).ok_or_else(missing)?,
            _ => return Err(missing()),
        };
    }
    match (diff.op, last, cur, new_value) {
        (JsonDiffOp::Replace, Leg::Member(k), Json::Object(m), Some(v)) => {
            *m.get_mut(k).ok_or_else(missing)? = v;
        }
        (JsonDiffOp::Replace, Leg::Index(i), Json::Array(a), Some(v)) => {
            *a.get_mut(*i).ok_or_else(missing)? = v;
        }
        (JsonDiffOp::Insert, Leg::Member(k), Json::Object(m), Some(v)) => {
            m.insert(k.clone(), v);
        }
        (JsonDiffOp::Insert, Leg::Index(i), Json::Array(a), Some(v)) => {
            let at = (*i).min(a.len());
            a.insert(at, v);
        }
        (JsonDiffOp::Remove, Leg::Member(k), Json::Object(m), None) => {
            m.remove(k).ok_or_else(missing)?;
        }
        (JsonDiffOp::Remove, Leg::Index(i), Json::Array(a), None) => {
            if *i >= a.len() {
                return Err(missing());
            }
            a.remove(*i);
        }
        _ => return Err(missing()),
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Builds a small binary object {"a": 1, "bb": "x"} by hand.
    fn small_object() -> Vec<u8> {
        // count=2, size, key entries (offset u16, len u16) x2, value entries (type, u16) x2, keys, "x" string
        let header = 4 + 2 * 4 + 2 * 3;
        let keys_at = header;
        let str_at = keys_at + 3;
        let size = str_at + 2;
        let mut d = vec![];
        d.extend_from_slice(&2u16.to_le_bytes());
        d.extend_from_slice(&(size as u16).to_le_bytes());
        d.extend_from_slice(&(keys_at as u16).to_le_bytes());
        d.extend_from_slice(&1u16.to_le_bytes());
        d.extend_from_slice(&((keys_at + 1) as u16).to_le_bytes());
        d.extend_from_slice(&2u16.to_le_bytes());
        d.push(T_INT16);
        d.extend_from_slice(&1u16.to_le_bytes());
        d.push(T_STRING);
        d.extend_from_slice(&(str_at as u16).to_le_bytes());
        d.extend_from_slice(b"abb");
        d.extend_from_slice(&[1, b'x']);
        let mut out = vec![T_SMALL_OBJECT];
        out.extend_from_slice(&d);
        out
    }

    #[test]
    fn binary_object_to_text() {
        assert_eq!(from_binary(&small_object()).unwrap().to_text(), r#"{"a":1,"bb":"x"}"#);
        assert_eq!(from_binary(&[]).unwrap(), Json::Null);
        assert_eq!(from_binary(&[T_LITERAL, 1]).unwrap().to_text(), "true");
        let mut d = vec![T_DOUBLE];
        d.extend_from_slice(&1.5f64.to_le_bytes());
        assert_eq!(from_binary(&d).unwrap().to_text(), "1.5");
        let mut d = vec![T_UINT64];
        d.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(from_binary(&d).unwrap().to_text(), "18446744073709551615");
        assert_eq!(from_binary(&[T_STRING, 3, b'a', b'"', b'\n']).unwrap().to_text(), r#""a\"\n""#);
    }

    #[test]
    fn truncated_or_hostile_binary_never_panics() {
        let obj = small_object();
        for cut in 0..obj.len() {
            let _ = from_binary(&obj[..cut]);
        }
        for i in 0..obj.len() {
            for x in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut m = obj.clone();
                m[i] = x;
                let _ = from_binary(&m);
            }
        }
        // Deep nesting: small arrays of one element, each holding the next.
        let nested = |depth: usize| {
            let mut inner: Vec<u8> = vec![1, 0, 7, 0, T_LITERAL, 0, 0]; // [null]
            for _ in 1..depth {
                let size = (7 + inner.len()) as u16;
                let mut outer = vec![1, 0];
                outer.extend_from_slice(&size.to_le_bytes());
                outer.extend_from_slice(&[T_SMALL_ARRAY, 7, 0]);
                outer.extend_from_slice(&inner);
                inner = outer;
            }
            let mut doc = vec![T_SMALL_ARRAY];
            doc.extend_from_slice(&inner);
            doc
        };
        assert_eq!(from_binary(&nested(3)).unwrap().to_text(), "[[[null]]]");
        assert!(from_binary(&nested(100)).is_ok());
        assert!(from_binary(&nested(1000)).is_err());
        assert!(from_binary(&[T_STRING, 0x80, 0x80, 0x80, 0x80, 0x80]).is_err());
    }

    #[test]
    fn text_round_trip_and_diffs() {
        let mut doc = parse_text(r#" {"name": "Joe", "age": 24, "tags": ["a", "b"], "n": 1.50} "#).unwrap();
        assert_eq!(doc.to_text(), r#"{"age":24,"n":1.50,"name":"Joe","tags":["a","b"]}"#);
        let d = |path: &str, op, value: Option<&str>| JsonDiff { path: path.into(), op, value: value.map(Into::into) };
        apply_diff(&mut doc, &d("$.age", JsonDiffOp::Replace, Some("25"))).unwrap();
        apply_diff(&mut doc, &d("$.tags[1]", JsonDiffOp::Insert, Some(r#""x""#))).unwrap();
        apply_diff(&mut doc, &d("$.tags[9]", JsonDiffOp::Insert, Some("true"))).unwrap();
        apply_diff(&mut doc, &d("$.\"new key\"", JsonDiffOp::Insert, Some("null"))).unwrap();
        apply_diff(&mut doc, &d("$.name", JsonDiffOp::Remove, None)).unwrap();
        assert_eq!(doc.to_text(), r#"{"age":25,"n":1.50,"new key":null,"tags":["a","x","b",true]}"#);
        assert!(apply_diff(&mut doc, &d("$.missing.x", JsonDiffOp::Replace, Some("1"))).is_err());
        assert!(apply_diff(&mut doc, &d("$**", JsonDiffOp::Replace, Some("1"))).is_err());
        assert_eq!(parse_text(r#""\ud83d\ude00""#).unwrap(), Json::String("😀".into()));
        assert!(parse_text("[1,").is_err());
        assert!(parse_text(&"[".repeat(500)).is_err());
    }
}
