//! The Kafka envelope: Debezium-compatible JSON, documented in
//! `docs/envelope.md`.
//!
//! Value of a record (schemas-disabled Debezium layout plus a `lablake` block):
//!
//! ```json
//! {"before":null,"after":{"id":1,"name":"x"},"op":"c","ts_ms":1700000000123,
//!  "source":{"version":"0.1.0","connector":"mysql","name":"main","ts_ms":1700000000000,
//!            "db":"lab_acme","table":"orders","server_id":1,"gtid":"0-1-7",
//!            "file":"binlog.000001","pos":1234,"row":0,"tenant":"acme",
//!            "position":"0000000001:00000000000000001234:0000000000"},
//!  "transaction":{"id":"0-1-7"},
//!  "lablake":{"v":1,"tenant":"acme","schema":"9f…","columns":[["id","int64",false],["name","string",true]],"pk":["id"]}}
//! ```
//!
//! Key of a record: a JSON object of the primary-key columns, `{"id":1}`.
//!
//! Values are encoded so they decode back *exactly* given the column type in
//! `lablake.columns`; see [`encode_value`].

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    ChangeEvent, Column, ColumnType, Date, DateTime, ModelError, Op, SourceInfo, SourcePosition, TableId, TableSchema,
    Value,
};

/// What an unchanged value looks like in a row image (Debezium's
/// `unavailable.value.placeholder`, as a JSON string). Which columns are
/// unchanged is listed in `lablake.unchanged`.
pub const UNCHANGED_PLACEHOLDER: &str = "\"__debezium_unavailable_value\"";

/// Envelope format version written in `lablake.v`.
pub const ENVELOPE_VERSION: u32 = 1;

/// Encodes the record value of a change into `out` (appending).
pub fn encode(event: &ChangeEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"before\":");
    encode_row(&event.schema, event.before.as_deref(), out);
    out.extend_from_slice(b",\"after\":");
    encode_row(&event.schema, event.after.as_deref(), out);
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(event.op.code().as_bytes());
    out.extend_from_slice(b"\",\"ts_ms\":");
    push_int(out, event.ts_ms);
    let s = &event.source;
    out.extend_from_slice(b",\"source\":{\"version\":\"");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\",\"connector\":");
    push_str(out, &s.connector);
    out.extend_from_slice(b",\"name\":");
    push_str(out, &s.name);
    out.extend_from_slice(b",\"ts_ms\":");
    push_int(out, s.ts_ms);
    out.extend_from_slice(b",\"db\":");
    push_str(out, &event.table.database);
    out.extend_from_slice(b",\"table\":");
    push_str(out, &event.table.table);
    out.extend_from_slice(b",\"server_id\":");
    push_int(out, s.server_id);
    out.extend_from_slice(b",\"gtid\":");
    match &s.gtid {
        Some(g) => push_str(out, g),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"file\":");
    push_str(out, &s.file);
    out.extend_from_slice(b",\"pos\":");
    push_int(out, s.pos);
    out.extend_from_slice(b",\"row\":");
    push_int(out, s.row);
    out.extend_from_slice(b",\"tenant\":");
    push_str(out, &event.table.tenant);
    out.extend_from_slice(b",\"position\":");
    push_str(out, s.position.as_str());
    out.extend_from_slice(b"},\"transaction\":");
    match &s.gtid {
        Some(g) => {
            out.extend_from_slice(b"{\"id\":");
            push_str(out, g);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"lablake\":{\"v\":");
    push_int(out, ENVELOPE_VERSION);
    out.extend_from_slice(b",\"tenant\":");
    push_str(out, &event.table.tenant);
    out.push(b',');
    if let Some(after) = &event.after
        && after.iter().any(|v| matches!(v, Value::Unchanged))
    {
        out.extend_from_slice(b"\"unchanged\":[");
        let names = after.iter().zip(&event.schema.columns).filter(|(v, _)| matches!(v, Value::Unchanged));
        for (i, (_, c)) in names.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(out, &c.name);
        }
        out.extend_from_slice(b"],");
    }
    out.extend_from_slice(&event.schema.envelope_fragment);
    out.extend_from_slice(b"}}");
}

