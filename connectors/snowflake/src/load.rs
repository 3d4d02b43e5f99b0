//! The loader: one curated batch (one Parquet file of one table) into the
//! tenant's Snowflake database, idempotently.
//!
//! Layout: database `<prefix><TENANT>` per tenant, schema = the source
//! database (`LAB_ACME`), table = the source table, identifiers upper-cased
//! (Snowflake's default); an external stage `LABLAKE_LAKE` per schema over
//! the tenant's curated prefix; a staging table `<TABLE>__STAGE` per table;
//! the ledger `_LABLAKE_LOADS` per database.
//!
//! Per batch ([`Loader::load`]):
//! 1. the ledger has the file → nothing to do (it was merged before);
//! 2. target and staging tables exist with every column of the batch
//!    (`CREATE TABLE IF NOT EXISTS`, then `ALTER TABLE … ADD COLUMN` for new
//!    source columns — before the rows that need them);
//! 3. `COPY INTO` the staging table from the stage, this one file (Snowflake's
//!    load history makes a repeat a no-op);
//! 4. a truncate in the batch deletes the target rows older than it;
//! 5. `MERGE` the batch's rows (selected by Kafka partition and offset range,
//!    newest change per key) into the target, applying a change only when its
//!    source position is newer than the row's: inserts, updates (values the
//!    source did not send — TOAST — are kept from the target), deletes (hard,
//!    or a flag column);
//! 6. the file goes into the ledger.
//!
//! No step needs a multi-statement transaction or key enforcement: a crash
//! between any two steps is repaired by running the batch again (COPY skips,
//! MERGE is guarded, the ledger insert comes last), and the caller advances
//! its checkpoint only after `load` returned.

use std::collections::{HashMap, HashSet};

use lablake_model::ColumnType;

use crate::{Binding, Client, SnowflakeError};

/// Metadata columns of curated files that the loader uses.
const STAGE_META: &[(&str, &str)] = &[
    ("_OP", "VARCHAR"),
    ("_POSITION", "VARCHAR"),
    ("_COMMIT_TS", "TIMESTAMP_TZ(6)"),
    ("_KAFKA_PARTITION", "NUMBER(10,0)"),
    ("_KAFKA_OFFSET", "NUMBER(19,0)"),
    ("_UNCHANGED", "VARCHAR"),
];
/// Metadata columns every target table has.
const TARGET_META: &[(&str, &str)] = &[("_OP", "VARCHAR"), ("_POSITION", "VARCHAR"), ("_COMMIT_TS", "TIMESTAMP_TZ(6)")];

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Database name prefix; the database of tenant `acme` is `<prefix>ACME`.
    pub database_prefix: String,
    /// `s3://bucket/` of the curated lake (curated keys are `<tenant>/curated/…`);
    /// `{tenant}` in it is replaced by the tenant (a bucket per tenant).
    pub lake_url: String,
    /// Storage integration of the external stages (production); none: the
    /// stage has no credentials clause (the emulator reads its own settings).
    pub storage_integration: Option<String>,
    /// Soft deletes: this BOOLEAN column is set instead of deleting rows.
    pub soft_delete_column: Option<String>,
}

/// One column of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchColumn {
    pub name: String,
    pub ty: ColumnType,
}

/// One curated batch to load.
#[derive(Debug, Clone)]
pub struct Batch {
    pub tenant: String,
    /// Source database and table.
    pub database: String,
    pub table: String,
    /// Columns of the batch's curated schema, and its primary key.
    pub columns: Vec<BatchColumn>,
    pub primary_key: Vec<String>,
    /// Object key in the lake bucket (`<tenant>/curated/…parquet`).
    pub object_key: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The ledger already had the batch: nothing was run.
    pub already_loaded: bool,
    /// Rows COPY loaded into staging (0 when load history skipped the file).
    pub staged: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Newest commit time in the batch (ms since the epoch), for freshness.
    pub max_commit_ts_ms: Option<i64>,
}

