//! The pgoutput state machine: transactions, streamed (in-progress)
//! transactions, relations and tenant routing (the shared
//! [`lablake_model::tenant::route`]), turning messages into
//! [`SourceItem`]s. No network I/O: the caller resolves catalog data (type
//! kinds, primary keys) and hands in each XLogData payload.
//!
//! Streamed transactions (protocol 2, `streaming 'on'`) arrive in blocks
//! before their commit; their messages are kept in memory up to
//! `spill_memory_bytes` in total, then appended to a spill file per
//! transaction, and replayed lazily — one message at a time from
//! [`PgDecoder::pop`] — when the transaction commits. Memory therefore does
//! not grow with transaction size. Aborted (sub)transactions are dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use lablake_model::tenant::{self, Route, TableFilter, TenantNames, TenantRule};
use lablake_model::{Column, Op, Resume, SourceInfo, SourcePosition, TableSchema, Value, now_ms};
use lablake_source::{SourceItem, Unresolved, UnresolvedRow, Watermark};
use tracing::warn;

use crate::error::{PgError, lsn_text};
use crate::identity;
use crate::pgoutput::{self, Message, OldKind, Relation, TupleValue};
use crate::values::{self, PgKind};

/// Microseconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// What the decoder needs to know about the source.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Logical source name, copied into every `SourceInfo.name`.
    pub source_name: String,
    /// Tenant of a change: by schema name pattern or by a tenant column.
    pub tenant: TenantRule,
    /// Which `schema.table`s are captured.
    pub filter: TableFilter,
    /// Prefix of the logical messages that are heartbeats.
    pub heartbeat_prefix: String,
    /// Folder for spill files of large streamed transactions.
    pub spill_dir: PathBuf,
    /// Bytes of streamed-transaction messages kept in memory, in total.
    pub spill_memory_bytes: usize,
}

/// The names every change of one PostgreSQL source carries, shared: building
/// a change's [`SourceInfo`] clones them and allocates nothing.
#[derive(Debug, Clone)]
pub struct PgOrigin {
    connector: Arc<str>,
    name: Arc<str>,
    file: Arc<str>,
}

impl PgOrigin {
    pub fn new(source_name: &str) -> Self {
        PgOrigin { connector: "postgresql".into(), name: source_name.into(), file: "".into() }
    }

    /// The source block of a change: `pos` is the LSN, `file` empty.
    pub fn source(&self, lsn: u64, ts_ms: i64, position: SourcePosition) -> SourceInfo {
        SourceInfo {
            connector: self.connector.clone(),
            name: self.name.clone(),
            server_id: 0,
            file: self.file.clone(),
            pos: lsn,
            row: 0,
            gtid: None,
            ts_ms,
            position,
        }
    }
}

/// Prefix of the logical messages that mark snapshot chunk windows.
pub const WATERMARK_PREFIX: &str = "lablake.watermark";

/// A relation as the decoder uses it.
#[derive(Debug)]
struct RelInfo {
    namespace: Arc<str>,
    table: Arc<str>,
    schema: Arc<TableSchema>,
    kinds: Vec<PgKind>,
    /// `(type oid, type modifier)` per column, as the Relation message sent them.
    types: Vec<(u32, i32)>,
    selected: bool,
}

impl RelInfo {
    fn qualified(&self) -> String {
        format!("{}.{}", self.namespace, self.table)
    }
}

struct Tx {
    commit_lsn: u64,
    commit_ts_ms: i64,
    seq: u32,
}

/// Buffered messages of one streamed transaction.
#[derive(Default)]
struct StreamBuffer {
    mem: Vec<u8>,
    file: Option<(PathBuf, BufWriter<File>)>,
    aborted: HashSet<u32>,
}

/// A committed streamed transaction being replayed.
struct Replay {
    mem: Vec<u8>,
    at: usize,
    file: Option<(PathBuf, BufReader<File>)>,
    aborted: HashSet<u32>,
    end_lsn: u64,
}

/// The pgoutput decoder. See the module documentation.
pub struct PgDecoder {
    cfg: DecoderConfig,
    origin: PgOrigin,
    relations: HashMap<u32, Arc<RelInfo>>,
    kinds: HashMap<u32, PgKind>,
    tx: Option<Tx>,
    /// Top-level xid of the open stream block.
    stream: Option<u32>,
    buffers: HashMap<u32, StreamBuffer>,
    buffered_bytes: usize,
    replay: Option<Replay>,
    pending: VecDeque<SourceItem>,
    tenants: TenantNames,
    warned: HashSet<String>,
}

impl PgDecoder {
    pub fn new(cfg: DecoderConfig) -> Self {
        PgDecoder {
            origin: PgOrigin::new(&cfg.source_name),
            cfg,
            relations: HashMap::new(),
            kinds: HashMap::new(),
            tx: None,
            stream: None,
            buffers: HashMap::new(),
            buffered_bytes: 0,
            replay: None,
            pending: VecDeque::new(),
            tenants: TenantNames::new(),
            warned: HashSet::new(),
        }
    }

    /// Whether the next message is inside a Stream Start/Stop block (its
    /// parse needs to know).
    pub fn in_stream(&self) -> bool {
        self.stream.is_some()
    }