/// The schema part of the `lablake` block, computed once per schema.
pub(crate) fn schema_fragment(
    fingerprint: &str,
    version: Option<u32>,
    columns: &[Column],
    primary_key: &[usize],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + columns.len() * 32);
    out.extend_from_slice(b"\"schema\":\"");
    out.extend_from_slice(fingerprint.as_bytes());
    out.push(b'"');
    if let Some(v) = version {
        out.extend_from_slice(b",\"schema_version\":");
        push_int(&mut out, v);
    }
    out.extend_from_slice(b",\"columns\":[");
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        push_str(&mut out, &c.name);
        out.extend_from_slice(b",\"");
        out.extend_from_slice(c.ty.to_string().as_bytes());
        out.extend_from_slice(if c.nullable { b"\",true]" } else { b"\",false]" });
    }
    out.extend_from_slice(b"],\"pk\":[");
    for (i, k) in primary_key.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(c) = columns.get(*k) {
            push_str(&mut out, &c.name);
        }
    }
    out.push(b']');
    out
}

/// Encodes the record key of a change: a JSON object of the primary key.
pub fn encode_key(event: &ChangeEvent, out: &mut Vec<u8>) {
    out.push(b'{');
    if let Some(row) = event.key_row() {
        for (n, i) in event.schema.primary_key.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let c = &event.schema.columns[*i];
            push_str(out, &c.name);
            out.push(b':');
            encode_value(&row[*i], out);
        }
    }
    out.push(b'}');
}

fn encode_row(schema: &TableSchema, row: Option<&[Value]>, out: &mut Vec<u8>) {
    let Some(row) = row else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (c, v)) in schema.columns.iter().zip(row).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, &c.name);
        out.push(b':');
        encode_value(v, out);
    }
    out.push(b'}');
}

/// Encodes one value as JSON:
///
/// | type | JSON |
/// |---|---|
/// | int*, uint*, year | number |
/// | float | number: the exact `f64` widening of the `f32` |
/// | double | number; `"NaN"`, `"Infinity"`, `"-Infinity"` as strings |
/// | decimal | string, every digit (`"-12.3400"`) |
/// | date | `"YYYY-MM-DD"` (zero dates kept as `"0000-00-00"`) |
/// | time | number: signed microseconds (Debezium `MicroTime`) |
/// | datetime | `"YYYY-MM-DDTHH:MM:SS.ffffff"` |
/// | timestamp | `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` (UTC) |
/// | string, enum, set, json | string (SET labels comma-separated; JSON as its text) |
/// | bytes, bit | base64 string |
/// | bool | `true` / `false` |
/// | numeric (no declared precision) | string, every digit, or `"NaN"`, `"Infinity"`, `"-Infinity"` |
/// | uuid, interval, timetz | string (canonical text) |
/// | array | string: a JSON array of the elements' text forms |
pub fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        // Debezium's placeholder; the `lablake.unchanged` list is authoritative.
        Value::Unchanged => out.extend_from_slice(UNCHANGED_PLACEHOLDER.as_bytes()),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => push_int(out, *i),
        Value::UInt(u) => push_int(out, *u),
        Value::Year(y) => push_int(out, *y),
        Value::Time(t) => push_int(out, *t),
        Value::Float(f) => push_f64(out, f64::from(*f)),
        Value::Double(d) => push_f64(out, *d),
        Value::Decimal(s) | Value::String(s) | Value::Enum(s) | Value::Set(s) | Value::Json(s) => push_str(out, s),
        Value::Date(d) => {
            out.push(b'"');
            push_date(out, d);
            out.push(b'"');
        }
        Value::DateTime(dt) => {
            out.push(b'"');
            push_datetime(out, dt);
            out.push(b'"');
        }
        Value::Timestamp(us) => {
            out.push(b'"');
            push_datetime(out, &DateTime::from_micros_since_epoch(*us));
            out.extend_from_slice(b"Z\"");
        }
        Value::Bytes(b) | Value::Bit(b) => {
            out.push(b'"');
            let start = out.len();
            out.resize(start + base64::encoded_len(b.len(), true).unwrap_or(0), 0);
            let n = B64.encode_slice(b, &mut out[start..]).unwrap_or(0);
            out.truncate(start + n);
            out.push(b'"');
        }
    }
}

