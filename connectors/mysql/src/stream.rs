//! The event-stream state machine: binlog events in, [`SourceItem`]s out.
//!
//! Pure (no I/O): the live reader ([`crate::MysqlSource`]) and the fixture
//! tests feed it the same `mysql_common` events. It tracks the binlog file,
//! transaction boundaries, GTIDs and table maps, applies the table filter,
//! decodes one rows event at a time and routes each row to its tenant with
//! the shared [`lablake_model::tenant::route`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use lablake_model::position::binlog_file_seq;
use lablake_model::tenant::{self, Route, TableFilter, TenantNames, TenantRule};
use lablake_model::{Op, Resume, SourceInfo, SourcePosition, Value, now_ms};
use lablake_source::{SourceItem, Unresolved, UnresolvedRow, Watermark};
use mysql_common::binlog::consts::{BinlogChecksumAlg, EventType};
use mysql_common::binlog::events::{
    Event, EventData, FormatDescriptionEvent, GtidEvent, QueryEvent, RotateEvent, TableMapEvent,
};
use tracing::{debug, warn};

use crate::MysqlError;

use crate::ddl::{QueryKind, classify};
use crate::decode::{CatalogNeed, CatalogTable, Flavor, RowChange, TableInfo, decode_rows, decode_rows_each};

/// What the decoder needs to know about the source.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// Logical source name, copied into every `SourceInfo.name`.
    pub source_name: String,
    pub tenant: TenantRule,
    pub filter: TableFilter,
    /// `(database, table)` of the signalling table whose inserted rows are
    /// snapshot watermarks (column `id`); never captured as changes.
    pub signal: Option<(String, String)>,
}

/// A request for information_schema data about one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRequest {
    pub database: String,
    pub table: String,
    /// Decoding fails without it (minimal table-map metadata); otherwise it
    /// only refines types (MariaDB JSON columns).
    pub required: bool,
}

struct TableEntry {
    tme: TableMapEvent<'static>,
    info: Option<Arc<TableInfo>>,
}

#[derive(Default)]
struct Trx {
    open: bool,
    gtid: Option<Arc<str>>,
    mariadb_gtid: Option<(u32, u32, u64)>,
    commit_ts_ms: Option<i64>,
}

struct Payload {
    end: u64,
    next_row: u32,
    committed: bool,
}

const EV_HEARTBEAT_V2: u8 = 41;
const EV_GTID_TAGGED: u8 = 42;
const EV_ANNOTATE_ROWS: u8 = 160;
const EV_BINLOG_CHECKPOINT: u8 = 161;
const EV_MARIADB_GTID: u8 = 162;
const EV_MARIADB_GTID_LIST: u8 = 163;
const EV_START_ENCRYPTION: u8 = 164;
const LOG_EVENT_IGNORABLE_F: u16 = 0x80;
const MAX_TABLE_MAPS: usize = 10_000;

/// Names every change carries, shared so that a row does not allocate them.
struct Names {
    connector: Arc<str>,
    source: Arc<str>,
    file: Arc<str>,
    /// Resolved tenants (by database name or tenant-column value).
    tenants: TenantNames,
}

/// The binlog event state machine. See the module documentation.
pub struct BinlogDecoder {
    cfg: DecoderConfig,
    names: Names,
    flavor: Flavor,
    fde_seen: bool,
    file: String,
    file_seq: u64,
    tables: HashMap<u64, TableEntry>,
    catalog: HashMap<(String, String), Arc<CatalogTable>>,
    mariadb_state: BTreeMap<u32, (u32, u64)>,
    mysql_last_gtid: Option<String>,
    trx: Trx,
    payload: Option<Payload>,
    last_resume: Option<(u64, u64)>,
    warned: HashSet<String>,
    pending: VecDeque<SourceItem>,
}

impl BinlogDecoder {
    /// A decoder positioned in `file` (empty when starting from a GTID; the
    /// server's first ROTATE names the file). `gtid` seeds the GTID position
    /// (MariaDB `domain-server-seq` list, or a MySQL GTID).
    pub fn new(cfg: DecoderConfig, file: &str, gtid: Option<&str>) -> Result<Self, MysqlError> {
        let names = Names {
            connector: "mysql".into(),
            source: cfg.source_name.as_str().into(),
            file: "".into(),
            tenants: TenantNames::new(),
        };
        let mut d = BinlogDecoder {
            cfg,
            names,
            flavor: Flavor::MySql,
            fde_seen: false,
            file: String::new(),
            file_seq: 0,
            tables: HashMap::new(),
            catalog: HashMap::new(),
            mariadb_state: BTreeMap::new(),
            mysql_last_gtid: None,
            trx: Trx::default(),
            payload: None,
            last_resume: None,
            warned: HashSet::new(),
            pending: VecDeque::new(),
        };
        if !file.is_empty() {
            d.set_file(file, 0)?;
        }
        if let Some(g) = gtid.filter(|g| !g.trim().is_empty()) {
            match parse_mariadb_gtid_list(g) {
                Some(state) => d.mariadb_state = state,
                None => d.mysql_last_gtid = Some(g.trim().to_owned()),
            }
        }
        Ok(d)
    }