/// Snowflake type of a curated column in the target table (documented in
/// the crate README). Staging tables differ only for JSON (text there).
pub fn snowflake_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Int { bytes, unsigned } => {
            let digits = match (bytes, unsigned) {
                (1, false) => 3,
                (1, true) => 3,
                (2, _) => 5,
                (3, false) => 7,
                (3, true) => 8,
                (4, _) => 10,
                (_, false) => 19,
                (_, true) => 20,
            };
            format!("NUMBER({digits},0)")
        }
        ColumnType::Float | ColumnType::Double => "FLOAT".into(),
        ColumnType::Decimal { precision, scale } if *precision <= 38 => format!("NUMBER({precision},{scale})"),
        ColumnType::Date => "DATE".into(),
        // MySQL TIME spans ±838 hours: microseconds, not Snowflake TIME.
        ColumnType::Time => "NUMBER(19,0)".into(),
        ColumnType::DateTime => "TIMESTAMP_NTZ(6)".into(),
        ColumnType::Timestamp => "TIMESTAMP_TZ(6)".into(),
        ColumnType::Year => "NUMBER(5,0)".into(),
        ColumnType::Json | ColumnType::Array => "VARIANT".into(),
        ColumnType::Bool => "BOOLEAN".into(),
        ColumnType::Bytes | ColumnType::Bit { .. } => "BINARY".into(),
        // Text, ENUM/SET labels, UUID, unbounded NUMERIC, INTERVAL, TIMETZ,
        // and decimals wider than Snowflake's 38 digits: exact text.
        _ => "VARCHAR".into(),
    }
}

fn staging_type(ty: &ColumnType) -> String {
    match ty {
        ColumnType::Json | ColumnType::Array => "VARCHAR".into(),
        other => snowflake_type(other),
    }
}

/// A quoted, upper-cased identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.to_uppercase().replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn count(r: &crate::QueryResult, name: &str) -> u64 {
    r.get(0, name).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Loads batches over one client session.
pub struct Loader {
    client: Client,
    cfg: LoaderConfig,
    /// `(database, schema)` whose database, schema, stage and ledger exist.
    prepared: HashSet<(String, String)>,
    /// Known columns per `(database, schema, table)` (upper case).
    columns: HashMap<(String, String, String), HashSet<String>>,
    /// The session's current `(database, schema)`.
    current: Option<(String, String)>,
}

impl Loader {
    pub fn new(client: Client, cfg: LoaderConfig) -> Self {
        Loader { client, cfg, prepared: HashSet::new(), columns: HashMap::new(), current: None }
    }

    /// The client, for queries outside loading (status, tests).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Database name of a tenant.
    pub fn database_of(&self, tenant: &str) -> String {
        format!("{}{}", self.cfg.database_prefix, tenant).to_uppercase()
    }

