//! Snapshot (full load) reads of MySQL/MariaDB tables for the watermark
//! method (see `docs/adr/0006-snapshots-with-watermarks.md`).
//!
//! [`MysqlSnapshotter`] implements [`Snapshotter`] and its delivery contract:
//! `read_range` returns at most `limit` rows with chunk keys greater than
//! `after`, in key order, plus the
//! last row's key as text (what `after` takes to continue); one chunk is in
//! memory at a time. Values are converted to exactly what the binlog decoder
//! produces for the same column (`decode::select`), and the schema is built
//! from information_schema the way the binlog decoder builds it, so snapshot
//! rows and streamed rows share a schema. `watermark`
//! inserts (and at once deletes) a row of the signalling table, which the
//! binlog stream returns as [`lablake_source::SourceItem::Watermark`] in commit order.

use std::sync::Arc;

use lablake_model::tenant::TenantRule;
use lablake_model::{Chunk, TableId, TableSchema};
use lablake_source::{SnapshotTable, Snapshotter};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Params, Row};

use crate::config::MysqlSourceConfig;
use crate::decode::{Flavor, Kind, TableInfo, chunkable, from_select, key_param, key_text};
use crate::source::{connect, ensure_crypto_provider, query_err};
use crate::stream::DecoderConfig;
use crate::{MysqlError, catalog};

/// A table as a snapshot reads it.
#[derive(Debug, Clone)]
pub struct MysqlSnapshotTable {
    pub id: TableId,
    /// The schema the stream's changes of this table carry.
    pub schema: Arc<TableSchema>,
    info: Arc<TableInfo>,
    /// `` `db`.`table` ``.
    quoted: String,
    /// Columns chunks are ordered and bounded by: the primary key, else the
    /// first unique index over NOT NULL columns; empty when neither exists.
    chunk_key: Vec<usize>,
    /// Whether the table can be read in chunks.
    pub keyed: bool,
}

impl SnapshotTable for MysqlSnapshotTable {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }
    fn keyed(&self) -> bool {
        self.keyed
    }
}

/// Reads snapshot chunks and writes watermarks on its own connection.
pub struct MysqlSnapshotter {
    conn: Conn,
    cfg: DecoderConfig,
    flavor: Flavor,
    signal: (String, String),
    signal_ready: bool,
}