fn push_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Zero-padded decimal of exactly `width` digits (a value too wide for it
/// keeps all its digits, as `{:0width$}` does).
fn push_padded(out: &mut Vec<u8>, v: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v).as_bytes();
    for _ in digits.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

/// `YYYY-MM-DD`, as [`Date`]'s `Display`, without the `fmt` machinery.
fn push_date(out: &mut Vec<u8>, d: &Date) {
    push_padded(out, u32::from(d.year), 4);
    out.push(b'-');
    push_padded(out, u32::from(d.month), 2);
    out.push(b'-');
    push_padded(out, u32::from(d.day), 2);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff`, as [`DateTime`]'s `Display`.
fn push_datetime(out: &mut Vec<u8>, dt: &DateTime) {
    push_date(out, &dt.date);
    out.push(b'T');
    push_padded(out, u32::from(dt.hour), 2);
    out.push(b':');
    push_padded(out, u32::from(dt.minute), 2);
    out.push(b':');
    push_padded(out, u32::from(dt.second), 2);
    out.push(b'.');
    push_padded(out, dt.micros, 6);
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // serde_json escaping into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        // Most strings need no escaping: copy them as they are.
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether a JSON string needs escapes (a control character, `"` or `\`).
/// Eight bytes at a time: the classic "has a byte less than n" and "has a
/// zero byte" word tests, exact as yes/no answers.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH != 0;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let x = u64::from_le_bytes(word);
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH != 0;
        if control || has_zero(x ^ (ONES * u64::from(b'"'))) || has_zero(x ^ (ONES * u64::from(b'\\'))) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

fn push_f64(out: &mut Vec<u8>, d: f64) {
    if d.is_finite() {
        let _ = serde_json::to_writer(&mut *out, &d);
    } else if d.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if d > 0.0 {
        out.extend_from_slice(b"\"Infinity\"");
    } else {
        out.extend_from_slice(b"\"-Infinity\"");
    }
}

#[derive(Deserialize)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    op: &'a str,
    ts_ms: i64,
    #[serde(borrow)]
    source: RawSource<'a>,
    #[serde(borrow)]
    lablake: RawMeta<'a>,
}

type Text<'a> = std::borrow::Cow<'a, str>;

#[derive(Deserialize)]
struct RawSource<'a> {
    #[serde(borrow)]
    connector: Text<'a>,
    #[serde(borrow)]
    name: Text<'a>,
    ts_ms: i64,
    #[serde(borrow)]
    db: Text<'a>,
    #[serde(borrow)]
    table: Text<'a>,
    #[serde(default)]
    server_id: u32,
    #[serde(borrow)]
    gtid: Option<Text<'a>>,
    #[serde(default, borrow)]
    file: Text<'a>,
    #[serde(default)]
    pos: u64,
    #[serde(default)]
    row: u32,
    #[serde(borrow)]
    position: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawMeta<'a> {
    v: u32,
    #[serde(borrow)]
    tenant: Text<'a>,
    #[serde(borrow)]
    schema: std::borrow::Cow<'a, str>,
    /// The schema-history version (absent before the source registered one).
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(borrow)]
    columns: Vec<(std::borrow::Cow<'a, str>, &'a str, bool)>,
    #[serde(borrow)]
    pk: Vec<std::borrow::Cow<'a, str>>,
    /// Columns of the after image that are unchanged (not sent by the source).
    #[serde(default, borrow)]
    unchanged: Vec<std::borrow::Cow<'a, str>>,
}

/// Decodes envelopes, reusing the parsed schema while its fingerprint stays
/// the same and the names while they repeat (so a stream of one table does
/// not re-allocate its schema or names per record).
#[derive(Default)]
pub struct Decoder {
    last: Option<(String, Option<u32>, Arc<TableSchema>)>,
    names: [Option<Arc<str>>; 7],
}