    /// The next decoded item, if any is buffered.
    pub fn pop(&mut self) -> Option<SourceItem> {
        self.pending.pop_front()
    }

    /// Number of buffered items (at most the rows of one rows event plus a commit).
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The server family, known after the first FORMAT_DESCRIPTION event.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Sets the server family before any event arrives (the live reader knows it from `VERSION()`).
    pub fn set_flavor(&mut self, flavor: Flavor) {
        self.flavor = flavor;
    }

    /// The binlog file being read.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The current GTID position, as the `gtid` of a [`Resume::Binlog`].
    pub fn gtid_position(&self) -> Option<String> {
        match self.flavor {
            Flavor::MariaDb if !self.mariadb_state.is_empty() => Some(render_mariadb_state(&self.mariadb_state)),
            Flavor::MariaDb => None,
            Flavor::MySql => self.mysql_last_gtid.clone(),
        }
    }

    /// Supplies information_schema data for a table (an empty
    /// [`CatalogTable`] records that the table does not exist).
    pub fn put_catalog(&mut self, database: &str, table: &str, catalog: CatalogTable) {
        self.catalog.insert((database.to_owned(), table.to_owned()), Arc::new(catalog));
        for entry in self.tables.values_mut() {
            if entry.tme.database_name() == database && entry.tme.table_name() == table {
                entry.info = None;
            }
        }
    }

    /// Whether decoding `event` would benefit from information_schema data
    /// that is not cached yet. Call before [`BinlogDecoder::push`].
    pub fn catalog_request(&self, event: &Event) -> Result<Option<CatalogRequest>, MysqlError> {
        if !is_rows_event(event.header().event_type_raw()) {
            return Ok(None);
        }
        let pos = u64::from(event.header().log_pos());
        let rows = match event.read_data() {
            Ok(Some(EventData::RowsEvent(rows))) => rows,
            Ok(_) => return Ok(None),
            Err(e) => return Err(self.protocol(pos, format!("unreadable rows event: {e}"))),
        };
        let Some(entry) = self.tables.get(&rows.table_id()) else { return Ok(None) };
        if entry.info.is_some() {
            return Ok(None);
        }
        let (db, table) = (entry.tme.database_name().into_owned(), entry.tme.table_name().into_owned());
        if !(self.selected(&db, &table) || self.is_signal(&db, &table))
            || self.catalog.contains_key(&(db.clone(), table.clone()))
        {
            return Ok(None);
        }
        Ok(match TableInfo::catalog_need(&entry.tme, self.flavor)? {
            CatalogNeed::None => None,
            CatalogNeed::Optional => Some(CatalogRequest { database: db, table, required: false }),
            CatalogNeed::Required(_) => Some(CatalogRequest { database: db, table, required: true }),
        })
    }

