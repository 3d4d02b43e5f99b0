//! Snapshot (full load) reads of PostgreSQL tables, for the watermark
//! method: chunks in primary-key order read with `COPY … (FORMAT binary)`, so
//! every value goes through the same binary decoders as the replication
//! stream and a snapshot row is byte-identical to a streamed one.
//!
//! [`PgSnapshotter`] implements [`Snapshotter`] and its delivery contract:
//! `read_range` returns at most `limit` rows with keys greater than `after`,
//! in key order, plus the key of the last row as text (what `after` takes to
//! continue). It holds one chunk in memory at a time. `watermark` writes a
//! transactional logical message that the replication stream returns as
//! [`lablake_source::SourceItem::Watermark`] in commit order; the caller
//! brackets each chunk read with a low and a high watermark and drops the
//! chunk rows whose keys changed in between (DBLog).

use std::sync::Arc;

use bytes::Buf;
use futures::StreamExt;
use lablake_model::tenant::TenantRule;
use lablake_model::{Chunk, TableId, TableSchema, Value};
use lablake_source::{SnapshotTable, Snapshotter};
use tokio_postgres::Client;

use crate::config::PgSourceConfig;
use crate::decoder::{DecoderConfig, PgDecoder, WATERMARK_PREFIX};
use crate::error::PgError;
use crate::pgoutput::{Relation, RelationColumn};
use crate::source::{connect_catalog, connection, pg_reason, primary_key, resolve_kind};
use crate::values::{self, PgKind};

/// A table as a snapshot reads it.
#[derive(Debug, Clone)]
pub struct PgSnapshotTable {
    pub id: TableId,
    /// The schema the stream's changes of this table carry.
    pub schema: Arc<TableSchema>,
    kinds: Vec<PgKind>,
    /// `"ns"."table"`.
    quoted: String,
    /// Key columns (quoted) and their SQL types, in key order.
    key: Vec<(String, String)>,
    /// Whether the key is a primary key or replica-identity index (chunkable).
    pub keyed: bool,
}

impl SnapshotTable for PgSnapshotTable {
    fn schema(&self) -> &Arc<TableSchema> {
        &self.schema
    }
    fn keyed(&self) -> bool {
        self.keyed
    }
}

/// Reads snapshot chunks and writes watermarks on its own connection.
pub struct PgSnapshotter {
    client: Client,
    decoder: PgDecoder,
    cfg: DecoderConfig,
}

impl PgSnapshotter {
    pub async fn connect(cfg: &PgSourceConfig) -> Result<Self, PgError> {
        let client = connect_catalog(cfg).await?;
        let dcfg = cfg.decoder_config()?;
        Ok(PgSnapshotter { client, decoder: PgDecoder::new(dcfg.clone()), cfg: dcfg })
    }
}

impl Snapshotter for PgSnapshotter {
    type Table = PgSnapshotTable;
    type Error = PgError;