/// Returns the shared copy of `s` kept in `slot`, replacing it when `s` differs.
fn intern(slot: &mut Option<Arc<str>>, s: &str) -> Arc<str> {
    match slot {
        Some(a) if **a == *s => a.clone(),
        _ => {
            let a: Arc<str> = Arc::from(s);
            *slot = Some(a.clone());
            a
        }
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes a record value. Never panics; any malformed input is an
    /// [`ModelError::InvalidEnvelope`] or [`ModelError::InvalidValue`].
    pub fn decode(&mut self, bytes: &[u8]) -> Result<ChangeEvent, ModelError> {
        let raw: RawEnvelope<'_> =
            serde_json::from_slice(bytes).map_err(|e| ModelError::InvalidEnvelope(e.to_string()))?;
        if raw.lablake.v != ENVELOPE_VERSION {
            return Err(ModelError::InvalidEnvelope(format!("unsupported envelope version {}", raw.lablake.v)));
        }
        let op =
            Op::from_code(raw.op).ok_or_else(|| ModelError::InvalidEnvelope(format!("unknown op `{}`", raw.op)))?;
        let schema = match &self.last {
            Some((fp, v, s)) if fp.as_str() == raw.lablake.schema && *v == raw.lablake.schema_version => s.clone(),
            _ => {
                let mut s = schema_of(&raw.lablake)?;
                if s.fingerprint() != raw.lablake.schema {
                    return Err(ModelError::InvalidEnvelope("schema fingerprint does not match its columns".into()));
                }
                if let Some(v) = raw.lablake.schema_version {
                    s = s.with_version(v);
                }
                self.last = Some((raw.lablake.schema.to_string(), raw.lablake.schema_version, s.clone()));
                s
            }
        };
        let before = decode_row(&schema, raw.before, &[])?;
        let mut unchanged = Vec::with_capacity(raw.lablake.unchanged.len());
        for name in &raw.lablake.unchanged {
            let i = schema
                .column_index(name)
                .ok_or_else(|| ModelError::InvalidEnvelope(format!("unchanged column `{name}` is not a column")))?;
            unchanged.push(i);
        }
        if !unchanged.is_empty() && op != Op::Update {
            return Err(ModelError::InvalidEnvelope("unchanged columns outside an update".into()));
        }
        let after = decode_row(&schema, raw.after, &unchanged)?;
        let needs = match op {
            Op::Create | Op::Read => after.is_some(),
            Op::Update => after.is_some(),
            Op::Delete => before.is_some(),
            Op::Truncate => before.is_none() && after.is_none(),
        };
        if !needs {
            return Err(ModelError::InvalidEnvelope(format!("op `{}` with the wrong row images", raw.op)));
        }
        let s = raw.source;
        let [tenant, db, table, connector, name, file, gtid] = &mut self.names;
        Ok(ChangeEvent {
            table: TableId {
                tenant: intern(tenant, &raw.lablake.tenant),
                database: intern(db, &s.db),
                table: intern(table, &s.table),
            },
            op,
            schema,
            before,
            after,
            source: SourceInfo {
                connector: intern(connector, &s.connector),
                name: intern(name, &s.name),
                server_id: s.server_id,
                file: intern(file, &s.file),
                pos: s.pos,
                row: s.row,
                gtid: s.gtid.map(|g| intern(gtid, &g)),
                ts_ms: s.ts_ms,
                position: SourcePosition::from_sort_key(s.position.into_owned()),
            },
            ts_ms: raw.ts_ms,
        })
    }
}

fn schema_of(meta: &RawMeta<'_>) -> Result<Arc<TableSchema>, ModelError> {
    let mut columns = Vec::with_capacity(meta.columns.len());
    for (name, ty, nullable) in &meta.columns {
        columns.push(Column { name: name.to_string(), ty: ty.parse()?, nullable: *nullable });
    }
    let mut primary_key = Vec::with_capacity(meta.pk.len());
    for k in &meta.pk {
        let i = columns
            .iter()
            .position(|c| c.name == k.as_ref())
            .ok_or_else(|| ModelError::InvalidEnvelope(format!("primary key column `{k}` is not a column")))?;
        primary_key.push(i);
    }
    Ok(TableSchema::new(columns, primary_key))
}

fn decode_row(
    schema: &TableSchema,
    raw: Option<&RawValue>,
    unchanged: &[usize],
) -> Result<Option<Vec<Value>>, ModelError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    let failure = std::cell::RefCell::new(None);
    let seed = RowSeed { schema, unchanged, failure: &failure };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match serde::de::DeserializeSeed::deserialize(seed, &mut de) {
        Ok(row) => Ok(Some(row)),
        Err(e) => Err(failure.into_inner().unwrap_or_else(|| ModelError::InvalidEnvelope(e.to_string()))),
    }
}