    /// Processes one event. Decoded items are buffered for [`BinlogDecoder::pop`].
    /// On error nothing is buffered for that event and the decoder stays
    /// usable (the fixture tests continue past undecodable events; the live
    /// reader stops).
    pub fn push(&mut self, event: &Event) -> Result<(), MysqlError> {
        let h = event.header();
        let ty = h.event_type_raw();
        let log_pos = u64::from(h.log_pos());
        let inner = !event.footer().get_checksum_enabled();
        if !inner {
            if let Some(p) = &self.payload {
                if !p.committed {
                    self.payload = None;
                    return Err(self.protocol(
                        log_pos,
                        "a TRANSACTION_PAYLOAD event ended without its commit (decompression failed)".into(),
                    ));
                }
                self.payload = None;
            }
            self.verify_checksum(event, log_pos)?;
        }
        let read_err = |e: std::io::Error| self.protocol(log_pos, format!("unreadable event type {ty}: {e}"));

        match ty {
            t if t == EventType::FORMAT_DESCRIPTION_EVENT as u8 => {
                let fde = event.read_event::<FormatDescriptionEvent<'_>>().map_err(read_err)?;
                self.flavor = Flavor::from_server_version(&fde.server_version());
                self.fde_seen = true;
            }
            t if t == EventType::ROTATE_EVENT as u8 => self.on_rotate(event, log_pos)?,
            t if t == EventType::HEARTBEAT_EVENT as u8 => {
                if log_pos > 0 {
                    self.heartbeat(log_pos);
                }
            }
            EV_HEARTBEAT_V2 => {
                if let Some(pos) = heartbeat_v2_position(event.data()).or((log_pos > 0).then_some(log_pos)) {
                    self.heartbeat(pos);
                }
            }
            t if t == EventType::GTID_EVENT as u8 || t == EV_GTID_TAGGED => {
                let g = event.read_event::<GtidEvent>().map_err(read_err)?;
                self.trx = Trx { open: false, gtid: Some(format_mysql_gtid(&g).into()), ..Trx::default() };
                let ts = g.immediate_commit_timestamp();
                if ts > 0 {
                    self.trx.commit_ts_ms = Some((ts / 1000) as i64);
                }
            }
            t if t == EventType::ANONYMOUS_GTID_EVENT as u8 => self.trx = Trx::default(),
            EV_MARIADB_GTID => {
                let (seq, domain, flags) = parse_mariadb_gtid(event.data())
                    .ok_or_else(|| self.protocol(log_pos, "short MariaDB GTID event".into()))?;
                let server = h.server_id();
                self.trx = Trx {
                    // FL_STANDALONE: no BEGIN/COMMIT around the single statement.
                    open: flags & 1 == 0,
                    gtid: Some(format!("{domain}-{server}-{seq}").into()),
                    mariadb_gtid: Some((domain, server, seq)),
                    commit_ts_ms: None,
                };
            }
            EV_MARIADB_GTID_LIST => {
                if let Some(list) = parse_mariadb_gtid_list_event(event.data()) {
                    for (domain, server, seq) in list {
                        self.mariadb_state.entry(domain).or_insert((server, seq));
                    }
                }
            }
            t if t == EventType::QUERY_EVENT as u8 => self.on_query(event, log_pos)?,
            t if t == EventType::XID_EVENT as u8 || t == EventType::XA_PREPARE_LOG_EVENT as u8 => {
                self.commit(log_pos, h.timestamp())?;
            }
            t if t == EventType::TABLE_MAP_EVENT as u8 => {
                let tme = event.read_event::<TableMapEvent<'_>>().map_err(read_err)?.into_owned();
                let id = tme.table_id();
                match self.tables.get_mut(&id) {
                    Some(entry) if entry.tme == tme => {}
                    _ => {
                        if self.tables.len() >= MAX_TABLE_MAPS {
                            self.tables.clear();
                        }
                        self.tables.insert(id, TableEntry { tme, info: None });
                    }
                }
            }
            t if is_rows_event(t) => self.on_rows(event, log_pos)?,
            t if t == EventType::TRANSACTION_PAYLOAD_EVENT as u8 => {
                if inner {
                    return Err(self.protocol(log_pos, "nested TRANSACTION_PAYLOAD event".into()));
                }
                self.payload = Some(Payload { end: log_pos, next_row: 0, committed: false });
            }
            t if t == EventType::INCIDENT_EVENT as u8 => {
                return Err(self.protocol(log_pos, "INCIDENT event: the binlog has a gap (lost events)".into()));
            }
            165..=171 => {
                return Err(self.protocol(
                    log_pos,
                    format!("compressed MariaDB event type {ty} (log_bin_compress) is not supported"),
                ));
            }
            t if t == EventType::EXECUTE_LOAD_QUERY_EVENT as u8 || t == EventType::BEGIN_LOAD_QUERY_EVENT as u8 => {
                self.warn_once("load-data", "statement-based LOAD DATA in the binlog is not captured");
            }
            t if t == EventType::PRE_GA_WRITE_ROWS_EVENT as u8
                || t == EventType::PRE_GA_UPDATE_ROWS_EVENT as u8
                || t == EventType::PRE_GA_DELETE_ROWS_EVENT as u8 =>
            {
                return Err(self.protocol(log_pos, "pre-GA rows events (MySQL 5.1.0-5.1.15) are not supported".into()));
            }
            // Events without meaning for row capture.
            t if t == EventType::START_EVENT_V3 as u8
                || t == EventType::STOP_EVENT as u8
                || t == EventType::INTVAR_EVENT as u8
                || t == EventType::RAND_EVENT as u8
                || t == EventType::USER_VAR_EVENT as u8
                || t == EventType::IGNORABLE_EVENT as u8
                || t == EventType::ROWS_QUERY_EVENT as u8
                || t == EventType::PREVIOUS_GTIDS_EVENT as u8
                || t == EventType::TRANSACTION_CONTEXT_EVENT as u8
                || t == EventType::VIEW_CHANGE_EVENT as u8
                || t == EventType::UNKNOWN_EVENT as u8 => {}
            EV_ANNOTATE_ROWS | EV_BINLOG_CHECKPOINT | EV_START_ENCRYPTION => {}
            other => {
                if h.flags_raw() & LOG_EVENT_IGNORABLE_F == 0 {
                    return Err(self.protocol(log_pos, format!("unknown binlog event type {other}")));
                }
            }
        }
        Ok(())
    }