    /// Every selected table of a tenant (schema-per-tenant rule only: with a
    /// tenant column a table holds many tenants and is listed for none).
    async fn tables(&mut self) -> Result<Vec<TableId>, PgError> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .map_err(|e| connection(pg_reason(&e)))?;
        let mut out = Vec::new();
        for r in rows {
            let (ns, table): (String, String) = (r.get(0), r.get(1));
            if !self.cfg.filter.matches(&ns, &table) {
                continue;
            }
            if let TenantRule::SchemaPattern { .. } = &self.cfg.tenant
                && let Some(tenant) = self.cfg.tenant.tenant_of_database(&ns)
            {
                out.push(TableId { tenant: tenant.into(), database: ns.into(), table: table.into() });
            }
        }
        Ok(out)
    }

    /// The table's layout from the catalog; `None` when it does not exist.
    async fn table(&mut self, id: &TableId) -> Result<Option<PgSnapshotTable>, PgError> {
        let rel = self
            .client
            .query_opt(
                "SELECT c.oid, c.relreplident::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&&*id.database, &&*id.table],
            )
            .await
            .map_err(|e| connection(pg_reason(&e)))?;
        let Some(rel) = rel else { return Ok(None) };
        let (oid, identity): (u32, String) = (rel.get(0), rel.get(1));
        // Columns as pgoutput sends them: live, not generated, in order; `key`
        // marks the replica identity like the Relation message does.
        let cols = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod), \
                 a.attnum = ANY(coalesce((SELECT i.indkey::int2[] FROM pg_index i WHERE i.indrelid = $1 AND \
                   CASE $2 WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END LIMIT 1), \
                   '{}'::int2[])) OR $2 = 'f' \
                 FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 AND a.attgenerated = '' ORDER BY a.attnum",
                &[&oid, &identity],
            )
            .await
            .map_err(|e| connection(pg_reason(&e)))?;
        let mut columns = Vec::with_capacity(cols.len());
        let mut types = Vec::with_capacity(cols.len());
        for c in &cols {
            columns.push(RelationColumn { key: c.get(4), name: c.get(0), type_oid: c.get(1), type_modifier: c.get(2) });
            types.push(c.get::<_, String>(3));
        }
        let relation = Relation {
            oid,
            namespace: id.database.to_string(),
            name: id.table.to_string(),
            replica_identity: identity.bytes().next().unwrap_or(b'd'),
            columns,
        };
        for t in self.decoder.unknown_types(&relation) {
            let kind = Box::pin(resolve_kind(&self.client, t, 0)).await?;
            self.decoder.put_kind(t, kind);
        }
        let pk = primary_key(&self.client, oid).await?;
        let keyed = !pk.is_empty() || relation.columns.iter().any(|c| c.key) && identity != "f";
        let (schema, kinds) = self.decoder.relation_schema(&relation, &pk);
        let key =
            schema.primary_key.iter().map(|i| (quote_ident(&schema.columns[*i].name), types[*i].clone())).collect();
        Ok(Some(PgSnapshotTable {
            id: id.clone(),
            schema,
            kinds,
            quoted: format!("{}.{}", quote_ident(&id.database), quote_ident(&id.table)),
            key,
            keyed,
        }))
    }

    /// The planner's row estimate for the whole table (`EXPLAIN`, which
    /// also estimates never-analyzed tables from their size), 0 when unknown.
    async fn estimate(&mut self, t: &PgSnapshotTable) -> Result<u64, PgError> {
        // The simple protocol returns the json plan as text.
        let msgs = self
            .client
            .simple_query(&format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {}", t.quoted))
            .await
            .map_err(|e| connection(pg_reason(&e)))?;
        let plan = msgs
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap_or_default();
        Ok(plan_rows(&plan))
    }

    /// Writes a watermark (a transactional logical message) and returns
    /// after it committed.
    async fn watermark(&mut self, id: &str) -> Result<(), PgError> {
        self.client
            .execute("SELECT pg_logical_emit_message(true, $1, $2)", &[&WATERMARK_PREFIX, &id])
            .await
            .map_err(|e| connection(pg_reason(&e)))?;
        Ok(())
    }

    /// Like [`Snapshotter::read_chunk`], only keys up to and including
    /// `upto` (a boundary from [`PgSnapshotter::boundaries`]).
    async fn read_range(
        &mut self,
        t: &PgSnapshotTable,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        limit: usize,
    ) -> Result<Chunk, PgError> {
        let cols: Vec<String> = t.schema.columns.iter().map(|c| quote_ident(&c.name)).collect();
        // Key columns qualified by the alias: the text copies of the keys
        // would otherwise make the names ambiguous.
        let keys: Vec<String> = t.key.iter().map(|(k, _)| format!("_s.{k}")).collect();
        let mut sql = format!("SELECT {}", cols.iter().map(|c| format!("_s.{c}")).collect::<Vec<_>>().join(", "));
        for (i, k) in keys.iter().enumerate() {
            sql.push_str(&format!(", {k}::text AS _lablake_key{i}"));
        }
        sql.push_str(&format!(" FROM {} AS _s", t.quoted));
        if t.keyed {
            sql.push_str(&key_range(t, &keys, after, upto)?);
            sql.push_str(&format!(" ORDER BY {} LIMIT {limit}", keys.join(", ")));
        }
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let stream = self.client.copy_out(&copy).await.map_err(|e| connection(pg_reason(&e)))?;
        let mut stream = std::pin::pin!(stream);
        let mut buf = bytes::BytesMut::new();
        while let Some(part) = stream.next().await {
            buf.extend_from_slice(&part.map_err(|e| connection(pg_reason(&e)))?);
        }
        parse_copy(&t.quoted, &t.schema, &t.kinds, t.key.len(), buf.freeze())
    }

    /// Up to `count` keys (as text) that split the rows after `after` into
    /// ranges of `step` rows: the key of the `step`-th row, of the
    /// `2·step`-th, … (fewer when the table ends first). An index-only walk
    /// over the keys, for reading several chunks in parallel.
    async fn boundaries(
        &mut self,
        t: &PgSnapshotTable,
        after: Option<&[String]>,
        step: usize,
        count: usize,
    ) -> Result<Vec<Vec<String>>, PgError> {
        if !t.keyed || step == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = t.key.iter().map(|(k, _)| format!("_s.{k}")).collect();
        let texts: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
        let sql = format!(
            "SELECT {} FROM (SELECT {}, row_number() OVER (ORDER BY {}) AS _n FROM {} AS _s{} ORDER BY {} LIMIT {}) _b \
             WHERE _n % {step} = 0 ORDER BY _n",
            (0..keys.len()).map(|i| format!("_k{i}")).collect::<Vec<_>>().join(", "),
            texts.iter().enumerate().map(|(i, k)| format!("{k} AS _k{i}")).collect::<Vec<_>>().join(", "),
            keys.join(", "),
            t.quoted,
            key_range(t, &keys, after, None)?,
            keys.join(", "),
            step.saturating_mul(count),
        );
        let rows = self.client.query(&sql, &[]).await.map_err(|e| connection(pg_reason(&e)))?;
        Ok(rows.iter().map(|r| (0..keys.len()).map(|i| r.get::<_, String>(i)).collect()).collect())
    }
}