/// Streams a row object straight into values in column order: no map, no
/// per-key allocation.
struct RowSeed<'a> {
    schema: &'a TableSchema,
    /// Column indexes whose value is the unchanged placeholder.
    unchanged: &'a [usize],
    failure: &'a std::cell::RefCell<Option<ModelError>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Vec<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let columns = &self.schema.columns;
        let mut row: Vec<Option<Value>> = vec![None; columns.len()];
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(i) = columns.iter().position(|c| c.name == key) else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            if self.unchanged.contains(&i) {
                map.next_value::<serde::de::IgnoredAny>()?;
                row[i] = Some(Value::Unchanged);
                continue;
            }
            let scalar: serde_json::Value = map.next_value()?;
            match decode_value(&columns[i], &scalar) {
                Ok(v) => row[i] = Some(v),
                Err(e) => {
                    let msg = e.to_string();
                    *self.failure.borrow_mut() = Some(e);
                    return Err(A::Error::custom(msg));
                }
            }
        }
        let mut out = Vec::with_capacity(columns.len());
        for (c, v) in columns.iter().zip(row) {
            match v {
                Some(v) => out.push(v),
                None => {
                    *self.failure.borrow_mut() = Some(ModelError::InvalidValue {
                        column: c.name.clone(),
                        reason: "missing from row image".into(),
                    });
                    return Err(A::Error::custom("missing column"));
                }
            }
        }
        Ok(out)
    }
}