    fn protocol(&self, pos: u64, reason: String) -> MysqlError {
        MysqlError::Protocol { file: self.file.clone(), pos, reason }
    }

    fn set_file(&mut self, file: &str, pos: u64) -> Result<(), MysqlError> {
        let seq = binlog_file_seq(file).ok_or_else(|| MysqlError::Protocol {
            file: file.to_owned(),
            pos,
            reason: "binlog file name has no numeric extension".into(),
        })?;
        if file != self.file {
            debug!(file, "binlog file");
            self.names.file = file.into();
        }
        self.file = file.to_owned();
        self.file_seq = seq;
        Ok(())
    }

    /// A TRUNCATE of a selected table → one `Op::Truncate` event (schema
    /// per tenant), or an unresolved item for tables shared by tenants.
    fn truncate(&mut self, db: &str, table: &str, log_pos: u64, row: u32, event: &Event) {
        // The table's last known schema (the event carries no rows; the
        // curated file keeps the schema of the rows around it).
        let info = self
            .tables
            .values()
            .filter_map(|e| e.info.as_ref())
            .find(|i| &*i.database == db && i.table.eq_ignore_ascii_case(table))
            .cloned();
        let (database, name, schema) = match info {
            Some(i) => (i.database.clone(), i.table.clone(), i.schema.clone()),
            None => (Arc::from(db), Arc::from(table), lablake_model::TableSchema::new(Vec::new(), Vec::new())),
        };
        let h = event.header();
        let source = SourceInfo {
            connector: self.names.connector.clone(),
            name: self.names.source.clone(),
            server_id: h.server_id(),
            file: self.names.file.clone(),
            pos: log_pos,
            row,
            gtid: self.trx.gtid.clone(),
            ts_ms: i64::from(h.timestamp()) * 1000,
            position: SourcePosition::mysql(self.file_seq, log_pos, row),
        };
        let routed = tenant::route(&mut self.names.tenants, &self.cfg.tenant, db, &schema, Op::Truncate, None, None);
        let now = now_ms();
        let pending = &mut self.pending;
        routed.each_with(source, |route, source| {
            pending.push_back(match route {
                Route::Change(c) => SourceItem::Change(c.into_event(&database, &name, &schema, source, now)),
                Route::Unresolved(u) => SourceItem::Unresolved(Unresolved::unrouted(
                    format!("{db}.{table}"),
                    u,
                    (&database, &name, &schema),
                    source,
                    now,
                )),
            })
        });
    }

    fn is_signal(&self, database: &str, table: &str) -> bool {
        self.cfg.signal.as_ref().is_some_and(|(d, t)| d == database && t.eq_ignore_ascii_case(table))
    }

    fn selected(&self, database: &str, table: &str) -> bool {
        if self.is_signal(database, table) {
            return false;
        }
        if !self.cfg.filter.matches(database, table) {
            return false;
        }
        match &self.cfg.tenant {
            TenantRule::SchemaPattern { .. } => self.cfg.tenant.tenant_of_database(database).is_some(),
            TenantRule::Column { .. } => true,
        }
    }

    fn warn_once(&mut self, key: &str, message: &'static str) {
        if self.warned.insert(key.to_owned()) {
            warn!(source = %self.cfg.source_name, "{message}");
        }
    }