/// ` WHERE (keys) > (after) [AND (keys) <= (upto)]`, empty without bounds.
fn key_range(
    t: &PgSnapshotTable,
    keys: &[String],
    after: Option<&[String]>,
    upto: Option<&[String]>,
) -> Result<String, PgError> {
    let lits = |vals: &[String]| -> Result<String, PgError> {
        if vals.len() != t.key.len() {
            return Err(PgError::Config {
                key: "snapshot".into(),
                reason: format!("{}: the saved key has {} columns, the table {}", t.quoted, vals.len(), t.key.len()),
            });
        }
        let l: Vec<String> = t.key.iter().zip(vals).map(|((_, ty), v)| format!("{}::{ty}", quote_literal(v))).collect();
        Ok(l.join(", "))
    };
    let mut conds = Vec::new();
    if let Some(a) = after {
        conds.push(format!("({}) > ({})", keys.join(", "), lits(a)?));
    }
    if let Some(u) = upto {
        conds.push(format!("({}) <= ({})", keys.join(", "), lits(u)?));
    }
    Ok(if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) })
}

/// Parses `COPY … (FORMAT binary)` output: the table's columns, then the
/// key columns as text.
fn parse_copy(
    table: &str,
    schema: &TableSchema,
    kinds: &[PgKind],
    key_len: usize,
    mut b: bytes::Bytes,
) -> Result<Chunk, PgError> {
    let bad = |reason: String| PgError::Protocol { lsn: String::new(), reason: format!("COPY of {table}: {reason}") };
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    if b.len() < SIGNATURE.len() + 8 || &b[..SIGNATURE.len()] != SIGNATURE {
        return Err(bad("not binary COPY output".into()));
    }
    b.advance(SIGNATURE.len() + 4);
    let ext = b.get_u32() as usize;
    if b.remaining() < ext {
        return Err(bad("truncated header".into()));
    }
    b.advance(ext);
    let width = schema.columns.len() + key_len;
    let mut rows = Vec::new();
    // Key fields of the latest row (shared slices of the buffer): only the
    // last row's key is turned into text.
    let mut key: Vec<bytes::Bytes> = Vec::with_capacity(key_len);
    loop {
        if b.remaining() < 2 {
            return Err(bad("missing trailer".into()));
        }
        let n = b.get_i16();
        if n == -1 {
            break;
        }
        if n as usize != width {
            return Err(bad(format!("{n} fields, expected {width}")));
        }
        let mut row = Vec::with_capacity(schema.columns.len());
        key.clear();
        for i in 0..width {
            if b.remaining() < 4 {
                return Err(bad("truncated field".into()));
            }
            let len = b.get_i32();
            let value = if len < 0 {
                None
            } else {
                let len = len as usize;
                if b.remaining() < len {
                    return Err(bad("truncated field".into()));
                }
                Some(b.split_to(len))
            };
            if let Some(column) = schema.columns.get(i) {
                let kind = kinds.get(i).unwrap_or(&PgKind::Other);
                row.push(match value {
                    None => Value::Null,
                    Some(v) => values::decode(kind, &v).map_err(|e| bad(format!("column `{}`: {e}", column.name)))?,
                });
            } else {
                key.push(value.ok_or_else(|| bad("null key".into()))?);
            }
        }
        rows.push(row);
    }
    let last_key = if rows.is_empty() {
        None
    } else {
        let text = key.iter().map(|k| String::from_utf8(k.to_vec()).map_err(|_| bad("key is not UTF-8".into())));
        Some(text.collect::<Result<Vec<_>, _>>()?)
    };
    Ok(Chunk { rows, last_key })
}