/// Decodes one JSON value of a column; the inverse of [`encode_value`].
pub fn decode_value(c: &Column, v: &serde_json::Value) -> Result<Value, ModelError> {
    let bad = |reason: &str| ModelError::InvalidValue { column: c.name.clone(), reason: reason.to_owned() };
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(match &c.ty {
        ColumnType::Int { unsigned: false, .. } => Value::Int(v.as_i64().ok_or_else(|| bad("not a signed integer"))?),
        ColumnType::Int { unsigned: true, .. } => {
            Value::UInt(v.as_u64().ok_or_else(|| bad("not an unsigned integer"))?)
        }
        ColumnType::Year => {
            Value::Year(v.as_u64().and_then(|y| u16::try_from(y).ok()).ok_or_else(|| bad("not a year"))?)
        }
        ColumnType::Time => Value::Time(v.as_i64().ok_or_else(|| bad("not microseconds"))?),
        ColumnType::Float => Value::Float(decode_f64(v).ok_or_else(|| bad("not a number"))? as f32),
        ColumnType::Double => Value::Double(decode_f64(v).ok_or_else(|| bad("not a number"))?),
        ColumnType::Decimal { .. } => {
            let s = v.as_str().ok_or_else(|| bad("decimal is not a string"))?;
            if !is_decimal(s) {
                return Err(bad("not a decimal"));
            }
            Value::Decimal(s.to_owned())
        }
        ColumnType::Date => Value::Date(
            parse_date(v.as_str().ok_or_else(|| bad("date is not a string"))?).ok_or_else(|| bad("bad date"))?,
        ),
        ColumnType::DateTime => Value::DateTime(
            parse_datetime(v.as_str().ok_or_else(|| bad("datetime is not a string"))?)
                .ok_or_else(|| bad("bad datetime"))?,
        ),
        ColumnType::Timestamp => {
            let s = v.as_str().ok_or_else(|| bad("timestamp is not a string"))?;
            let dt = s.strip_suffix('Z').and_then(parse_datetime).ok_or_else(|| bad("bad timestamp"))?;
            Value::Timestamp(dt.micros_since_epoch().ok_or_else(|| bad("bad timestamp"))?)
        }
        ColumnType::String => Value::String(as_string(v).ok_or_else(|| bad("not a string"))?),
        ColumnType::Enum => Value::Enum(as_string(v).ok_or_else(|| bad("not a string"))?),
        ColumnType::Set => Value::Set(as_string(v).ok_or_else(|| bad("not a string"))?),
        ColumnType::Json | ColumnType::Array => {
            let s = as_string(v).ok_or_else(|| bad("not a string"))?;
            Value::Json(s)
        }
        ColumnType::Bool => Value::Bool(v.as_bool().ok_or_else(|| bad("not a boolean"))?),
        ColumnType::Uuid | ColumnType::Interval | ColumnType::TimeTz => {
            Value::String(as_string(v).ok_or_else(|| bad("not a string"))?)
        }
        ColumnType::Numeric => {
            let s = v.as_str().ok_or_else(|| bad("numeric is not a string"))?;
            if !is_decimal(s) && !matches!(s, "NaN" | "Infinity" | "-Infinity") {
                return Err(bad("not a numeric"));
            }
            Value::Decimal(s.to_owned())
        }
        ColumnType::Bytes | ColumnType::Bit { .. } => {
            let s = v.as_str().ok_or_else(|| bad("not base64"))?;
            let b = B64.decode(s).map_err(|_| bad("not base64"))?;
            if matches!(c.ty, ColumnType::Bit { .. }) { Value::Bit(b) } else { Value::Bytes(b) }
        }
    })
}