    fn verify_checksum(&self, event: &Event, log_pos: u64) -> Result<(), MysqlError> {
        let footer = event.footer();
        if footer.get_checksum_alg() != Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32)) {
            return Ok(());
        }
        let Some(stored) = event.checksum() else { return Ok(()) };
        let stored = u32::from_le_bytes(stored);
        let computed = event.calc_checksum(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_CRC32);
        if stored != computed {
            return Err(
                self.protocol(log_pos, format!("CRC32 mismatch on event type {}", event.header().event_type_raw()))
            );
        }
        Ok(())
    }

    fn on_rotate(&mut self, event: &Event, log_pos: u64) -> Result<(), MysqlError> {
        let rotate = event
            .read_event::<RotateEvent<'_>>()
            .map_err(|e| self.protocol(log_pos, format!("unreadable ROTATE event: {e}")))?;
        let mut name = rotate.name_raw();
        // Before the first FORMAT_DESCRIPTION the reader does not know the
        // checksum algorithm, so the fake ROTATE that opens a replication
        // stream may still carry its CRC32 at the end of the name.
        if !self.fde_seen && name.len() > 4 {
            let (head, crc) = name.split_at(name.len() - 4);
            let mut hdr = Vec::with_capacity(19);
            let h = event.header();
            hdr.extend_from_slice(&h.timestamp().to_le_bytes());
            hdr.push(h.event_type_raw());
            hdr.extend_from_slice(&h.server_id().to_le_bytes());
            hdr.extend_from_slice(&h.event_size().to_le_bytes());
            hdr.extend_from_slice(&h.log_pos().to_le_bytes());
            hdr.extend_from_slice(&h.flags_raw().to_le_bytes());
            let mut c = crc32fast::Hasher::new();
            c.update(&hdr);
            c.update(&rotate.position().to_le_bytes());
            c.update(head);
            if c.finalize() == u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
                name = head;
            }
        }
        let name = std::str::from_utf8(name)
            .map_err(|_| self.protocol(log_pos, "ROTATE file name is not UTF-8".into()))?
            .to_owned();
        self.set_file(&name, rotate.position())?;
        // A real rotate (not the fake one that opens a stream) lets idle
        // sources checkpoint the start of the new file.
        if log_pos != 0 {
            self.heartbeat(rotate.position());
        }
        Ok(())
    }

    fn heartbeat(&mut self, pos: u64) {
        if self.trx.open || self.file.is_empty() {
            return;
        }
        // Repeated heartbeats at the same position are emitted (liveness of
        // idle sources); a position behind the last commit is not.
        let at = (self.file_seq, pos);
        if self.last_resume.is_some_and(|last| at < last) {
            return;
        }
        self.last_resume = Some(at);
        let resume = Resume::Binlog { file: self.file.clone(), pos, gtid: self.gtid_position() };
        self.pending.push_back(SourceItem::Heartbeat { resume });
    }

    fn on_query(&mut self, event: &Event, log_pos: u64) -> Result<(), MysqlError> {
        let q = event
            .read_event::<QueryEvent<'_>>()
            .map_err(|e| self.protocol(log_pos, format!("unreadable QUERY event: {e}")))?;
        let schema = q.schema().into_owned();
        let kind = classify(&q.query(), &schema);
        match kind {
            QueryKind::Begin => self.trx.open = true,
            QueryKind::Commit | QueryKind::Rollback => self.commit(log_pos, event.header().timestamp())?,
            QueryKind::Savepoint => {}
            QueryKind::Ddl { tables, whole_databases } => {
                self.invalidate(tables.as_deref(), &whole_databases);
                if !self.trx.open {
                    self.commit(log_pos, event.header().timestamp())?;
                }
            }
            QueryKind::Truncate { tables } => {
                match &tables {
                    Some(tables) => {
                        for (i, (db, table)) in tables.iter().enumerate() {
                            if self.selected(db, table) {
                                self.truncate(db, table, log_pos, u32::try_from(i).unwrap_or(u32::MAX), event);
                            }
                        }
                    }
                    None => warn!(source = %self.cfg.source_name,
                        "a TRUNCATE statement could not be parsed; downstream copies keep the rows"),
                }
                if !self.trx.open {
                    self.commit(log_pos, event.header().timestamp())?;
                }
            }
            QueryKind::Other => {
                if self.trx.open {
                    self.warn_once(
                        "statement",
                        "statement-based DML in the binlog is not captured; binlog_format must be ROW",
                    );
                } else {
                    self.commit(log_pos, event.header().timestamp())?;
                }
            }
        }
        Ok(())
    }

    /// Drops cached information_schema data and decoding plans of tables
    /// touched by DDL (`None`: every table).
    fn invalidate(&mut self, tables: Option<&[(String, String)]>, databases: &[String]) {
        let hit = |db: &str, table: &str| match tables {
            None => true,
            Some(list) => {
                databases.iter().any(|d| d == db) || list.iter().any(|(d, t)| d == db && t.eq_ignore_ascii_case(table))
            }
        };
        self.catalog.retain(|(db, table), _| !hit(db, table));
        for entry in self.tables.values_mut() {
            if hit(&entry.tme.database_name(), &entry.tme.table_name()) {
                entry.info = None;
            }
        }
    }

    fn commit(&mut self, log_pos: u64, header_ts: u32) -> Result<(), MysqlError> {
        let trx = std::mem::take(&mut self.trx);
        if let Some((domain, server, seq)) = trx.mariadb_gtid {
            self.mariadb_state.insert(domain, (server, seq));
        }
        if trx.gtid.is_some() && self.flavor == Flavor::MySql {
            self.mysql_last_gtid = trx.gtid.as_deref().map(str::to_owned);
        }
        let (end, row) = match &mut self.payload {
            Some(p) => {
                p.committed = true;
                (p.end, p.next_row)
            }
            None => (log_pos, 0),
        };
        if end == 0 {
            return Ok(());
        }
        if self.file.is_empty() {
            return Err(self.protocol(end, "commit before the binlog file is known".into()));
        }
        self.last_resume = Some((self.file_seq, end));
        let resume = Resume::Binlog { file: self.file.clone(), pos: end, gtid: self.gtid_position() };
        self.pending.push_back(SourceItem::Commit {
            resume,
            position: SourcePosition::mysql(self.file_seq, end, row),
            commit_ts_ms: trx.commit_ts_ms.unwrap_or(i64::from(header_ts) * 1000),
        });
        Ok(())
    }

    fn on_rows(&mut self, event: &Event, log_pos: u64) -> Result<(), MysqlError> {
        let h = event.header();
        let rows = match event.read_data() {
            Ok(Some(EventData::RowsEvent(rows))) => rows,
            Ok(_) => return Err(self.protocol(log_pos, "not a rows event".into())),
            Err(e) => return Err(self.protocol(log_pos, format!("unreadable rows event: {e}"))),
        };
        let table_id = rows.table_id();
        let Some(entry) = self.tables.get(&table_id) else {
            return Err(self.protocol(log_pos, format!("rows event for table id {table_id} without a TABLE_MAP")));
        };
        let (db, table) = (entry.tme.database_name().into_owned(), entry.tme.table_name().into_owned());
        let (end, row_base) = match &self.payload {
            Some(p) => (p.end, p.next_row),
            None => (log_pos, 0),
        };
        let signal = self.is_signal(&db, &table);
        if !signal && !self.selected(&db, &table) {
            return Ok(());
        }
        if self.file.is_empty() {
            return Err(self.protocol(end, "rows event before the binlog file is known".into()));
        }
        let info = self.table_info(table_id)?;
        if signal {
            return self.on_signal(&info, &rows, end, row_base, h.server_id(), h.timestamp());
        }
        let changes = decode_rows_each(&info, &rows);
        let n = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        if let Some(p) = &mut self.payload {
            p.next_row = p.next_row.saturating_add(n);
        }
        let ts_ms = self.trx.commit_ts_ms.unwrap_or(i64::from(h.timestamp()) * 1000);
        let now = now_ms();
        for (i, change) in changes.into_iter().enumerate() {
            let row = row_base.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            let change = match change {
                Ok(change) => change,
                Err(e) => {
                    let position = SourcePosition::mysql(self.file_seq, end, row);
                    self.undecodable(table_id, &info, event, end, i, position, e);
                    continue;
                }
            };
            let source = SourceInfo {
                connector: self.names.connector.clone(),
                name: self.names.source.clone(),
                server_id: h.server_id(),
                file: self.names.file.clone(),
                pos: end,
                row,
                gtid: self.trx.gtid.clone(),
                ts_ms,
                position: SourcePosition::mysql(self.file_seq, end, row),
            };
            self.emit(&info, change, source, now);
        }
        Ok(())
    }

    /// Rows inserted into the signalling table → watermarks (updates and
    /// deletes of it are cleanup and ignored).
    fn on_signal(
        &mut self,
        info: &TableInfo,
        rows: &mysql_common::binlog::events::RowsEventData<'_>,
        end: u64,
        row_base: u32,
        server_id: u32,
        header_ts: u32,
    ) -> Result<(), MysqlError> {
        let changes = decode_rows(info, rows)?;
        let n = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        if let Some(p) = &mut self.payload {
            p.next_row = p.next_row.saturating_add(n);
        }
        let id_col = info.schema.column_index("id");
        for (i, change) in changes.into_iter().enumerate() {
            if change.op != Op::Create {
                continue;
            }
            let id = match (id_col, change.after.as_deref()) {
                (Some(c), Some(row)) => match row.get(c) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => continue,
                },
                _ => continue,
            };
            let row = row_base.saturating_add(u32::try_from(i).unwrap_or(u32::MAX));
            let source = SourceInfo {
                connector: self.names.connector.clone(),
                name: self.names.source.clone(),
                server_id,
                file: self.names.file.clone(),
                pos: end,
                row,
                gtid: self.trx.gtid.clone(),
                ts_ms: self.trx.commit_ts_ms.unwrap_or(i64::from(header_ts) * 1000),
                position: SourcePosition::mysql(self.file_seq, end, row),
            };
            self.pending.push_back(SourceItem::Watermark(Watermark::binlog(id, source)));
        }
        Ok(())
    }

    fn table_info(&mut self, table_id: u64) -> Result<Arc<TableInfo>, MysqlError> {
        let flavor = self.flavor;
        let Some(entry) = self.tables.get(&table_id) else {
            return Err(self.protocol(0, format!("no TABLE_MAP for table id {table_id}")));
        };
        if let Some(info) = &entry.info {
            return Ok(info.clone());
        }
        let key = (entry.tme.database_name().into_owned(), entry.tme.table_name().into_owned());
        let catalog = self.catalog.get(&key).cloned();
        let info = Arc::new(TableInfo::from_table_map(&entry.tme, catalog.as_deref(), flavor)?);
        let qualified = info.qualified_name();
        if info.key_is_all_columns && self.warned.insert(format!("nopk:{qualified}")) {
            warn!(source = %self.cfg.source_name, table = %qualified,
                "table has no primary key: every column is used as the key");
        }
        if !info.undecodable_charset_columns.is_empty() && self.warned.insert(format!("charset:{qualified}")) {
            warn!(source = %self.cfg.source_name, table = %qualified, columns = ?info.undecodable_charset_columns,
                "columns with an unsupported charset are captured as bytes");
        }
        if let Some(entry) = self.tables.get_mut(&table_id) {
            entry.info = Some(info.clone());
        }
        Ok(info)
    }

    /// A row of a rows event that cannot be decoded (`index` counts from 0
    /// in the event; an unreadable row stands for every row after it too):
    /// an unresolved item for the tenant's dead-letter topic with the
    /// event's bytes, and the stream goes on.
    ///
    /// The raw record is the JSON object `{"format": "mysql-rows-event/1",
    /// "table", "binlog_file", "binlog_pos", "gtid", "row_index",
    /// "event_type", "table_map", "rows_event", "columns"}`: `table_map` and
    /// `rows_event` are the two events' data (base64, after the common
    /// header, without checksum), `event_type` the rows event's type code,
    /// `columns` the decoder's view of the table (`[{"name", "type"}]`,
    /// which for MariaDB can come from information_schema) — what a fixed
    /// decoder needs to read the row again.
    #[allow(clippy::too_many_arguments)]
    fn undecodable(
        &mut self,
        table_id: u64,
        info: &TableInfo,
        event: &Event,
        end: u64,
        index: usize,
        position: SourcePosition,
        error: MysqlError,
    ) {
        use base64::Engine as _;
        use mysql_common::proto::MySerialize as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut table_map = Vec::new();
        if let Some(entry) = self.tables.get(&table_id) {
            entry.tme.serialize(&mut table_map);
        }
        let columns: Vec<serde_json::Value> =
            info.schema.columns.iter().map(|c| serde_json::json!({"name": c.name, "type": c.ty.to_string()})).collect();
        let raw = serde_json::json!({
            "format": "mysql-rows-event/1",
            "table": info.qualified_name(),
            "binlog_file": self.file,
            "binlog_pos": end,
            "gtid": self.trx.gtid.as_deref(),
            "row_index": index,
            "event_type": event.header().event_type_raw(),
            "table_map": b64.encode(&table_map),
            "rows_event": b64.encode(event.data()),
            "columns": columns,
        });
        // Known under the schema rule (None under the column rule: the row is unreadable).
        let tenant = self.names.tenants.of_database(&self.cfg.tenant, &info.database);
        if self.warned.insert(format!("undecodable:{}", info.qualified_name())) {
            warn!(source = %self.cfg.source_name, table = %info.qualified_name(), error = %error,
                "row that cannot be decoded: sent to the dead-letter topic, the stream goes on");
        }
        self.pending.push_back(SourceItem::Unresolved(Unresolved {
            table: info.qualified_name(),
            reason: error.to_string(),
            position,
            tenant,
            row: UnresolvedRow::Raw(raw.to_string()),
        }));
    }

    /// One decoded row → its change(s) or an unresolved item, routed by
    /// [`tenant::route`]. The images and (for the last output) `source` are
    /// moved, not cloned: the schema-rule hot path copies nothing per row.
    fn emit(&mut self, info: &TableInfo, change: RowChange, source: SourceInfo, now: i64) {
        let RowChange { op, before, after } = change;
        let routed =
            tenant::route(&mut self.names.tenants, &self.cfg.tenant, &info.database, &info.schema, op, before, after);
        let pending = &mut self.pending;
        routed.each_with(source, |route, source| {
            pending.push_back(match route {
                Route::Change(c) => {
                    SourceItem::Change(c.into_event(&info.database, &info.table, &info.schema, source, now))
                }
                Route::Unresolved(u) => SourceItem::Unresolved(Unresolved::unrouted(
                    info.qualified_name(),
                    u,
                    (&info.database, &info.table, &info.schema),
                    source,
                    now,
                )),
            })
        });
    }
}