    /// Loads one batch (see the module documentation). Safe to call again
    /// for the same batch after any failure or crash.
    pub async fn load(&mut self, b: &Batch) -> Result<LoadOutcome, SnowflakeError> {
        if b.primary_key.is_empty() {
            return Err(SnowflakeError::config(
                "primary_key",
                format!("{}.{} has no key to merge by", b.database, b.table),
            ));
        }
        let db = self.database_of(&b.tenant);
        let schema = b.database.to_uppercase();
        self.prepare(&b.tenant, &db, &schema).await?;
        let done = self
            .client
            .query(
                "SELECT COUNT(*) AS N FROM \"_LABLAKE_LOADS\" WHERE \"OBJECT_KEY\" = ?",
                &[Binding::Text(b.object_key.clone())],
            )
            .await?;
        if count(&done, "n") > 0 {
            return Ok(LoadOutcome { already_loaded: true, ..LoadOutcome::default() });
        }
        let target = ident(&b.table);
        let stage = ident(&format!("{}__STAGE", b.table));
        self.sync_columns(&db, &schema, &b.table, &b.columns, false).await?;
        self.sync_columns(&db, &schema, &format!("{}__STAGE", b.table), &b.columns, true).await?;

        // 3. COPY this one file; load history makes a repeat a no-op.
        let prefix = format!("{}/curated/", b.tenant);
        let relative = b
            .object_key
            .strip_prefix(&prefix)
            .ok_or_else(|| SnowflakeError::config("object_key", format!("{} is not under {prefix}", b.object_key)))?;
        let copy = self
            .client
            .query(
                &format!(
                    "COPY INTO {stage} FROM @LABLAKE_LAKE FILES = ({}) FILE_FORMAT = (TYPE = PARQUET) \
                     MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
                    literal(relative)
                ),
                &[],
            )
            .await?;
        crate::failpoint("sink.after_copy");
        let staged =
            copy.rows.iter().filter_map(|r| r.get(3).cloned().flatten()).filter_map(|v| v.parse::<u64>().ok()).sum();

        let range = format!(
            "\"_KAFKA_PARTITION\" = {} AND \"_KAFKA_OFFSET\" BETWEEN {} AND {}",
            b.partition, b.first_offset, b.last_offset
        );
        // 4. A truncate in the batch: everything older goes.
        let t = self
            .client
            .query(&format!("SELECT MAX(\"_POSITION\") AS P FROM {stage} WHERE {range} AND \"_OP\" = 't'"), &[])
            .await?;
        let truncated_at = t.get(0, "p").map(str::to_owned);
        let mut deleted = 0;
        if let Some(p) = &truncated_at {
            let sql = match &self.cfg.soft_delete_column {
                Some(flag) => format!("UPDATE {target} SET {} = TRUE WHERE \"_POSITION\" < ?", ident(flag)),
                None => format!("DELETE FROM {target} WHERE \"_POSITION\" < ?"),
            };
            let r = self.client.query(&sql, &[Binding::Text(p.clone())]).await?;
            deleted += count(&r, "number of rows deleted") + count(&r, "number of rows updated");
        }

        // 5. MERGE the newest change per key, position-guarded.
        let cols: Vec<String> = b.columns.iter().map(|c| ident(&c.name)).collect();
        let keys: Vec<String> = b.primary_key.iter().map(|k| ident(k)).collect();
        let mut select = Vec::new();
        for (c, col) in b.columns.iter().zip(&cols) {
            let value = match c.ty {
                ColumnType::Json | ColumnType::Array => format!("PARSE_JSON(st.{col})"),
                _ => format!("st.{col}"),
            };
            if keys.contains(col) {
                select.push(format!("st.{col}"));
            } else {
                // A value the source did not send (unchanged TOAST) keeps the target's.
                let name = c.name.to_uppercase().replace('\'', "''");
                select.push(format!(
                    "IFF(CONTAINS(',' || UPPER(COALESCE(st.\"_UNCHANGED\", '')) || ',', ',{name},'), tg.{col}, {value}) AS {col}"
                ));
            }
        }
        for meta in ["\"_OP\"", "\"_POSITION\"", "\"_COMMIT_TS\""] {
            select.push(format!("st.{meta}"));
        }
        let join: Vec<String> = keys.iter().map(|k| format!("st.{k} = tg.{k}")).collect();
        let on: Vec<String> = keys.iter().map(|k| format!("t.{k} = s.{k}")).collect();
        let after_truncate = match &truncated_at {
            Some(p) => format!(" AND st.\"_POSITION\" > {}", literal(p)),
            None => String::new(),
        };
        let all: Vec<String> = cols
            .iter()
            .map(String::as_str)
            .chain(["\"_OP\"", "\"_POSITION\"", "\"_COMMIT_TS\""])
            .map(str::to_owned)
            .collect();
        let set: Vec<String> = all.iter().filter(|c| !keys.contains(c)).map(|c| format!("{c} = s.{c}")).collect();
        let values: Vec<String> = all.iter().map(|c| format!("s.{c}")).collect();
        // Soft deletes keep a flagged row for every deleted key, also one never
        // loaded before (its values are the delete's before image): the
        // position guard then protects deleted keys as well.
        let (delete, soft_set, soft_insert, insert_when) = match &self.cfg.soft_delete_column {
            None => ("DELETE".to_owned(), String::new(), (String::new(), String::new()), " AND s.\"_OP\" <> 'd'"),
            Some(flag) => {
                let f = ident(flag);
                (
                    format!(
                        "UPDATE SET {f} = TRUE, \"_OP\" = s.\"_OP\", \"_POSITION\" = s.\"_POSITION\", \"_COMMIT_TS\" = s.\"_COMMIT_TS\""
                    ),
                    format!(", {f} = FALSE"),
                    (format!(", {f}"), ", s.\"_OP\" = 'd'".to_owned()),
                    "",
                )
            }
        };
        let staged_rows = format!(
            "{range} AND st.\"_OP\" <> 't'{after_truncate}",
            range = range.replace("\"_KAFKA_", "st.\"_KAFKA_")
        );
        let merge = format!(
            "MERGE INTO {target} t USING (SELECT {select} FROM {stage} st LEFT JOIN {target} tg ON {join} \
             WHERE {staged_rows} QUALIFY ROW_NUMBER() OVER (PARTITION BY {pk} ORDER BY st.\"_POSITION\" DESC) = 1) s \
             ON {on} \
             WHEN MATCHED AND s.\"_POSITION\" > t.\"_POSITION\" AND s.\"_OP\" = 'd' THEN {delete} \
             WHEN MATCHED AND s.\"_POSITION\" > t.\"_POSITION\" THEN UPDATE SET {set}{soft_set} \
             WHEN NOT MATCHED{insert_when} THEN INSERT ({all}{soft_cols}) VALUES ({values}{soft_vals})",
            select = select.join(", "),
            join = join.join(" AND "),
            pk = keys.iter().map(|k| format!("st.{k}")).collect::<Vec<_>>().join(", "),
            on = on.join(" AND "),
            set = set.join(", "),
            all = all.join(", "),
            values = values.join(", "),
            soft_cols = soft_insert.0,
            soft_vals = soft_insert.1,
        );
        let m = self.client.query(&merge, &[]).await?;
        let ts = self
            .client
            .query(
                &format!("SELECT DATE_PART(EPOCH_MILLISECOND, MAX(\"_COMMIT_TS\")) AS TS FROM {stage} WHERE {range}"),
                &[],
            )
            .await
            .ok()
            .and_then(|r| r.get(0, "ts").and_then(|v| v.split('.').next()?.parse().ok()));

        // 6. Only now is the batch done.
        self.client
            .query(
                "INSERT INTO \"_LABLAKE_LOADS\" (\"OBJECT_KEY\", \"TABLE_NAME\", \"LOADED_AT\") SELECT ?, ?, CURRENT_TIMESTAMP()",
                &[Binding::Text(b.object_key.clone()), Binding::Text(format!("{schema}.{}", b.table.to_uppercase()))],
            )
            .await?;
        Ok(LoadOutcome {
            already_loaded: false,
            staged,
            inserted: count(&m, "number of rows inserted"),
            updated: count(&m, "number of rows updated"),
            deleted: deleted + count(&m, "number of rows deleted"),
            max_commit_ts_ms: ts,
        })
    }