fn as_string(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn decode_f64(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// `-?digits(.digits)?`
pub fn is_decimal(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (!s.contains('.') || !frac.is_empty())
}

fn num<T: std::str::FromStr>(s: &str, len: usize) -> Option<T> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    Some(Date { year: num(&s[0..4], 4)?, month: num(&s[5..7], 2)?, day: num(&s[8..10], 2)? })
}

/// Parses `YYYY-MM-DDTHH:MM:SS.ffffff`.
pub fn parse_datetime(s: &str) -> Option<DateTime> {
    let b = s.as_bytes();
    if b.len() != 26 || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'.' {
        return None;
    }
    let dt = DateTime {
        date: parse_date(&s[0..10])?,
        hour: num(&s[11..13], 2)?,
        minute: num(&s[14..16], 2)?,
        second: num(&s[17..19], 2)?,
        micros: num(&s[20..26], 6)?,
    };
    (dt.hour < 24 && dt.minute < 60 && dt.second < 60).then_some(dt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_round_trip_bit_for_bit() {
        let col = Column { name: "d".into(), ty: ColumnType::Double, nullable: true };
        for d in [-2.25e-300, 5e-324, f64::MIN_POSITIVE, f64::MAX, 0.1 + 0.2, -0.0, 1e23, 123_456.789_012_345_68] {
            let mut out = Vec::new();
            encode_value(&Value::Double(d), &mut out);
            let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let Value::Double(back) = decode_value(&col, &json).unwrap() else { panic!() };
            assert_eq!(back.to_bits(), d.to_bits(), "{d:e}");
        }
    }

    #[test]
    fn unchanged_values_round_trip_and_are_listed() {
        let mut e = sample_event();
        let n = e.schema.column_index("n").unwrap();
        let s = e.schema.column_index("s").unwrap();
        let after = e.after.as_mut().unwrap();
        after[n] = Value::Unchanged;
        after[s] = Value::Unchanged;
        let mut out = Vec::new();
        encode(&e, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("\"unchanged\":[\"s\",\"n\"]"), "{text}");
        assert!(text.contains("\"n\":\"__debezium_unavailable_value\""), "{text}");
        let back = Decoder::new().decode(&out).unwrap();
        assert_eq!(back.after, e.after);
        // Unchanged outside an update is rejected.
        let bad = text.replace("\"op\":\"u\"", "\"op\":\"c\"");
        assert!(Decoder::new().decode(bad.as_bytes()).is_err());
    }

    #[test]
    fn truncates_round_trip_without_row_images() {
        let mut e = sample_event();
        e.op = Op::Truncate;
        e.before = None;
        e.after = None;
        let mut out = Vec::new();
        encode(&e, &mut out);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("\"op\":\"t\""), "{text}");
        let back = Decoder::new().decode(&out).unwrap();
        assert_eq!(back.op, Op::Truncate);
        assert!(back.before.is_none() && back.after.is_none());
        // A truncate with a row image is malformed.
        let mut with_row = sample_event();
        with_row.op = Op::Truncate;
        let mut out = Vec::new();
        encode(&with_row, &mut out);
        assert!(Decoder::new().decode(&out).is_err());
    }

    #[test]
    fn schema_versions_round_trip_and_are_optional() {
        let mut dec = Decoder::new();
        let plain = sample_event();
        let mut out = Vec::new();
        encode(&plain, &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("schema_version"));
        assert_eq!(dec.decode(&out).unwrap().schema.version(), None);
        let mut versioned = sample_event();
        versioned.schema = versioned.schema.with_version(7);
        assert_eq!(versioned.schema.fingerprint(), plain.schema.fingerprint());
        let mut out = Vec::new();
        encode(&versioned, &mut out);
        assert!(String::from_utf8_lossy(&out).contains("\"schema_version\":7,"));
        // Same fingerprint, new version: the decoder's cached schema is not reused.
        assert_eq!(dec.decode(&out).unwrap().schema.version(), Some(7));
    }

    #[test]
    fn hand_written_formatters_match_display() {
        for (y, mo, d, h, mi, se, us) in [
            (0, 0, 0, 0, 0, 0, 0),
            (1, 2, 3, 4, 5, 6, 7),
            (2026, 11, 27, 23, 59, 59, 999_999),
            (65535, 12, 31, 9, 9, 9, 10),
        ] {
            let dt =
                DateTime { date: Date { year: y, month: mo, day: d }, hour: h, minute: mi, second: se, micros: us };
            let mut out = Vec::new();
            push_datetime(&mut out, &dt);
            assert_eq!(String::from_utf8(out).unwrap(), dt.to_string());
            let mut out = Vec::new();
            push_date(&mut out, &dt.date);
            assert_eq!(String::from_utf8(out).unwrap(), dt.date.to_string());
        }
        for s in [
            "plain",
            "",
            "quote\"",
            "back\\slash",
            "tab\t",
            "nul\u{0}",
            "ünï€😀",
            "\u{7f}",
            "exactly8",
            "sixteen chars ok",
            "long enough string with a \" late",
            "long enough string with a \\ late",
            "long enough string with a \u{1f} late",
            "long enough string with nothing to escape ~~~ \u{ff} ü",
        ] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        let mut out = Vec::new();
        push_int(&mut out, i64::MIN);
        assert_eq!(out, i64::MIN.to_string().as_bytes());
    }

    pub(crate) fn sample_event() -> ChangeEvent {
        let cols = [
            ("id", "uint64", false),
            ("i8", "int8", true),
            ("f", "float", true),
            ("d", "double", true),
            ("dec", "decimal(65,30)", true),
            ("dt", "date", true),
            ("tm", "time", true),
            ("dtm", "datetime", true),
            ("ts", "timestamp", true),
            ("y", "year", true),
            ("s", "string", true),
            ("b", "bytes", true),
            ("e", "enum", true),
            ("st", "set", true),
            ("bit", "bit(9)", true),
            ("j", "json", true),
            ("bo", "bool", true),
            ("u", "uuid", true),
            ("n", "numeric", true),
            ("iv", "interval", true),
            ("tz", "timetz", true),
            ("ar", "array", true),
        ];
        let schema = TableSchema::new(
            cols.iter().map(|(n, t, nl)| Column { name: (*n).into(), ty: t.parse().unwrap(), nullable: *nl }).collect(),
            vec![0],
        );
        let row = vec![
            Value::UInt(u64::MAX),
            Value::Int(-128),
            Value::Float(0.1),
            Value::Double(-2.25e-300),
            Value::Decimal("-12345678901234567890123456789012345.123456789012345678901234567890".into()),
            Value::Date(Date { year: 0, month: 0, day: 0 }),
            Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000),
            Value::DateTime(DateTime {
                date: Date { year: 9999, month: 12, day: 31 },
                hour: 23,
                minute: 59,
                second: 59,
                micros: 999_999,
            }),
            Value::Timestamp(1_700_000_000_123_456),
            Value::Year(2155),
            Value::String("héllo \"wörld\"\n\u{1F600}".into()),
            Value::Bytes(vec![0, 255, 1, 2]),
            Value::Enum("high".into()),
            Value::Set("a,c".into()),
            Value::Bit(vec![1, 0xff]),
            Value::Json("{\"k\":[1,2.5,null]}".into()),
            Value::Bool(false),
            Value::String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            Value::Decimal("NaN".into()),
            Value::String("1 year 2 mons 3 days 04:05:06.000007".into()),
            Value::String("04:05:06.789+02".into()),
            Value::Json("[[\"1\",null],[\"a,b\",\"{}\"]]".into()),
        ];
        ChangeEvent {
            table: TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "results".into() },
            op: Op::Update,
            schema,
            before: Some(
                row.iter().map(|v| if matches!(v, Value::UInt(_)) { v.clone() } else { Value::Null }).collect(),
            ),
            after: Some(row),
            source: SourceInfo {
                connector: "mysql".into(),
                name: "main".into(),
                server_id: 7,
                file: "binlog.000003".into(),
                pos: 4242,
                row: 3,
                gtid: Some("0-1-99".into()),
                ts_ms: 1_700_000_000_000,
                position: SourcePosition::mysql(3, 4242, 3),
            },
            ts_ms: 1_700_000_000_500,
        }
    }

    #[test]
    fn envelope_round_trips_every_type_exactly() {
        let e = sample_event();
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        let parsed: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(parsed["op"], "u");
        assert_eq!(parsed["source"]["db"], "lab_acme");
        let mut dec = Decoder::new();
        let back = dec.decode(&buf).unwrap();
        assert_eq!(back, e);
        // Second decode reuses the cached schema and is still equal.
        assert_eq!(dec.decode(&buf).unwrap(), e);
        let mut key = Vec::new();
        encode_key(&e, &mut key);
        assert_eq!(key, br#"{"id":18446744073709551615}"#);
    }

    #[test]
    fn malformed_envelopes_are_errors_not_panics() {
        let e = sample_event();
        let mut buf = Vec::new();
        encode(&e, &mut buf);
        let mut dec = Decoder::new();
        for cut in [0, 1, 10, buf.len() / 2, buf.len() - 1] {
            assert!(dec.decode(&buf[..cut]).is_err());
        }
        let text = String::from_utf8(buf).unwrap();
        for (from, to) in
            [("\"op\":\"u\"", "\"op\":\"x\""), ("\"uint64\"", "\"uint65\""), ("\"high\"", "17"), ("\"v\":1", "\"v\":2")]
        {
            let bad = text.replacen(from, to, 1);
            assert!(dec.decode(bad.as_bytes()).is_err(), "{from} -> {to}");
        }
        assert!(dec.decode(b"\xff\xfe").is_err());
    }

    #[test]
    fn decimal_and_time_parsers_are_strict() {
        assert!(is_decimal("0") && is_decimal("-1.50") && !is_decimal("1.") && !is_decimal("") && !is_decimal("1e5"));
        assert!(parse_datetime("2024-01-01T00:00:00.000000").is_some());
        assert!(parse_datetime("2024-01-01T24:00:00.000000").is_none());
        assert!(parse_date("2024-1-01").is_none());
    }
}