fn is_rows_event(t: u8) -> bool {
    [
        EventType::WRITE_ROWS_EVENT_V1,
        EventType::UPDATE_ROWS_EVENT_V1,
        EventType::DELETE_ROWS_EVENT_V1,
        EventType::WRITE_ROWS_EVENT,
        EventType::UPDATE_ROWS_EVENT,
        EventType::DELETE_ROWS_EVENT,
        EventType::PARTIAL_UPDATE_ROWS_EVENT,
    ]
    .iter()
    .any(|e| *e as u8 == t)
}

/// `uuid:gno` or `uuid:tag:gno`.
fn format_mysql_gtid(g: &GtidEvent) -> String {
    let s = g.sid();
    let hex: String = s.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
    match g.tag() {
        Some(tag) => format!("{uuid}:{tag}:{}", g.gno()),
        None => format!("{uuid}:{}", g.gno()),
    }
}

/// MariaDB GTID event body: seq_no u64, domain_id u32, flags u8, ...
fn parse_mariadb_gtid(data: &[u8]) -> Option<(u64, u32, u8)> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some((seq, domain, flags))
}

/// MariaDB GTID_LIST event body: count (low 28 bits), then (domain, server, seq) triples.
fn parse_mariadb_gtid_list_event(data: &[u8]) -> Option<Vec<(u32, u32, u64)>> {
    let count = (u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) & 0x0fff_ffff) as usize;
    let mut out = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let at = 4 + i * 16;
        let e = data.get(at..at + 16)?;
        out.push((
            u32::from_le_bytes(e[0..4].try_into().ok()?),
            u32::from_le_bytes(e[4..8].try_into().ok()?),
            u64::from_le_bytes(e[8..16].try_into().ok()?),
        ));
    }
    Some(out)
}