/// `"Plan Rows"` of the top plan node in `EXPLAIN (FORMAT JSON)` output.
fn plan_rows(plan: &str) -> u64 {
    let Some(i) = plan.find("\"Plan Rows\":") else { return 0 };
    let digits: String = plan[i + 12..].trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    digits.parse::<f64>().map_or(0, |v| v as u64)
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `E'…'` with quotes and backslashes escaped (independent of
/// `standard_conforming_strings`).
fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use lablake_model::{Column, ColumnType};

    fn copy_bytes(rows: &[(Option<i64>, Option<&str>, &str)]) -> bytes::Bytes {
        let mut b = bytes::BytesMut::new();
        b.put_slice(b"PGCOPY\n\xff\r\n\0");
        b.put_u32(0);
        b.put_u32(0);
        for (id, txt, key) in rows {
            b.put_i16(3);
            match id {
                Some(v) => {
                    b.put_i32(8);
                    b.put_i64(*v);
                }
                None => b.put_i32(-1),
            }
            match txt {
                Some(t) => {
                    b.put_i32(t.len() as i32);
                    b.put_slice(t.as_bytes());
                }
                None => b.put_i32(-1),
            }
            b.put_i32(key.len() as i32);
            b.put_slice(key.as_bytes());
        }
        b.put_i16(-1);
        b.freeze()
    }

    fn schema() -> Arc<TableSchema> {
        TableSchema::new(
            vec![
                Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: false },
                Column { name: "txt".into(), ty: ColumnType::String, nullable: true },
            ],
            vec![0],
        )
    }

    #[test]
    fn binary_copy_rows_decode_like_the_stream() {
        let kinds = [PgKind::builtin(20, -1).unwrap(), PgKind::builtin(25, -1).unwrap()];
        let c =
            parse_copy("t", &schema(), &kinds, 1, copy_bytes(&[(Some(7), Some("héllo"), "7"), (Some(9), None, "9")]))
                .unwrap();
        assert_eq!(c.rows, vec![vec![Value::Int(7), Value::String("héllo".into())], vec![Value::Int(9), Value::Null]]);
        assert_eq!(c.last_key, Some(vec!["9".to_owned()]));
        let empty = parse_copy("t", &schema(), &kinds, 1, copy_bytes(&[])).unwrap();
        assert!(empty.rows.is_empty() && empty.last_key.is_none());
    }

    #[test]
    fn malformed_copy_output_is_an_error_never_a_panic() {
        let kinds = [PgKind::builtin(20, -1).unwrap(), PgKind::builtin(25, -1).unwrap()];
        let good = copy_bytes(&[(Some(7), Some("x"), "7")]);
        for cut in 0..good.len() {
            assert!(parse_copy("t", &schema(), &kinds, 1, good.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut wrong = good.to_vec();
        wrong[19] = 2; // field count 3 → 2
        assert!(parse_copy("t", &schema(), &kinds, 1, bytes::Bytes::from(wrong)).is_err());
    }

    #[test]
    fn plan_rows_are_read_from_explain_json() {
        assert_eq!(plan_rows(r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 60030, "Plan Width": 0}}]"#), 60030);
        assert_eq!(plan_rows("nonsense"), 0);
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's a \\ test"), "E'it''s a \\\\ test'");
    }
}