    /// Whether the decoder holds no committed work: nothing pending, nothing
    /// being replayed. The caller reads the next message only then.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.replay.is_none()
    }

    /// Type OIDs of `rel` that are neither built in nor already resolved.
    pub fn unknown_types(&self, rel: &Relation) -> Vec<u32> {
        rel.columns
            .iter()
            .filter(|c| PgKind::builtin(c.type_oid, c.type_modifier).is_none() && !self.kinds.contains_key(&c.type_oid))
            .map(|c| c.type_oid)
            .collect()
    }

    /// Records the kind of a catalog type (enum, domain, array, ...).
    pub fn put_kind(&mut self, oid: u32, kind: PgKind) {
        self.kinds.insert(oid, kind);
    }

    /// The kind of a column type, once known.
    pub fn kind_of(&self, oid: u32, typmod: i32) -> Option<PgKind> {
        PgKind::builtin(oid, typmod).or_else(|| self.kinds.get(&oid).cloned())
    }

    /// The schema a relation's changes carry, and the kinds of its columns:
    /// the same for a Relation message and for a snapshot of the table built
    /// from the catalog, so both produce identical events. The key is the
    /// primary key, else the replica identity, else every column.
    pub fn relation_schema(&self, rel: &Relation, primary_key: &[String]) -> (Arc<TableSchema>, Vec<PgKind>) {
        let (kinds, columns, mut pk) = self.relation_layout(rel, primary_key);
        if pk.is_empty() {
            pk = (0..columns.len()).collect();
        }
        (TableSchema::new(columns, pk), kinds)
    }

    fn relation_layout(&self, rel: &Relation, primary_key: &[String]) -> (Vec<PgKind>, Vec<Column>, Vec<usize>) {
        let kinds: Vec<PgKind> =
            rel.columns.iter().map(|c| self.kind_of(c.type_oid, c.type_modifier).unwrap_or(PgKind::Other)).collect();
        let columns: Vec<Column> = rel
            .columns
            .iter()
            .zip(&kinds)
            .map(|(c, k)| Column { name: c.name.clone(), ty: k.column_type(), nullable: true })
            .collect();
        let mut pk: Vec<usize> =
            primary_key.iter().filter_map(|k| rel.columns.iter().position(|c| &c.name == k)).collect();
        if pk.len() != primary_key.len() || pk.is_empty() {
            pk = rel.columns.iter().enumerate().filter(|(_, c)| c.key).map(|(i, _)| i).collect();
        }
        (kinds, columns, pk)
    }

    /// Applies a Relation message. `primary_key` lists the table's primary
    /// key columns from the catalog (empty: use the replica identity).
    ///
    /// Under the tenant-column rule a selected table whose replica identity
    /// does not cover the tenant column is refused
    /// ([`PgError::ServerConfig`], see [`identity::check_relation`]): its
    /// updates would not say which tenant a row left. The source must stop
    /// there rather than leave moved rows behind.
    pub fn put_relation(&mut self, rel: Relation, primary_key: &[String]) -> Result<(), PgError> {
        let selected = self.cfg.filter.matches(&rel.namespace, &rel.name);
        if let (true, TenantRule::Column { column }) = (selected, &self.cfg.tenant) {
            identity::check_relation(&rel, column)?;
        }
        let (kinds, columns, mut pk) = self.relation_layout(&rel, primary_key);
        let qualified = format!("{}.{}", rel.namespace, rel.name);
        if selected && rel.replica_identity == b'n' && self.warned.insert(format!("ri:{qualified}")) {
            warn!(table = %qualified, "table has REPLICA IDENTITY NOTHING: updates and deletes cannot be captured");
        }
        if selected && pk.is_empty() && self.warned.insert(format!("pk:{qualified}")) {
            warn!(table = %qualified, "table has no primary key and no usable replica identity: \
                every column is used as the key; set REPLICA IDENTITY FULL or add a primary key");
            pk = (0..columns.len()).collect();
        }
        if selected && kinds.contains(&PgKind::Other) && self.warned.insert(format!("other:{qualified}")) {
            warn!(table = %qualified, "columns of types without a decoder are captured as their binary form");
        }
        let info = RelInfo {
            namespace: rel.namespace.as_str().into(),
            table: rel.name.as_str().into(),
            schema: TableSchema::new(columns, pk),
            kinds,
            types: rel.columns.iter().map(|c| (c.type_oid, c.type_modifier)).collect(),
            selected,
        };
        self.relations.insert(rel.oid, Arc::new(info));
        Ok(())
    }

    /// Feeds one XLogData payload (`wal_end`: the frame's end LSN). Relation
    /// messages must go to [`Self::put_relation`] instead.
    pub fn push(&mut self, data: &[u8], wal_end: u64) -> Result<(), PgError> {
        let msg = pgoutput::parse(data, self.in_stream()).map_err(|reason| protocol(wal_end, reason))?;
        match msg {
            Message::Begin { final_lsn, commit_ts, .. } => {
                self.tx = Some(Tx { commit_lsn: final_lsn, commit_ts_ms: pg_ts_ms(commit_ts), seq: 0 });
            }
            Message::Commit { commit_lsn, end_lsn, commit_ts, .. } => {
                self.tx = None;
                self.pending.push_back(SourceItem::Commit {
                    resume: Resume::Lsn(end_lsn),
                    position: SourcePosition::postgres(commit_lsn, u32::MAX),
                    commit_ts_ms: pg_ts_ms(commit_ts),
                });
            }
            Message::StreamStart { xid, .. } => self.stream = Some(xid),
            Message::StreamStop => self.stream = None,
            Message::StreamAbort { xid, subxid } => {
                if xid == subxid {
                    if let Some(b) = self.buffers.remove(&xid) {
                        self.buffered_bytes = self.buffered_bytes.saturating_sub(b.mem.len());
                        if let Some((path, _)) = b.file {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                } else if let Some(b) = self.buffers.get_mut(&xid) {
                    b.aborted.insert(subxid);
                }
            }
            Message::StreamCommit { xid, commit_lsn, end_lsn, commit_ts, .. } => {
                let b = self.buffers.remove(&xid).unwrap_or_default();
                self.buffered_bytes = self.buffered_bytes.saturating_sub(b.mem.len());
                let file = match b.file {
                    Some((path, mut w)) => {
                        w.flush()?;
                        drop(w);
                        let f = File::open(&path)?;
                        Some((path, BufReader::new(f)))
                    }
                    None => None,
                };
                self.tx = Some(Tx { commit_lsn, commit_ts_ms: pg_ts_ms(commit_ts), seq: 0 });
                self.replay = Some(Replay { mem: b.mem, at: 0, file, aborted: b.aborted, end_lsn });
            }
            Message::Message { transactional: false, prefix, .. } if prefix == self.cfg.heartbeat_prefix => {
                if self.tx.is_none() && self.stream.is_none() {
                    self.pending.push_back(SourceItem::Heartbeat { resume: Resume::Lsn(wal_end) });
                }
            }
            Message::Message { transactional: true, prefix: WATERMARK_PREFIX, content, xid: None, .. } => {
                if let (Some(tx), None) = (&self.tx, self.stream) {
                    let id = String::from_utf8_lossy(content).into_owned();
                    let (commit_lsn, commit_ts_ms) = (tx.commit_lsn, tx.commit_ts_ms);
                    let at = self.origin.source(commit_lsn, commit_ts_ms, SourcePosition::postgres(commit_lsn, 0));
                    self.pending.push_back(SourceItem::Watermark(Watermark::lsn(id, at)));
                }
            }
            Message::Relation { .. } => return Err(protocol(wal_end, "Relation message passed to push".into())),
            Message::Origin { .. } | Message::Type { .. } | Message::Message { .. } => {}
            Message::Insert { xid, .. }
            | Message::Update { xid, .. }
            | Message::Delete { xid, .. }
            | Message::Truncate { xid, .. } => match (self.stream, xid) {
                (Some(top), Some(sub)) => self.buffer(top, sub, data)?,
                (None, None) => self.change(msg, wal_end),
                _ => return Err(protocol(wal_end, "change outside its transaction".into())),
            },
        }
        Ok(())
    }

    /// The next item, if any. Replays committed streamed transactions one
    /// message at a time.
    pub fn pop(&mut self) -> Result<Option<SourceItem>, PgError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let Some(replay) = &mut self.replay else { return Ok(None) };
            match next_record(replay)? {
                Some((sub, data)) => {
                    if replay.aborted.contains(&sub) {
                        continue;
                    }
                    let end = replay.end_lsn;
                    match pgoutput::parse(&data, true) {
                        Ok(msg) => self.change(msg, end),
                        Err(reason) => return Err(protocol(end, reason)),
                    }
                }
                None => {
                    let Some(r) = self.replay.take() else { continue };
                    if let Some((path, _)) = r.file {
                        let _ = std::fs::remove_file(path);
                    }
                    let tx = self.tx.take();
                    self.pending.push_back(SourceItem::Commit {
                        resume: Resume::Lsn(r.end_lsn),
                        position: SourcePosition::postgres(tx.as_ref().map_or(0, |t| t.commit_lsn), u32::MAX),
                        commit_ts_ms: tx.map_or(0, |t| t.commit_ts_ms),
                    });
                }
            }
        }
    }

    fn buffer(&mut self, top: u32, sub: u32, data: &[u8]) -> Result<(), PgError> {
        // Record: subtransaction xid, length, message (all big-endian).
        let len = u32::try_from(data.len())
            .map_err(|_| PgError::Protocol { lsn: "?".into(), reason: "message over 4 GiB".into() })?;
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&sub.to_be_bytes());
        header[4..].copy_from_slice(&len.to_be_bytes());
        let over = self.buffered_bytes + data.len() + 8 > self.cfg.spill_memory_bytes;
        let b = self.buffers.entry(top).or_default();
        if b.file.is_none() && over {
            std::fs::create_dir_all(&self.cfg.spill_dir)?;
            let path = self.cfg.spill_dir.join(format!("stream-{}-{top}.spill", std::process::id()));
            let mut w = BufWriter::new(File::create(&path)?);
            // What was in memory goes first, so the file keeps the order.
            w.write_all(&b.mem)?;
            self.buffered_bytes = self.buffered_bytes.saturating_sub(b.mem.len());
            b.mem = Vec::new();
            b.file = Some((path, w));
            tracing::debug!(xid = top, "streamed transaction over spill_memory_bytes: spilling it to disk");
        }
        match &mut b.file {
            Some((_, w)) => {
                w.write_all(&header)?;
                w.write_all(data)?;
            }
            None => {
                self.buffered_bytes += header.len() + data.len();
                b.mem.extend_from_slice(&header);
                b.mem.extend_from_slice(data);
            }
        }
        Ok(())
    }

    /// A change message of a committed transaction → items, routed to
    /// tenants by [`tenant::route`].
    ///
    /// The before image is the old tuple when one was sent: the whole row
    /// (`O`, REPLICA IDENTITY FULL) or the identity key (`K`, other columns
    /// null) when the key changed. Under the tenant-column rule the identity
    /// covers the tenant column ([`identity`]), so an update without an old
    /// tuple did not change tenant, and a move is a delete in the old tenant
    /// and a create in the new one.
    fn change(&mut self, msg: Message<'_>, lsn: u64) {
        let Some(tx) = &mut self.tx else {
            self.pending.push_back(SourceItem::Unresolved(Unresolved {
                table: "?".into(),
                reason: format!("change outside a transaction at {}", lsn_text(lsn)),
                position: SourcePosition::postgres(lsn, 0),
                tenant: None,
                row: UnresolvedRow::Nothing,
            }));
            return;
        };
        let position = SourcePosition::postgres(tx.commit_lsn, tx.seq);
        tx.seq = tx.seq.saturating_add(1);
        let ts_ms = tx.commit_ts_ms;
        let (rel_oid, op, old, new) = match msg {
            Message::Insert { relation, new, .. } => (relation, Op::Create, None, Some(new)),
            Message::Update { relation, old, new, .. } => (relation, Op::Update, old, Some(new)),
            Message::Delete { relation, old, .. } => (relation, Op::Delete, Some(old), None),
            Message::Truncate { relations, .. } => {
                let rels: Vec<Arc<RelInfo>> = relations
                    .iter()
                    .filter_map(|oid| self.relations.get(oid).cloned())
                    .filter(|r| r.selected)
                    .collect();
                let (commit_lsn, mut seq) = (tx.commit_lsn, tx.seq);
                let now = now_ms();
                for r in rels {
                    let position = SourcePosition::postgres(commit_lsn, seq);
                    seq = seq.saturating_add(1);
                    // Under the column rule: rows of every tenant went, which
                    // tenants had rows is unknown here (unresolved).
                    let routed = tenant::route(
                        &mut self.tenants,
                        &self.cfg.tenant,
                        &r.namespace,
                        &r.schema,
                        Op::Truncate,
                        None,
                        None,
                    );
                    let source = self.origin.source(lsn, ts_ms, position);
                    self.emit(&r, routed, source, now);
                }
                if let Some(tx) = &mut self.tx {
                    tx.seq = seq;
                }
                return;
            }
            _ => return,
        };
        let Some(rel) = self.relations.get(&rel_oid).cloned() else {
            self.pending.push_back(SourceItem::Unresolved(Unresolved {
                table: format!("oid {rel_oid}"),
                reason: "change of a relation without a Relation message".into(),
                position,
                tenant: None,
                row: UnresolvedRow::Nothing,
            }));
            return;
        };
        if !rel.selected {
            return;
        }
        let mut unresolved = |reason: String| {
            // Known under the schema rule (None under the column rule: the row is unreadable).
            let tenant = self.tenants.of_database(&self.cfg.tenant, &rel.namespace);
            if self.warned.insert(format!("undecodable:{}", rel.qualified())) {
                warn!(table = %rel.qualified(), reason = %reason,
                    "row that cannot be decoded: sent to the dead-letter topic, the stream goes on");
            }
            SourceItem::Unresolved(Unresolved {
                table: rel.qualified(),
                reason,
                position: position.clone(),
                tenant,
                row: UnresolvedRow::Raw(raw_tuples(&rel, lsn, op, old.as_ref(), new.as_deref())),
            })
        };
        let old_row = match old.as_ref().map(|(k, t)| (k, decode_row(&rel, t, None))) {
            Some((_, Err(e))) => return self.pending.push_back(unresolved(e)),
            Some((kind, Ok(row))) => Some((*kind, row)),
            None => None,
        };
        let full_old = old_row.as_ref().filter(|(k, _)| *k == OldKind::Old).map(|(_, r)| r.as_slice());
        let new_row = match new.as_ref().map(|t| decode_row(&rel, t, full_old)) {
            Some(Err(e)) => return self.pending.push_back(unresolved(e)),
            Some(Ok(row)) => Some(row),
            None => None,
        };
        let before = old_row.map(|(_, r)| r);
        let routed =
            tenant::route(&mut self.tenants, &self.cfg.tenant, &rel.namespace, &rel.schema, op, before, new_row);
        let source = self.origin.source(lsn, ts_ms, position);
        self.emit(&rel, routed, source, now_ms());
    }

    /// Buffers the routed outputs of one change of `rel`; the last takes
    /// `source` itself (no copy on the common one-change path).
    fn emit(&mut self, rel: &RelInfo, routed: tenant::Routed, source: SourceInfo, now: i64) {
        let pending = &mut self.pending;
        routed.each_with(source, |route, source| {
            pending.push_back(match route {
                Route::Change(c) => {
                    SourceItem::Change(c.into_event(&rel.namespace, &rel.table, &rel.schema, source, now))
                }
                Route::Unresolved(u) => SourceItem::Unresolved(Unresolved::unrouted(
                    rel.qualified(),
                    u,
                    (&rel.namespace, &rel.table, &rel.schema),
                    source,
                    now,
                )),
            })
        });
    }
}