/// Parses a MariaDB GTID list `0-1-5,1-2-9` (one entry per domain).
pub(crate) fn parse_mariadb_gtid_list(s: &str) -> Option<BTreeMap<u32, (u32, u64)>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut it = part.split('-');
        let domain = it.next()?.parse().ok()?;
        let server = it.next()?.parse().ok()?;
        let seq = it.next()?.parse().ok()?;
        if it.next().is_some() || out.insert(domain, (server, seq)).is_some() {
            return None;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn render_mariadb_state(state: &BTreeMap<u32, (u32, u64)>) -> String {
    state.iter().map(|(d, (s, n))| format!("{d}-{s}-{n}")).collect::<Vec<_>>().join(",")
}

/// The log position in a HEARTBEAT_LOG_EVENT_V2 body (TLV; field 1).
fn heartbeat_v2_position(data: &[u8]) -> Option<u64> {
    let mut i = 0usize;
    while i < data.len() {
        let ty = data[i];
        let (len, n) = lenenc(data.get(i + 1..)?)?;
        let start = i + 1 + n;
        let value = data.get(start..start.checked_add(usize::try_from(len).ok()?)?)?;
        if ty == 1 {
            return lenenc(value).map(|(v, _)| v);
        }
        i = start + value.len();
    }
    None
}

fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<u64> { Some(b.get(1..=n)?.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x))) };
    match *b.first()? {
        x @ 0..=0xfa => Some((u64::from(x), 1)),
        0xfc => Some((le(2)?, 3)),
        0xfd => Some((le(3)?, 4)),
        0xfe => Some((le(8)?, 9)),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gtid_lists() {
        let s = parse_mariadb_gtid_list("0-1-5, 2-3-9").unwrap();
        assert_eq!(render_mariadb_state(&s), "0-1-5,2-3-9");
        assert!(parse_mariadb_gtid_list("3e11fa47-71ca-11e1-9e33-c80aa9429562:23").is_none());
        assert!(parse_mariadb_gtid_list("0-1-5,0-1-6").is_none());
        assert!(parse_mariadb_gtid_list("").is_none());
        assert_eq!(parse_mariadb_gtid(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0c]), Some((1, 0, 0x0c)));
        assert_eq!(parse_mariadb_gtid(&[1, 0]), None);
        assert_eq!(parse_mariadb_gtid_list_event(&[0, 0, 0, 0, 0, 0]), Some(vec![]));
        assert_eq!(parse_mariadb_gtid_list_event(&[5, 0, 0, 0]), None);
    }

    #[test]
    fn heartbeat_v2_tlv() {
        // field 0: filename "b.000001", field 1: position 1234 (lenenc 0xfc)
        let mut d = vec![0, 8];
        d.extend_from_slice(b"b.000001");
        d.extend_from_slice(&[1, 3, 0xfc, 0xd2, 0x04]);
        assert_eq!(heartbeat_v2_position(&d), Some(1234));
        assert_eq!(heartbeat_v2_position(&[1, 9, 0xfe]), None);
    }
}