    /// Database, schema, stage and ledger of a tenant's source database, and
    /// the session's current database and schema (MERGE needs them on the
    /// emulator; they are harmless on Snowflake).
    async fn prepare(&mut self, tenant: &str, db: &str, schema: &str) -> Result<(), SnowflakeError> {
        let key = (db.to_owned(), schema.to_owned());
        if !self.prepared.contains(&key) {
            self.client.query(&format!("CREATE DATABASE IF NOT EXISTS {}", ident(db)), &[]).await?;
            self.client.query(&format!("USE DATABASE {}", ident(db)), &[]).await?;
            self.client.query(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)), &[]).await?;
            self.client.query(&format!("USE SCHEMA {}", ident(schema)), &[]).await?;
            let credentials = match &self.cfg.storage_integration {
                Some(i) => format!(" STORAGE_INTEGRATION = {}", ident(i)),
                None => String::new(),
            };
            let url =
                format!("{}/{tenant}/curated/", self.cfg.lake_url.replace("{tenant}", tenant).trim_end_matches('/'));
            let stage = format!("CREATE STAGE IF NOT EXISTS LABLAKE_LAKE URL = {}{credentials}", literal(&url));
            match self.client.query(&stage, &[]).await {
                // The emulator answers "already exists" despite IF NOT EXISTS.
                Err(SnowflakeError::Query { code, .. }) if code == "002002" => {}
                other => {
                    other?;
                }
            }
            self.client
                .query(
                    "CREATE TABLE IF NOT EXISTS \"_LABLAKE_LOADS\" (\"OBJECT_KEY\" VARCHAR, \"TABLE_NAME\" VARCHAR, \
                     \"LOADED_AT\" TIMESTAMP_NTZ)",
                    &[],
                )
                .await?;
            self.prepared.insert(key.clone());
            self.current = Some(key);
            return Ok(());
        }
        if self.current.as_ref() != Some(&key) {
            self.client.query(&format!("USE DATABASE {}", ident(db)), &[]).await?;
            self.client.query(&format!("USE SCHEMA {}", ident(schema)), &[]).await?;
            self.current = Some(key);
        }
        Ok(())
    }

    /// Makes `table` have every column of the batch (and the metadata
    /// columns), creating it or adding what is missing.
    async fn sync_columns(
        &mut self,
        db: &str,
        schema: &str,
        table: &str,
        columns: &[BatchColumn],
        staging: bool,
    ) -> Result<(), SnowflakeError> {
        let key = (db.to_owned(), schema.to_owned(), table.to_uppercase());
        let wanted: Vec<(String, String)> = columns
            .iter()
            .map(|c| (c.name.to_uppercase(), if staging { staging_type(&c.ty) } else { snowflake_type(&c.ty) }))
            .chain(
                (if staging { STAGE_META } else { TARGET_META })
                    .iter()
                    .map(|(n, t)| ((*n).to_owned(), (*t).to_owned())),
            )
            .chain(
                self.cfg
                    .soft_delete_column
                    .iter()
                    .filter(|_| !staging)
                    .map(|f| (f.to_uppercase(), "BOOLEAN".to_owned())),
            )
            .collect();
        if let Some(known) = self.columns.get(&key)
            && wanted.iter().all(|(n, _)| known.contains(n))
        {
            return Ok(());
        }
        let defs: Vec<String> = wanted.iter().map(|(n, t)| format!("{} {t}", ident(n))).collect();
        self.client.query(&format!("CREATE TABLE IF NOT EXISTS {} ({})", ident(table), defs.join(", ")), &[]).await?;
        let existing = self
            .client
            .query(
                &format!(
                    "SELECT COLUMN_NAME AS C FROM {}.INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    ident(db)
                ),
                &[Binding::Text(schema.to_owned()), Binding::Text(table.to_uppercase())],
            )
            .await?;
        let mut known: HashSet<String> = existing.rows.iter().filter_map(|r| r.first().cloned().flatten()).collect();
        for (name, ty) in &wanted {
            if !known.contains(name) {
                tracing::info!(database = db, schema, table, column = %name, "new source column: adding it in Snowflake");
                self.client
                    .query(&format!("ALTER TABLE {} ADD COLUMN {} {ty}", ident(table), ident(name)), &[])
                    .await?;
                known.insert(name.clone());
            }
        }
        self.columns.insert(key, known);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_mapping() {
        let int = |bytes, unsigned| ColumnType::Int { bytes, unsigned };
        assert_eq!(snowflake_type(&int(8, true)), "NUMBER(20,0)");
        assert_eq!(snowflake_type(&int(4, false)), "NUMBER(10,0)");
        assert_eq!(snowflake_type(&ColumnType::Decimal { precision: 12, scale: 2 }), "NUMBER(12,2)");
        assert_eq!(snowflake_type(&ColumnType::Decimal { precision: 65, scale: 30 }), "VARCHAR");
        assert_eq!(snowflake_type(&ColumnType::Timestamp), "TIMESTAMP_TZ(6)");
        assert_eq!(snowflake_type(&ColumnType::DateTime), "TIMESTAMP_NTZ(6)");
        assert_eq!(snowflake_type(&ColumnType::Json), "VARIANT");
        assert_eq!(staging_type(&ColumnType::Json), "VARCHAR");
        assert_eq!(snowflake_type(&ColumnType::Bytes), "BINARY");
        assert_eq!(snowflake_type(&ColumnType::Enum), "VARCHAR");
        assert_eq!(ident("or\"ders"), "\"OR\"\"DERS\"");
        assert_eq!(literal("a'b\\"), "'a''b\\\\'");
    }
}