fn quote(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

impl MysqlSnapshotter {
    /// Connects with the session settings snapshot reads rely on (UTC
    /// session time zone, results in the columns' own charsets).
    pub async fn connect(config: &MysqlSourceConfig) -> Result<Self, MysqlError> {
        let cfg = config.decoder_config()?;
        ensure_crypto_provider();
        let opts = config.driver_opts()?;
        let mut conn = connect(&opts, config.connect_timeout).await?;
        let version: Option<String> =
            conn.query_first("SELECT VERSION()").await.map_err(query_err("server version"))?;
        let flavor = Flavor::from_server_version(&version.unwrap_or_default());
        conn.query_drop("SET time_zone = '+00:00', character_set_results = NULL")
            .await
            .map_err(query_err("snapshot session settings"))?;
        let signal = config.signal()?;
        Ok(MysqlSnapshotter { conn, cfg, flavor, signal, signal_ready: false })
    }
}

impl Snapshotter for MysqlSnapshotter {
    type Table = MysqlSnapshotTable;
    type Error = MysqlError;

    /// Every selected table of a tenant (schema-per-tenant rule only: with a
    /// tenant column a table holds many tenants and is listed for none).
    async fn tables(&mut self) -> Result<Vec<TableId>, MysqlError> {
        if !matches!(self.cfg.tenant, TenantRule::SchemaPattern { .. }) {
            return Ok(Vec::new());
        }
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .conn
            .query(
                "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' \
                 AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2",
            )
            .await
            .map_err(query_err("listing tables"))?;
        let mut out = Vec::new();
        for (db, table) in rows {
            let (db, table) = (String::from_utf8_lossy(&db), String::from_utf8_lossy(&table));
            if (&*db, &*table) == (self.signal.0.as_str(), self.signal.1.as_str())
                || !self.cfg.filter.matches(&db, &table)
            {
                continue;
            }
            if let Some(tenant) = self.cfg.tenant.tenant_of_database(&db) {
                out.push(TableId { tenant: tenant.into(), database: (*db).into(), table: (*table).into() });
            }
        }
        Ok(out)
    }

    /// The table's layout from information_schema; `None` when it does not exist.
    async fn table(&mut self, id: &TableId) -> Result<Option<MysqlSnapshotTable>, MysqlError> {
        let cat = catalog::fetch(&mut self.conn, &id.database, &id.table, self.flavor).await?;
        if cat.columns.is_empty() {
            return Ok(None);
        }
        let info = Arc::new(TableInfo::from_catalog(&id.database, &id.table, &cat, self.flavor)?);
        let position = |name: &str| cat.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name));
        let mut chunk_key: Vec<usize> =
            if info.key_is_all_columns { Vec::new() } else { info.schema.primary_key.clone() };
        if chunk_key.is_empty() {
            // Fallback: the first unique index whose columns are all NOT NULL.
            let rows: Vec<(Vec<u8>, Vec<u8>)> = self
                .conn
                .exec(
                    "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS \
                     WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                    (&*id.database, &*id.table),
                )
                .await
                .map_err(query_err("unique indexes"))?;
            let mut indexes: Vec<(Vec<u8>, Vec<Option<usize>>)> = Vec::new();
            for (index, column) in rows {
                let col = position(&String::from_utf8_lossy(&column));
                match indexes.last_mut() {
                    Some((name, cols)) if *name == index => cols.push(col),
                    _ => indexes.push((index, vec![col])),
                }
            }
            chunk_key = indexes
                .into_iter()
                .filter_map(|(_, cols)| cols.into_iter().collect::<Option<Vec<usize>>>())
                .find(|cols| cols.iter().all(|i| !info.schema.columns[*i].nullable))
                .unwrap_or_default();
        }
        if !chunk_key.iter().all(|i| info.kinds.get(*i).is_some_and(chunkable)) {
            chunk_key.clear();
        }
        Ok(Some(MysqlSnapshotTable {
            id: id.clone(),
            schema: info.schema.clone(),
            quoted: format!("{}.{}", quote(&id.database), quote(&id.table)),
            keyed: !chunk_key.is_empty(),
            chunk_key,
            info,
        }))
    }

    /// information_schema's row estimate (InnoDB: from index statistics), 0 when unknown.
    async fn estimate(&mut self, t: &MysqlSnapshotTable) -> Result<u64, MysqlError> {
        let rows: Option<Option<u64>> = self
            .conn
            .exec_first(
                "SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&*t.id.database, &*t.id.table),
            )
            .await
            .map_err(query_err("row estimate"))?;
        Ok(rows.flatten().unwrap_or(0))
    }

    /// Writes a watermark: inserts a row with `id` into the signalling table
    /// (committed, so the binlog has it) and deletes it again.
    async fn watermark(&mut self, id: &str) -> Result<(), MysqlError> {
        let table = format!("{}.{}", quote(&self.signal.0), quote(&self.signal.1));
        if !self.signal_ready {
            self.conn
                .query_drop(format!("CREATE DATABASE IF NOT EXISTS {}", quote(&self.signal.0)))
                .await
                .map_err(query_err("creating the signalling database"))?;
            self.conn
                .query_drop(format!(
                    "CREATE TABLE IF NOT EXISTS {table} (id VARCHAR(191) NOT NULL PRIMARY KEY, \
                     written_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) DEFAULT CHARSET = utf8mb4"
                ))
                .await
                .map_err(query_err("creating the signalling table"))?;
            self.signal_ready = true;
        }
        self.conn
            .exec_drop(format!("INSERT INTO {table} (id) VALUES (?)"), (id,))
            .await
            .map_err(query_err("writing a watermark"))?;
        self.conn
            .exec_drop(format!("DELETE FROM {table} WHERE id = ?"), (id,))
            .await
            .map_err(query_err("removing a watermark"))?;
        Ok(())
    }

    /// Like [`Snapshotter::read_chunk`], only keys up to and including
    /// `upto` (a boundary from [`MysqlSnapshotter::boundaries`]).
    async fn read_range(
        &mut self,
        t: &MysqlSnapshotTable,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        limit: usize,
    ) -> Result<Chunk, MysqlError> {
        let kinds: &[Kind] = &t.info.kinds;
        let cols: Vec<String> = t.schema.columns.iter().map(|c| quote(&c.name)).collect();
        let (cond, params) = key_range(t, after, upto)?;
        let order: Vec<&str> = t.chunk_key.iter().map(|i| cols[*i].as_str()).collect();
        let sql =
            format!("SELECT {} FROM {}{cond} ORDER BY {} LIMIT {limit}", cols.join(", "), t.quoted, order.join(", "));
        let params = if params.is_empty() { Params::Empty } else { Params::Positional(params) };
        let raw: Vec<Row> = self.conn.exec(sql, params).await.map_err(query_err("reading a snapshot chunk"))?;
        let mut rows = Vec::with_capacity(raw.len());
        for r in raw {
            let values = r.unwrap();
            if values.len() != kinds.len() {
                // Never index past a short row (a server answering oddly must not panic us).
                return Err(MysqlError::decode(
                    &t.info.qualified_name(),
                    "*",
                    format!("{} columns selected, {} returned", kinds.len(), values.len()),
                ));
            }
            let row = values
                .into_iter()
                .zip(kinds)
                .zip(&t.schema.columns)
                .map(|((v, k), c)| {
                    from_select(k, v).map_err(|r| MysqlError::decode(&t.info.qualified_name(), &c.name, r))
                })
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(row);
        }
        let last_key = rows.last().and_then(|row| t.chunk_key.iter().map(|i| key_text(&row[*i])).collect());
        Ok(Chunk { rows, last_key })
    }

    /// Up to `count` chunk keys (as text) that split the rows after `after`
    /// into ranges of `step` rows (fewer when the table ends first): an
    /// index walk over the keys, for reading several chunks in parallel.
    async fn boundaries(
        &mut self,
        t: &MysqlSnapshotTable,
        after: Option<&[String]>,
        step: usize,
        count: usize,
    ) -> Result<Vec<Vec<String>>, MysqlError> {
        if t.chunk_key.is_empty() || step == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = t.chunk_key.iter().map(|i| quote(&t.schema.columns[*i].name)).collect();
        let mut out: Vec<Vec<String>> = Vec::with_capacity(count);
        let mut from: Option<Vec<String>> = after.map(<[String]>::to_vec);
        for _ in 0..count {
            let (cond, params) = key_range(t, from.as_deref(), None)?;
            let sql = format!(
                "SELECT {} FROM {}{cond} ORDER BY {} LIMIT 1 OFFSET {}",
                keys.join(", "),
                t.quoted,
                keys.join(", "),
                step - 1
            );
            let params = if params.is_empty() { Params::Empty } else { Params::Positional(params) };
            let row: Option<Row> =
                self.conn.exec_first(sql, params).await.map_err(query_err("finding chunk boundaries"))?;
            let Some(row) = row else { break };
            let key = row
                .unwrap()
                .into_iter()
                .zip(&t.chunk_key)
                .map(|(v, i)| {
                    let name = &t.schema.columns[*i].name;
                    let value = from_select(&t.info.kinds[*i], v)
                        .map_err(|r| MysqlError::decode(&t.info.qualified_name(), name, r))?;
                    key_text(&value).ok_or_else(|| MysqlError::decode(&t.info.qualified_name(), name, "null chunk key"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            out.push(key.clone());
            from = Some(key);
        }
        Ok(out)
    }
}

/// ` WHERE <keys after `after`> [AND NOT <keys after `upto`>]` and its parameters.
fn key_range(
    t: &MysqlSnapshotTable,
    after: Option<&[String]>,
    upto: Option<&[String]>,
) -> Result<(String, Vec<mysql_async::Value>), MysqlError> {
    let mut params = Vec::new();
    let mut conds = Vec::new();
    if let Some(a) = after {
        conds.push(greater(t, a, &mut params)?);
    }
    if let Some(u) = upto {
        conds.push(format!("NOT {}", greater(t, u, &mut params)?));
    }
    Ok((if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) }, params))
}

/// `((k1 > ?) OR (k1 = ? AND k2 > ?) OR …)`: rows whose chunk key is greater
/// than `vals` (the expanded form gets a range scan on MySQL and MariaDB alike).
fn greater(
    t: &MysqlSnapshotTable,
    vals: &[String],
    params: &mut Vec<mysql_async::Value>,
) -> Result<String, MysqlError> {
    if vals.len() != t.chunk_key.len() {
        return Err(MysqlError::decode(&t.info.qualified_name(), "chunk key", "stored chunk key has the wrong arity"));
    }
    let mut typed = Vec::with_capacity(vals.len());
    for (i, text) in t.chunk_key.iter().zip(vals) {
        let name = &t.schema.columns[*i].name;
        let (sql, p) =
            key_param(&t.info.kinds[*i], text).map_err(|r| MysqlError::decode(&t.info.qualified_name(), name, r))?;
        typed.push((quote(name), sql, p));
    }
    let mut ors = Vec::new();
    for n in 0..typed.len() {
        let mut ands = Vec::new();
        for (col, sql, p) in &typed[..n] {
            ands.push(format!("{col} = {sql}"));
            params.push(p.clone());
        }
        let (col, sql, p) = &typed[n];
        ands.push(format!("{col} > {sql}"));
        params.push(p.clone());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    Ok(format!("({})", ors.join(" OR ")))
}