/// The raw record of a row that cannot be decoded: the JSON object
/// `{"format": "pgoutput-tuple/1", "table", "lsn", "op", "columns":
/// [{"name", "type_oid", "type_modifier"}], "old_kind": "key"|"old"|null,
/// "old": [cell]|null, "new": [cell]|null}`, a cell being `{"k": "n"}` (NULL),
/// `{"k": "u"}` (unchanged TOAST value), `{"k": "t"|"b", "v": base64}` (text
/// or binary value as sent) — what a fixed decoder needs to read it again.
fn raw_tuples(
    rel: &RelInfo,
    lsn: u64,
    op: Op,
    old: Option<&(OldKind, Vec<TupleValue<'_>>)>,
    new: Option<&[TupleValue<'_>]>,
) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let cells = |t: &[TupleValue<'_>]| -> Vec<serde_json::Value> {
        t.iter()
            .map(|v| match v {
                TupleValue::Null => serde_json::json!({"k": "n"}),
                TupleValue::Unchanged => serde_json::json!({"k": "u"}),
                TupleValue::Text(b) => serde_json::json!({"k": "t", "v": b64.encode(b)}),
                TupleValue::Binary(b) => serde_json::json!({"k": "b", "v": b64.encode(b)}),
            })
            .collect()
    };
    let columns: Vec<serde_json::Value> = rel
        .schema
        .columns
        .iter()
        .zip(&rel.types)
        .map(|(c, (oid, modifier))| serde_json::json!({"name": c.name, "type_oid": oid, "type_modifier": modifier}))
        .collect();
    serde_json::json!({
        "format": "pgoutput-tuple/1",
        "table": rel.qualified(),
        "lsn": lsn_text(lsn),
        "op": op.code(),
        "columns": columns,
        "old_kind": old.map(|(k, _)| if *k == OldKind::Old { "old" } else { "key" }),
        "old": old.map(|(_, t)| cells(t)),
        "new": new.map(cells),
    })
    .to_string()
}

/// Decodes a tuple; unchanged TOAST values come from the full old row when
/// there is one.
fn decode_row(rel: &RelInfo, tuple: &[TupleValue<'_>], old: Option<&[Value]>) -> Result<Vec<Value>, String> {
    if tuple.len() != rel.kinds.len() {
        return Err(format!("tuple has {} columns, relation {}", tuple.len(), rel.kinds.len()));
    }
    let mut row = Vec::with_capacity(tuple.len());
    for (i, (t, kind)) in tuple.iter().zip(&rel.kinds).enumerate() {
        let name = &rel.schema.columns[i].name;
        row.push(match t {
            TupleValue::Null => Value::Null,
            TupleValue::Binary(b) => values::decode(kind, b).map_err(|e| format!("column `{name}`: {e}"))?,
            TupleValue::Text(_) => return Err(format!("column `{name}`: text value in a binary stream")),
            // An unchanged TOASTed value: from the full old row when there is
            // one (REPLICA IDENTITY FULL), otherwise marked unchanged.
            TupleValue::Unchanged => match old.and_then(|o| o.get(i)) {
                Some(v) => v.clone(),
                None => Value::Unchanged,
            },
        });
    }
    Ok(row)
}

/// The next `(subxid, message)` of a replay: the spill file first (it holds
/// the older messages), then memory.
fn next_record(r: &mut Replay) -> Result<Option<(u32, Vec<u8>)>, PgError> {
    if let Some((_, f)) = &mut r.file {
        let mut head = [0u8; 8];
        match f.read_exact(&mut head) {
            Ok(()) => {
                let sub = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
                let mut data = vec![0u8; len];
                f.read_exact(&mut data)?;
                return Ok(Some((sub, data)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                if let Some((path, _)) = r.file.take() {
                    let _ = std::fs::remove_file(path);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some(head) = r.mem.get(r.at..r.at + 8) else { return Ok(None) };
    let sub = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let data = r.mem.get(r.at + 8..r.at + 8 + len).map(<[u8]>::to_vec);
    r.at += 8 + len;
    Ok(data.map(|d| (sub, d)))
}

fn protocol(lsn: u64, reason: String) -> PgError {
    PgError::Protocol { lsn: lsn_text(lsn), reason }
}

fn pg_ts_ms(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_MICROS) / 1000
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pgoutput::RelationColumn;
    use crate::pgoutput::tests::Msg;
    use lablake_model::ChangeEvent;

    fn decoder(spill_memory_bytes: usize) -> PgDecoder {
        let dir = std::env::temp_dir().join(format!("lablake-pg-decoder-test-{}", std::process::id()));
        PgDecoder::new(DecoderConfig {
            source_name: "pg".into(),
            tenant: TenantRule::schema_pattern("lab_{tenant}").unwrap(),
            filter: TableFilter::new(&[], &[]).unwrap(),
            heartbeat_prefix: "lablake.heartbeat".into(),
            spill_dir: dir,
            spill_memory_bytes,
        })
    }

    fn relation(d: &mut PgDecoder, oid: u32, schema: &str) {
        let col = |name: &str, type_oid: u32, key: bool| RelationColumn {
            key,
            name: name.into(),
            type_oid,
            type_modifier: -1,
        };
        let rel = Relation {
            oid,
            namespace: schema.into(),
            name: "results".into(),
            replica_identity: b'd',
            columns: vec![col("id", 20, true), col("v", 25, false)],
        };
        d.put_relation(rel, &["id".to_owned()]).unwrap();
    }

    fn insert(rel: u32, id: i64, xid: Option<u32>) -> Vec<u8> {
        let m = Msg::new(b'I');
        let m = match xid {
            Some(x) => m.u32(x),
            None => m,
        };
        m.u32(rel).u8(b'N').i16(2).bin(&id.to_be_bytes()).bin(b"text").0
    }

    fn drain(d: &mut PgDecoder) -> Vec<SourceItem> {
        let mut out = Vec::new();
        while let Some(i) = d.pop().unwrap() {
            out.push(i);
        }
        out
    }

    #[test]
    fn committed_transaction_becomes_changes_then_commit() {
        let mut d = decoder(1 << 20);
        relation(&mut d, 1, "lab_acme");
        relation(&mut d, 2, "other");
        d.push(&Msg::new(b'B').u64(0x100).u64(0).u32(5).0, 0x90).unwrap();
        d.push(&insert(1, 7, None), 0x95).unwrap();
        d.push(&insert(2, 8, None), 0x96).unwrap(); // schema without a tenant: skipped
        d.push(&Msg::new(b'C').u8(0).u64(0x100).u64(0x108).u64(0).0, 0x108).unwrap();
        let items = drain(&mut d);
        assert_eq!(items.len(), 2);
        let SourceItem::Change(e) = &items[0] else { panic!("{items:?}") };
        assert_eq!((&*e.table.tenant, &*e.table.database, e.op), ("acme", "lab_acme", Op::Create));
        assert_eq!(e.after.as_deref(), Some(&[Value::Int(7), Value::String("text".into())][..]));
        assert_eq!(e.source.position, SourcePosition::postgres(0x100, 0));
        assert!(matches!(items[1], SourceItem::Commit { resume: Resume::Lsn(0x108), .. }));
    }

    #[test]
    fn streamed_transactions_spill_replay_in_order_and_drop_aborts() {
        // A 64-byte budget forces the spill file after the first message.
        let mut d = decoder(64);
        relation(&mut d, 1, "lab_acme");
        d.push(&Msg::new(b'S').u32(10).u8(1).0, 1).unwrap();
        for id in 0..50 {
            let sub = if id == 20 { 11 } else { 10 };
            d.push(&insert(1, id, Some(sub)), 2).unwrap();
        }
        d.push(b"E", 3).unwrap();
        // A second streamed transaction, aborted entirely.
        d.push(&Msg::new(b'S').u32(12).u8(1).0, 4).unwrap();
        d.push(&insert(1, 999, Some(12)), 5).unwrap();
        d.push(b"E", 6).unwrap();
        d.push(&Msg::new(b'A').u32(12).u32(12).0, 7).unwrap();
        // Subtransaction 11 of 10 aborts; 10 commits.
        d.push(&Msg::new(b'A').u32(10).u32(11).0, 8).unwrap();
        assert!(drain(&mut d).is_empty(), "nothing before the commit");
        d.push(&Msg::new(b'c').u32(10).u8(0).u64(0x200).u64(0x208).u64(0).0, 0x208).unwrap();
        let items = drain(&mut d);
        let ids: Vec<i64> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Change(e) => match e.after.as_ref().unwrap()[0] {
                    Value::Int(v) => Some(v),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let expected: Vec<i64> = (0..50).filter(|i| *i != 20).collect();
        assert_eq!(ids, expected);
        assert!(matches!(items.last(), Some(SourceItem::Commit { resume: Resume::Lsn(0x208), .. })));
        assert_eq!(d.buffered_bytes, 0);
        let left: Vec<_> = std::fs::read_dir(&d.cfg.spill_dir).unwrap().collect();
        assert!(left.is_empty(), "spill files are removed");
    }

    #[test]
    fn truncate_becomes_one_event_per_selected_table_in_order() {
        let mut d = decoder(1 << 20);
        relation(&mut d, 1, "lab_acme");
        relation(&mut d, 2, "other");
        relation(&mut d, 3, "lab_beta");
        d.push(&Msg::new(b'B').u64(0x200).u64(0).u32(6).0, 0x190).unwrap();
        d.push(&insert(1, 7, None), 0x195).unwrap();
        // TRUNCATE lab_acme.results, other.results, lab_beta.results
        d.push(&Msg::new(b'T').u32(3).u8(0).u32(1).u32(2).u32(3).0, 0x196).unwrap();
        d.push(&Msg::new(b'C').u8(0).u64(0x200).u64(0x208).u64(0).0, 0x208).unwrap();
        let items = drain(&mut d);
        let changes: Vec<&ChangeEvent> =
            items.iter().filter_map(|i| if let SourceItem::Change(e) = i { Some(e) } else { None }).collect();
        assert_eq!(changes.len(), 3, "{items:?}");
        assert_eq!(changes[1].op, Op::Truncate);
        assert_eq!(&*changes[1].table.tenant, "acme");
        assert!(changes[1].before.is_none() && changes[1].after.is_none());
        assert_eq!(changes[2].op, Op::Truncate);
        assert_eq!(&*changes[2].table.tenant, "beta");
        // Positions keep increasing through the transaction.
        assert!(changes[0].source.position < changes[1].source.position);
        assert!(changes[1].source.position < changes[2].source.position);
        assert!(matches!(items.last(), Some(SourceItem::Commit { resume: Resume::Lsn(0x208), .. })));
    }

    #[test]
    fn watermarks_come_in_commit_order_with_their_commit_lsn() {
        let mut d = decoder(1 << 20);
        relation(&mut d, 1, "lab_acme");
        d.push(&Msg::new(b'B').u64(0x300).u64(0).u32(7).0, 0x290).unwrap();
        let wm = Msg::new(b'M').u8(1).u64(0x295).cstr(WATERMARK_PREFIX).u32(5).0;
        let mut wm = wm;
        wm.extend_from_slice(b"w:1:l");
        d.push(&wm, 0x295).unwrap();
        d.push(&Msg::new(b'C').u8(0).u64(0x300).u64(0x308).u64(0).0, 0x308).unwrap();
        let items = drain(&mut d);
        let SourceItem::Watermark(w) = &items[0] else { panic!("{items:?}") };
        assert_eq!(w.id, "w:1:l");
        // Rows emitted at the watermark take the commit LSN's sequence and its time.
        assert_eq!(w.row_source(2).position, SourcePosition::postgres(0x300, 2));
        assert!(matches!(items[1], SourceItem::Commit { resume: Resume::Lsn(0x308), .. }));
    }

    #[test]
    fn heartbeats_only_between_transactions() {
        let mut d = decoder(1 << 20);
        let hb = Msg::new(b'M').u8(0).u64(0x50).cstr("lablake.heartbeat").u32(0).0;
        d.push(&hb, 0x58).unwrap();
        assert_eq!(drain(&mut d), vec![SourceItem::Heartbeat { resume: Resume::Lsn(0x58) }]);
        d.push(&Msg::new(b'B').u64(0x100).u64(0).u32(5).0, 0x90).unwrap();
        d.push(&hb, 0x98).unwrap();
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn undecodable_rows_are_unresolved_and_unchanged_toast_is_marked() {
        let mut d = decoder(1 << 20);
        relation(&mut d, 1, "lab_acme");
        d.push(&Msg::new(b'B').u64(0x100).u64(0).u32(5).0, 0x90).unwrap();
        let bad = Msg::new(b'I').u32(1).u8(b'N').i16(2).bin(&[1, 2]).bin(b"x").0;
        d.push(&bad, 0x95).unwrap();
        let toast = Msg::new(b'U').u32(1).u8(b'N').i16(2).bin(&1i64.to_be_bytes()).u8(b'u').0;
        d.push(&toast, 0x96).unwrap();
        let items = drain(&mut d);
        assert_eq!(items.len(), 2);
        let SourceItem::Unresolved(Unresolved { table, reason, tenant, row, .. }) = &items[0] else {
            panic!("{items:?}")
        };
        assert_eq!(table, "lab_acme.results");
        assert!(!reason.contains("text"), "no values in reasons: {reason}");
        // The schema rule names the tenant; the tuple is kept as sent, to decode again.
        assert_eq!(tenant.as_deref(), Some("acme"));
        let UnresolvedRow::Raw(raw) = row else { panic!("{row:?}") };
        let raw: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(raw["format"], "pgoutput-tuple/1");
        assert_eq!(raw["op"], "c");
        assert_eq!(raw["columns"][0]["type_oid"], 20);
        assert_eq!(raw["new"], serde_json::json!([{"k": "b", "v": "AQI="}, {"k": "b", "v": "eA=="}]));
        assert_eq!(raw["old"], serde_json::Value::Null);
        // An unchanged TOAST value without the old row is marked, not nulled.
        let SourceItem::Change(e) = &items[1] else { panic!("{items:?}") };
        assert_eq!(e.after.as_deref(), Some(&[Value::Int(1), Value::Unchanged][..]));
    }

    /// A decoder under the tenant-column rule (`tenant_id`).
    fn column_decoder() -> PgDecoder {
        let mut d = decoder(1 << 20);
        d.cfg.tenant = TenantRule::Column { column: "tenant_id".into() };
        d
    }

    /// `public.shared (id int8, tenant_id text, v text)` with replica
    /// identity `identity`; `key` marks the identity's key columns.
    fn shared_relation(identity: u8, key: [bool; 3]) -> Relation {
        let col = |name: &str, type_oid: u32, key: bool| RelationColumn {
            key,
            name: name.into(),
            type_oid,
            type_modifier: -1,
        };
        Relation {
            oid: 9,
            namespace: "public".into(),
            name: "shared".into(),
            replica_identity: identity,
            columns: vec![col("id", 20, key[0]), col("tenant_id", 25, key[1]), col("v", 25, key[2])],
        }
    }

    /// A tuple `(id, tenant, v)`; `None` values are nulls.
    fn tuple(m: Msg, id: i64, tenant: Option<&str>, v: Option<&str>) -> Msg {
        let m = m.i16(3).bin(&id.to_be_bytes());
        let m = match tenant {
            Some(t) => m.bin(t.as_bytes()),
            None => m.u8(b'n'),
        };
        match v {
            Some(v) => m.bin(v.as_bytes()),
            None => m.u8(b'n'),
        }
    }

    /// `(op, tenant, before, after)` of each change, `unresolved: reason` otherwise.
    fn moves(items: &[SourceItem]) -> Vec<String> {
        let img = |r: &Option<Vec<Value>>| match r.as_deref() {
            None => "-".to_owned(),
            Some(row) => row
                .iter()
                .map(|v| match v {
                    Value::Int(i) => i.to_string(),
                    Value::String(s) => s.clone(),
                    Value::Null => "null".into(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(","),
        };
        items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Change(e) => {
                    Some(format!("{} {} [{}] [{}]", e.op.code(), e.table.tenant, img(&e.before), img(&e.after)))
                }
                SourceItem::Unresolved(u) => Some(format!("unresolved: {}", u.reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_row_moving_tenants_with_the_full_old_row_is_a_delete_then_a_create() {
        let mut d = column_decoder();
        d.put_relation(shared_relation(b'f', [true; 3]), &["id".to_owned()]).unwrap();
        d.push(&Msg::new(b'B').u64(0x400).u64(0).u32(8).0, 0x390).unwrap();
        d.push(&tuple(Msg::new(b'I').u32(9).u8(b'N'), 1, Some("alpha_x"), Some("a")).0, 0x391).unwrap();
        // UPDATE shared SET tenant_id = 'beta_x', v = 'b' WHERE id = 1: 'O' old tuple, then 'N'.
        let upd = tuple(Msg::new(b'U').u32(9).u8(b'O'), 1, Some("alpha_x"), Some("a")).u8(b'N');
        d.push(&tuple(upd, 1, Some("beta_x"), Some("b")).0, 0x392).unwrap();
        // An update in place keeps its tenant.
        let upd = tuple(Msg::new(b'U').u32(9).u8(b'O'), 1, Some("beta_x"), Some("b")).u8(b'N');
        d.push(&tuple(upd, 1, Some("beta_x"), Some("c")).0, 0x393).unwrap();
        d.push(&tuple(Msg::new(b'D').u32(9).u8(b'O'), 1, Some("beta_x"), Some("c")).0, 0x394).unwrap();
        d.push(&Msg::new(b'C').u8(0).u64(0x400).u64(0x408).u64(0).0, 0x408).unwrap();
        let items = drain(&mut d);
        assert_eq!(
            moves(&items),
            [
                "c alpha_x [-] [1,alpha_x,a]",
                "d alpha_x [1,alpha_x,a] [-]",
                "c beta_x [-] [1,beta_x,b]",
                "u beta_x [1,beta_x,b] [1,beta_x,c]",
                "d beta_x [1,beta_x,c] [-]",
            ]
        );
        // Both halves of the move sit at the update's position, between its neighbours.
        let pos: Vec<&SourcePosition> = items
            .iter()
            .filter_map(|i| if let SourceItem::Change(e) = i { Some(&e.source.position) } else { None })
            .collect();
        assert_eq!(pos[1], pos[2]);
        assert!(pos[0] < pos[1] && pos[2] < pos[3]);
        assert!(matches!(items.last(), Some(SourceItem::Commit { resume: Resume::Lsn(0x408), .. })));
    }

    #[test]
    fn a_row_moving_tenants_with_the_old_key_is_a_delete_then_a_create() {
        // PRIMARY KEY (tenant_id, id), default identity: the old key comes
        // only when the key changed; the other old columns are null.
        let mut d = column_decoder();
        let pk = ["tenant_id".to_owned(), "id".to_owned()];
        d.put_relation(shared_relation(b'd', [true, true, false]), &pk).unwrap();
        d.push(&Msg::new(b'B').u64(0x500).u64(0).u32(9).0, 0x490).unwrap();
        let upd = tuple(Msg::new(b'U').u32(9).u8(b'K'), 1, Some("alpha_x"), None).u8(b'N');
        d.push(&tuple(upd, 1, Some("beta_x"), Some("b")).0, 0x491).unwrap();
        // Without an old tuple the key, and so the tenant, did not change.
        let upd = tuple(Msg::new(b'U').u32(9).u8(b'N'), 1, Some("beta_x"), Some("c"));
        d.push(&upd.0, 0x492).unwrap();
        d.push(&tuple(Msg::new(b'D').u32(9).u8(b'K'), 1, Some("beta_x"), None).0, 0x493).unwrap();
        d.push(&Msg::new(b'C').u8(0).u64(0x500).u64(0x508).u64(0).0, 0x508).unwrap();
        assert_eq!(
            moves(&drain(&mut d)),
            [
                "d alpha_x [1,alpha_x,null] [-]",
                "c beta_x [-] [1,beta_x,b]",
                "u beta_x [-] [1,beta_x,c]",
                "d beta_x [1,beta_x,null] [-]",
            ]
        );
    }

    #[test]
    fn a_relation_whose_identity_does_not_cover_the_tenant_column_is_refused() {
        let mut d = column_decoder();
        for (identity, key) in [(b'd', [true, false, false]), (b'i', [true, false, true]), (b'n', [false; 3])] {
            let err = d.put_relation(shared_relation(identity, key), &["id".to_owned()]).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, PgError::ServerConfig { .. }) && !err.is_retryable(), "{text}");
            assert!(text.contains("public.shared") && text.contains("`tenant_id`"), "{text}");
            assert!(text.contains("ALTER TABLE public.shared REPLICA IDENTITY FULL"), "{text}");
            assert!(d.relations.is_empty(), "a refused relation is not used");
        }
        // Not selected, or no tenant column at all: nothing to refuse.
        d.cfg.filter = TableFilter::new(&[], &["public.shared".into()]).unwrap();
        d.put_relation(shared_relation(b'd', [true, false, false]), &["id".to_owned()]).unwrap();
        let mut d = column_decoder();
        let mut rel = shared_relation(b'd', [true, false, false]);
        rel.columns[1].name = "org".into();
        d.put_relation(rel, &["id".to_owned()]).unwrap();
        // The schema rule needs no old tenant.
        let mut d = decoder(1 << 20);
        d.put_relation(shared_relation(b'n', [false; 3]), &[]).unwrap();
    }

    #[test]
    fn unresolvable_tenants_and_truncates_under_the_column_rule() {
        let mut d = column_decoder();
        d.put_relation(shared_relation(b'f', [true; 3]), &["id".to_owned()]).unwrap();
        d.push(&Msg::new(b'B').u64(0x600).u64(0).u32(9).0, 0x590).unwrap();
        d.push(&tuple(Msg::new(b'I').u32(9).u8(b'N'), 1, None, Some("a")).0, 0x591).unwrap();
        d.push(&tuple(Msg::new(b'I').u32(9).u8(b'N'), 2, Some("Bad Name"), Some("a")).0, 0x592).unwrap();
        let upd = tuple(Msg::new(b'U').u32(9).u8(b'O'), 3, Some("alpha_x"), Some("a")).u8(b'N');
        d.push(&tuple(upd, 3, None, Some("a")).0, 0x593).unwrap();
        d.push(&Msg::new(b'T').u32(1).u8(0).u32(9).0, 0x594).unwrap();
        d.push(&Msg::new(b'C').u8(0).u64(0x600).u64(0x608).u64(0).0, 0x608).unwrap();
        let got = moves(&drain(&mut d));
        assert_eq!(
            got,
            [
                "unresolved: tenant column is NULL",
                "unresolved: tenant name must match [a-z0-9][a-z0-9_-]{0,62}",
                "d alpha_x [3,alpha_x,a] [-]",
                "unresolved: tenant column is NULL",
                "unresolved: TRUNCATE of a table shared by tenants (tenant column) is not propagated",
            ]
        );
        assert!(got.iter().all(|g| !g.contains("Bad Name")), "no values in reasons");
    }

    #[test]
    fn unroutable_rows_keep_the_whole_change_for_redrive() {
        let mut d = column_decoder();
        d.put_relation(shared_relation(b'f', [true; 3]), &["id".to_owned()]).unwrap();
        d.push(&Msg::new(b'B').u64(0x600).u64(0).u32(9).0, 0x590).unwrap();
        d.push(&tuple(Msg::new(b'I').u32(9).u8(b'N'), 2, Some("Bad Name"), Some("a")).0, 0x591).unwrap();
        d.push(&Msg::new(b'T').u32(1).u8(0).u32(9).0, 0x592).unwrap();
        let items = drain(&mut d);
        let SourceItem::Unresolved(u) = &items[0] else { panic!("{items:?}") };
        assert_eq!(u.tenant, None);
        let UnresolvedRow::Change(e) = &u.row else { panic!("{:?}", u.row) };
        assert_eq!(&*e.table.tenant, "_unresolved");
        assert_eq!(e.op, Op::Create);
        assert_eq!(
            e.after.as_deref(),
            Some(&[Value::Int(2), Value::String("Bad Name".into()), Value::String("a".into())][..])
        );
        assert_eq!(e.source.position, u.position);
        // A TRUNCATE of the shared table names no rows, no tenant: kept as the truncate.
        let SourceItem::Unresolved(t) = &items[1] else { panic!("{items:?}") };
        let UnresolvedRow::Change(e) = &t.row else { panic!("{:?}", t.row) };
        assert_eq!((e.op, e.before.is_none(), e.after.is_none()), (Op::Truncate, true, true));
    }
}
