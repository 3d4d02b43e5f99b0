//! The loader: curated batches (Parquet files of one table, in manifest
//! order) into the tenant's Snowflake database, idempotently — several
//! files per load, so a backlog costs one `MERGE` per table and load rather
//! than one per file (warehouse time is what Snowflake bills).
//!
//! Layout: database `<prefix><TENANT>` per tenant, schema = the source
//! database (`LAB_ACME`), table = the source table, identifiers upper-cased
//! (Snowflake's default); an external stage `LABLAKE_LAKE` per schema over
//! the tenant's curated prefix; a transient staging table
//! `<TABLE>__STAGE_<hash of the load's first file>` per load; the ledger
//! `_LABLAKE_LOADS` per database.
//!
//! Per load ([`Loader::load`]):
//! 1. files the ledger has are left out (they were merged before; a staging
//!    table an earlier load starting at the first of them left is dropped);
//!    nothing left → nothing to do;
//! 2. the target table has every column of the batch under the column's
//!    newest name and with a type that holds its newest type — created,
//!    renamed, added (`ALTER TABLE … ADD COLUMN`), widened or rebuilt before
//!    the rows that need it load; the load's staging table is created with
//!    the files' own columns (every file of a load has the same layout);
//! 3. `COPY INTO` the staging table from the stage, these files (Snowflake's
//!    load history makes a repeat a no-op, so a load that starts at the same
//!    file after a crash adds only the files it did not copy yet);
//! 4. a truncate in the load deletes the target rows older than it;
//! 5. `MERGE` the load's rows (newest change per key over all its files)
//!    into the target, applying a change only when its source position is
//!    newer than the row's: inserts, updates (values the source did not
//!    send — TOAST — are kept from the target), deletes (hard, or a flag
//!    column);
//! 6. the files go into the ledger in one statement, then the staging
//!    table is dropped.
//!
//! No step needs a multi-statement transaction or key enforcement: a crash
//! between any two steps is repaired by running the load again (COPY skips,
//! MERGE is guarded, the ledger insert comes last, schema steps are decided
//! from the table as it is), and the caller advances its checkpoint only
//! after `load` returned. Merging a file's rows early, or twice, is harmless:
//! the position guard keeps the newest change per key.

use std::collections::{HashMap, HashSet};

use lablake_model::{ColumnType, TableId};

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

/// One column of a batch, and where it goes in Snowflake.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchColumn {
    /// Name and type in the curated file.
    pub name: String,
    pub ty: ColumnType,
    /// Name of the Snowflake column: the column's newest name at the
    /// source (a batch written before a rename loads into the renamed
    /// column).
    pub target: String,
    /// Earlier names of the column, newest first: a Snowflake column still
    /// called so is renamed to `target` before loading.
    pub earlier: Vec<String>,
    /// The type the Snowflake column should have (the newest at the
    /// source): an existing column that cannot hold it is widened or
    /// rebuilt. `None`: an existing column's type is left alone.
    pub target_ty: Option<ColumnType>,
}

impl BatchColumn {
    /// A column loaded under its own name with its own type.
    pub fn new(name: impl Into<String>, ty: ColumnType) -> Self {
        let name = name.into();
        BatchColumn { target: name.clone(), earlier: Vec::new(), target_ty: Some(ty.clone()), name, ty }
    }
}

/// Curated batches of one table to load together: files with one layout.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The tenant's source table the files belong to.
    pub table: TableId,
    /// Columns of the files' curated schema, and its primary key.
    pub columns: Vec<BatchColumn>,
    pub primary_key: Vec<String>,
    /// Object keys in the lake bucket (`<tenant>/curated/…parquet`), in
    /// manifest order, at least one; the staging table is named after the
    /// first.
    pub object_keys: Vec<String>,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// The ledger already had every file: nothing was run.
    pub already_loaded: bool,
    /// Files the ledger already had (left out of the load).
    pub files_skipped: usize,
    /// Rows COPY loaded into staging (none for files load history skipped).
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

/// A Snowflake column type as `INFORMATION_SCHEMA.COLUMNS` reports it:
/// base type (`TEXT` for VARCHAR), and precision and scale of `NUMBER`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SfType {
    base: String,
    precision: u32,
    scale: u32,
}

impl SfType {
    /// From a declared type such as `NUMBER(12,2)`, `VARCHAR`, `TIMESTAMP_TZ(6)`.
    fn parse(declared: &str) -> Self {
        let (base, args) = match declared.split_once('(') {
            Some((b, a)) => (b, a.trim_end_matches(')')),
            None => (declared, ""),
        };
        SfType::of(
            base,
            args.split(',').next().and_then(|p| p.trim().parse().ok()),
            args.split(',').nth(1).and_then(|s| s.trim().parse().ok()),
        )
    }

    fn of(base: &str, precision: Option<u32>, scale: Option<u32>) -> Self {
        let base = match base.trim().to_uppercase().as_str() {
            "VARCHAR" | "STRING" | "CHAR" | "CHARACTER" => "TEXT".to_owned(),
            "DECIMAL" | "NUMERIC" | "INT" | "INTEGER" | "BIGINT" => "NUMBER".to_owned(),
            b => b.to_owned(),
        };
        let (precision, scale) = if base == "NUMBER" { (precision.unwrap_or(38), scale.unwrap_or(0)) } else { (0, 0) };
        SfType { base, precision, scale }
    }

    /// The type as it is declared in DDL.
    fn declared(&self) -> String {
        match self.base.as_str() {
            "NUMBER" => format!("NUMBER({},{})", self.precision, self.scale),
            "TEXT" => "VARCHAR".to_owned(),
            b => b.to_owned(),
        }
    }
}

impl SfType {
    /// A type holding the values of both (`NUMBER`s: the larger scale and
    /// the more integer digits, `VARCHAR` past 38 digits); of different base
    /// types, `newer`.
    fn union(&self, newer: &SfType) -> SfType {
        if self.base != newer.base || self.base != "NUMBER" {
            return newer.clone();
        }
        let scale = self.scale.max(newer.scale);
        let integer = self.precision.saturating_sub(self.scale).max(newer.precision.saturating_sub(newer.scale));
        if integer + scale > 38 {
            return SfType::of("TEXT", None, None);
        }
        SfType { base: "NUMBER".into(), precision: integer + scale, scale }
    }
}

/// What an existing column of type `current` needs to hold `wanted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retype {
    /// It holds every value of `wanted` already (the same, or wider).
    Keep,
    /// `ALTER COLUMN … SET DATA TYPE` (Snowflake: more precision, same scale).
    Widen,
    /// A new column with the values converted (other type, other scale).
    Rebuild,
}

fn retype(current: &SfType, wanted: &SfType) -> Retype {
    if current.base != wanted.base {
        return Retype::Rebuild;
    }
    if current.base != "NUMBER" {
        // Timestamp precisions and VARCHAR lengths are not narrowed by us.
        return Retype::Keep;
    }
    let integer_digits = |t: &SfType| t.precision.saturating_sub(t.scale);
    if current.scale >= wanted.scale && integer_digits(current) >= integer_digits(wanted) {
        Retype::Keep
    } else if current.scale == wanted.scale {
        Retype::Widen
    } else {
        Retype::Rebuild
    }
}

/// The expression converting `col` of type `from` to `to` (a rebuilt
/// column, or an older batch's value into a retyped column). It never
/// fails: a value that does not convert becomes NULL.
fn conversion(col: &str, from: &SfType, to: &SfType) -> String {
    match (from.base.as_str(), to.base.as_str()) {
        // Same base: `to` is a union of both (see `SfType::union`), so the cast fits.
        (f, t) if f == t => format!("CAST({col} AS {})", to.declared()),
        ("TEXT", "VARIANT") => format!("TRY_PARSE_JSON({col})"),
        (_, "VARIANT") => format!("TO_VARIANT({col})"),
        (_, "TEXT") => format!("TO_VARCHAR({col})"),
        ("TEXT", _) => format!("TRY_CAST({col} AS {})", to.declared()),
        // No direct cast between most other pairs (timestamp → number, binary → number…).
        _ => format!("TRY_CAST(TO_VARCHAR({col}) AS {})", to.declared()),
    }
}

/// A column the target table must have.
struct Wanted {
    name: String,
    earlier: Vec<String>,
    ty: SfType,
    /// Whether an existing column is retyped to `ty`.
    retype: bool,
}

/// Suffix of the column a rebuild fills before it replaces the old one.
const REBUILD_SUFFIX: &str = "__LABLAKE_RETYPE";

/// Staging table of one batch: deterministic, so a repeated COPY meets
/// its load history.
/// The generation of a curated key of `tenant`: `<tenant>/curated/…` is 0,
/// `<tenant>/g<N>/curated/…` is N; `None` for anything else.
fn generation_of_key(tenant: &str, key: &str) -> Option<u32> {
    let rest = key.strip_prefix(tenant)?.strip_prefix('/')?;
    if rest.starts_with("curated/") {
        return Some(0);
    }
    let (g, rest) = rest.split_once('/')?;
    let n: u32 = g.strip_prefix('g')?.parse().ok()?;
    (n > 0 && rest.starts_with("curated/")).then_some(n)
}

fn staging_table(table: &str, object_key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, object_key.as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02X}")).collect();
    format!("{}__STAGE_{hex}", table.to_uppercase())
}

/// Loads batches over one client session.
pub struct Loader {
    client: Client,
    cfg: LoaderConfig,
    /// `(database, schema)` whose database, schema, stage and ledger exist.
    prepared: HashSet<(String, String)>,
    /// Known columns and their types per `(database, schema, table)` (upper case).
    columns: HashMap<(String, String, String), HashMap<String, SfType>>,
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

    /// Loads the batch's files (see the module documentation). Safe to
    /// call again for the same files, or for files starting at the same
    /// first file, after any failure or crash.
    pub async fn load(&mut self, b: &Batch) -> Result<LoadOutcome, SnowflakeError> {
        let r = self.load_once(b).await;
        if r.is_err() {
            // What is known of the table may be stale now (a partial schema
            // step, a change made by hand): look again next time.
            let key =
                (self.database_of(&b.table.tenant), b.table.database.to_uppercase(), b.table.table.to_uppercase());
            self.columns.remove(&key);
        }
        r
    }

    async fn load_once(&mut self, b: &Batch) -> Result<LoadOutcome, SnowflakeError> {
        if b.primary_key.is_empty() {
            return Err(SnowflakeError::config(
                "primary_key",
                format!("{}.{} has no key to merge by", b.table.database, b.table.table),
            ));
        }
        // Snowflake identifiers are upper-cased here: `msg` and `MSG` would be one column.
        let mut seen = HashMap::new();
        for c in &b.columns {
            if let Some(other) = seen.insert(c.target.to_uppercase(), &c.target) {
                return Err(SnowflakeError::config(
                    "columns",
                    format!(
                        "{}.{}: columns `{other}` and `{}` are the same column in Snowflake (identifiers are upper-cased)",
                        b.table.database, b.table.table, c.target
                    ),
                ));
            }
        }
        let Some(first) = b.object_keys.first() else {
            return Err(SnowflakeError::config("object_keys", "a load needs at least one file".to_owned()));
        };
        let db = self.database_of(&b.table.tenant);
        let schema = b.table.database.to_uppercase();
        self.prepare(&b.table.tenant, &db, &schema).await?;
        let marks = vec!["?"; b.object_keys.len()].join(", ");
        let bindings: Vec<Binding> = b.object_keys.iter().cloned().map(Binding::Text).collect();
        let done = self
            .client
            .query(
                &format!("SELECT \"OBJECT_KEY\" AS K FROM \"_LABLAKE_LOADS\" WHERE \"OBJECT_KEY\" IN ({marks})"),
                &bindings,
            )
            .await?;
        let loaded: HashSet<String> =
            (0..done.rows.len()).filter_map(|i| done.get(i, "k").map(str::to_owned)).collect();
        if loaded.contains(first) {
            // A crash after the ledger insert may have left that load's staging table.
            let left = ident(&staging_table(&b.table.table, first));
            self.client.query(&format!("DROP TABLE IF EXISTS {left}"), &[]).await?;
        }
        let files: Vec<&String> = b.object_keys.iter().filter(|k| !loaded.contains(*k)).collect();
        let files_skipped = b.object_keys.len() - files.len();
        let Some(first) = files.first() else {
            return Ok(LoadOutcome { already_loaded: true, files_skipped, ..LoadOutcome::default() });
        };
        let stage = ident(&staging_table(&b.table.table, first));
        let target = ident(&b.table.table);
        self.sync_target(&db, &schema, &b.table.table, &b.columns).await?;
        // 2b. The batch's own staging table, with the file's columns and types.
        let defs: Vec<String> = b
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), staging_type(&c.ty)))
            .chain(STAGE_META.iter().map(|(n, t)| format!("{} {t}", ident(n))))
            .collect();
        self.client.query(&format!("CREATE TRANSIENT TABLE IF NOT EXISTS {stage} ({})", defs.join(", ")), &[]).await?;

        // 3. COPY these files (from the stage over their generation's
        // prefix); load history makes a repeat a no-op.
        let (lake_stage, prefix) = self.generation_stage(&b.table.tenant, &db, &schema, first).await?;
        let mut relative = Vec::with_capacity(files.len());
        for key in &files {
            let r = key
                .strip_prefix(&prefix)
                .ok_or_else(|| SnowflakeError::config("object_keys", format!("{key} is not under {prefix}")))?;
            relative.push(literal(r));
        }
        let copy = self
            .client
            .query(
                &format!(
                    "COPY INTO {stage} FROM @{lake_stage} FILES = ({}) FILE_FORMAT = (TYPE = PARQUET) \
                     MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE",
                    relative.join(", ")
                ),
                &[],
            )
            .await?;
        lablake_failpoint::failpoint("sink.after_copy");
        let staged =
            copy.rows.iter().filter_map(|r| r.get(3).cloned().flatten()).filter_map(|v| v.parse::<u64>().ok()).sum();

        // 4. A truncate in the batch: everything older goes. (The newest
        // commit time, for freshness, comes with it.)
        let t = self
            .client
            .query(
                &format!(
                    "SELECT MAX(IFF(\"_OP\" = 't', \"_POSITION\", NULL)) AS P, \
                     DATE_PART(EPOCH_MILLISECOND, MAX(\"_COMMIT_TS\")) AS TS FROM {stage}"
                ),
                &[],
            )
            .await?;
        let ts = t.get(0, "ts").and_then(|v| v.split('.').next()?.parse().ok());
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

        // 5. MERGE the newest change per key, position-guarded. Staging
        // columns have the file's names, target columns the newest ones.
        let cols: Vec<String> = b.columns.iter().map(|c| ident(&c.target)).collect();
        let target_of =
            |name: &str| b.columns.iter().find(|c| c.name == name).map_or_else(|| ident(name), |c| ident(&c.target));
        let keys: Vec<String> = b.primary_key.iter().map(|k| target_of(k)).collect();
        let staged_keys: Vec<String> = b.primary_key.iter().map(|k| ident(k)).collect();
        let types =
            self.columns.get(&(db.clone(), schema.clone(), b.table.table.to_uppercase())).cloned().unwrap_or_default();
        let mut select = Vec::new();
        for (c, col) in b.columns.iter().zip(&cols) {
            let src = ident(&c.name);
            let file_type = SfType::parse(&snowflake_type(&c.ty));
            let value = match types.get(&c.target.to_uppercase()) {
                // An older batch's value into a column since retyped.
                Some(to) if retype(to, &file_type) != Retype::Keep => {
                    conversion(&format!("st.{src}"), &SfType::parse(&staging_type(&c.ty)), to)
                }
                _ => match c.ty {
                    ColumnType::Json | ColumnType::Array => format!("PARSE_JSON(st.{src})"),
                    _ => format!("st.{src}"),
                },
            };
            if b.primary_key.contains(&c.name) {
                select.push(format!("st.{src} AS {col}"));
            } else {
                // A value the source did not send (unchanged TOAST) keeps the target's.
                let name = c.name.to_uppercase().replace('\\', "\\\\").replace('\'', "''");
                select.push(format!(
                    "IFF(CONTAINS(',' || UPPER(COALESCE(st.\"_UNCHANGED\", '')) || ',', ',{name},'), tg.{col}, {value}) AS {col}"
                ));
            }
        }
        for meta in ["\"_OP\"", "\"_POSITION\"", "\"_COMMIT_TS\""] {
            select.push(format!("st.{meta}"));
        }
        let join: Vec<String> = staged_keys.iter().zip(&keys).map(|(s, k)| format!("st.{s} = tg.{k}")).collect();
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
        let staged_rows = format!("st.\"_OP\" <> 't'{after_truncate}");
        let merge = format!(
            "MERGE INTO {target} t USING (SELECT {select} FROM {stage} st LEFT JOIN {target} tg ON {join} \
             WHERE {staged_rows} QUALIFY ROW_NUMBER() OVER (PARTITION BY {pk} ORDER BY st.\"_POSITION\" DESC) = 1) s \
             ON {on} \
             WHEN MATCHED AND s.\"_POSITION\" > t.\"_POSITION\" AND s.\"_OP\" = 'd' THEN {delete} \
             WHEN MATCHED AND s.\"_POSITION\" > t.\"_POSITION\" THEN UPDATE SET {set}{soft_set} \
             WHEN NOT MATCHED{insert_when} THEN INSERT ({all}{soft_cols}) VALUES ({values}{soft_vals})",
            select = select.join(", "),
            join = join.join(" AND "),
            pk = staged_keys.iter().map(|k| format!("st.{k}")).collect::<Vec<_>>().join(", "),
            on = on.join(" AND "),
            set = set.join(", "),
            all = all.join(", "),
            values = values.join(", "),
            soft_cols = soft_insert.0,
            soft_vals = soft_insert.1,
        );
        let m = self.client.query(&merge, &[]).await?;
        // 6. Only now are the files done: all of them in one statement.
        let table_name = format!("{schema}.{}", b.table.table.to_uppercase());
        let rows = vec!["SELECT ?, ?, CURRENT_TIMESTAMP()"; files.len()].join(" UNION ALL ");
        let bindings: Vec<Binding> =
            files.iter().flat_map(|k| [Binding::Text((*k).clone()), Binding::Text(table_name.clone())]).collect();
        self.client
            .query(
                &format!("INSERT INTO \"_LABLAKE_LOADS\" (\"OBJECT_KEY\", \"TABLE_NAME\", \"LOADED_AT\") {rows}"),
                &bindings,
            )
            .await?;
        self.client.query(&format!("DROP TABLE IF EXISTS {stage}"), &[]).await?;
        Ok(LoadOutcome {
            already_loaded: false,
            files_skipped,
            staged,
            inserted: count(&m, "number of rows inserted"),
            updated: count(&m, "number of rows updated"),
            deleted: deleted + count(&m, "number of rows deleted"),
            max_commit_ts_ms: ts,
        })
    }

    /// An external stage `name` over `<lake>/<prefix>` in the current schema.
    async fn create_stage(&mut self, name: &str, prefix: &str, tenant: &str) -> Result<(), SnowflakeError> {
        let credentials = match &self.cfg.storage_integration {
            Some(i) => format!(" STORAGE_INTEGRATION = {}", ident(i)),
            None => String::new(),
        };
        let url = format!("{}/{prefix}", self.cfg.lake_url.replace("{tenant}", tenant).trim_end_matches('/'));
        let stage = format!("CREATE STAGE IF NOT EXISTS {name} URL = {}{credentials}", literal(&url));
        match self.client.query(&stage, &[]).await {
            // The emulator answers "already exists" despite IF NOT EXISTS.
            Err(SnowflakeError::Query { code, .. }) if code == "002002" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The stage a curated file is copied from, and the key prefix it is
    /// over: `LABLAKE_LAKE` over `<tenant>/curated/` (generation 0), or
    /// `LABLAKE_LAKE_G<N>` over `<tenant>/g<N>/curated/` (ADR 0013), created
    /// on first use.
    async fn generation_stage(
        &mut self,
        tenant: &str,
        db: &str,
        schema: &str,
        key: &str,
    ) -> Result<(String, String), SnowflakeError> {
        let Some(data_gen) = generation_of_key(tenant, key) else {
            return Err(SnowflakeError::config("object_keys", format!("{key} is not a curated file of {tenant}")));
        };
        if data_gen == 0 {
            return Ok(("LABLAKE_LAKE".into(), format!("{tenant}/curated/")));
        }
        let (name, prefix) = (format!("LABLAKE_LAKE_G{data_gen}"), format!("{tenant}/g{data_gen}/curated/"));
        let key = (db.to_owned(), format!("{schema}.{name}"));
        if !self.prepared.contains(&key) {
            self.create_stage(&name, &prefix, tenant).await?;
            self.prepared.insert(key);
        }
        Ok((name, prefix))
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
            self.create_stage("LABLAKE_LAKE", &format!("{tenant}/curated/"), tenant).await?;
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

    /// Makes the target table have every column of the batch under its
    /// newest name and able to hold its newest type (and the metadata
    /// columns): creates the table, renames columns still under an earlier
    /// name, adds new ones, widens or rebuilds ones whose type changed.
    /// Every step is decided from the table as it is, so running this again
    /// after a crash anywhere in it finishes the job.
    async fn sync_target(
        &mut self,
        db: &str,
        schema: &str,
        table: &str,
        columns: &[BatchColumn],
    ) -> Result<(), SnowflakeError> {
        let key = (db.to_owned(), schema.to_owned(), table.to_uppercase());
        let wanted: Vec<Wanted> = columns
            .iter()
            .map(|c| Wanted {
                name: c.target.to_uppercase(),
                earlier: c.earlier.iter().map(|n| n.to_uppercase()).collect(),
                // The newest type, widened to hold this file's values too.
                ty: match &c.target_ty {
                    Some(newest) => {
                        SfType::parse(&snowflake_type(&c.ty)).union(&SfType::parse(&snowflake_type(newest)))
                    }
                    None => SfType::parse(&snowflake_type(&c.ty)),
                },
                retype: c.target_ty.is_some(),
            })
            .chain(TARGET_META.iter().map(|(n, t)| Wanted {
                name: (*n).to_owned(),
                earlier: Vec::new(),
                ty: SfType::parse(t),
                retype: false,
            }))
            .chain(self.cfg.soft_delete_column.iter().map(|f| Wanted {
                name: f.to_uppercase(),
                earlier: Vec::new(),
                ty: SfType::parse("BOOLEAN"),
                retype: false,
            }))
            .collect();
        let settled = |known: &HashMap<String, SfType>| {
            wanted.iter().all(|w| known.get(&w.name).is_some_and(|t| !w.retype || retype(t, &w.ty) == Retype::Keep))
        };
        if self.columns.get(&key).is_some_and(settled) {
            return Ok(());
        }
        let t = ident(table);
        let defs: Vec<String> = wanted.iter().map(|w| format!("{} {}", ident(&w.name), w.ty.declared())).collect();
        self.client.query(&format!("CREATE TABLE IF NOT EXISTS {t} ({})", defs.join(", ")), &[]).await?;
        let mut known = self.existing_columns(db, schema, table).await?;
        let log = |what: &str, column: &str, detail: String| {
            tracing::info!(database = db, schema, table, column, detail, "snowflake schema sync: {what}");
        };
        // An interrupted rebuild (whatever the column is called now): the
        // old column is intact until it is dropped, after which only the
        // rename was left.
        let leftovers: Vec<String> = known.keys().filter(|k| k.ends_with(REBUILD_SUFFIX)).cloned().collect();
        for tmp in leftovers {
            let base = tmp.trim_end_matches(REBUILD_SUFFIX).to_owned();
            let Some(ty) = known.remove(&tmp) else { continue };
            match known.entry(base) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    self.client.query(&format!("ALTER TABLE {t} DROP COLUMN {}", ident(&tmp)), &[]).await?;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    log("finishing an interrupted rebuild", v.key(), ty.declared());
                    self.client
                        .query(&format!("ALTER TABLE {t} RENAME COLUMN {} TO {}", ident(&tmp), ident(v.key())), &[])
                        .await?;
                    v.insert(ty);
                }
            }
        }
        // Renames first: a new column may reuse a renamed column's old name.
        for w in &wanted {
            if known.contains_key(&w.name) {
                continue;
            }
            if let Some(old) = w.earlier.iter().find(|e| known.contains_key(*e)) {
                log("renaming column", &w.name, format!("from {old}"));
                self.client
                    .query(&format!("ALTER TABLE {t} RENAME COLUMN {} TO {}", ident(old), ident(&w.name)), &[])
                    .await?;
                if let Some(ty) = known.remove(old) {
                    known.insert(w.name.clone(), ty);
                }
            }
        }
        for w in &wanted {
            if !known.contains_key(&w.name) {
                log("adding column", &w.name, w.ty.declared());
                self.client
                    .query(&format!("ALTER TABLE {t} ADD COLUMN {} {}", ident(&w.name), w.ty.declared()), &[])
                    .await?;
                known.insert(w.name.clone(), w.ty.clone());
            }
        }
        for w in wanted.iter().filter(|w| w.retype) {
            let Some(current) = known.get(&w.name).cloned() else { continue };
            let col = ident(&w.name);
            // Never narrower than what the column holds now.
            let to = current.union(&w.ty);
            match retype(&current, &to) {
                Retype::Keep => continue,
                Retype::Widen => {
                    log("widening column", &w.name, format!("{} -> {}", current.declared(), to.declared()));
                    self.client
                        .query(&format!("ALTER TABLE {t} ALTER COLUMN {col} SET DATA TYPE {}", to.declared()), &[])
                        .await?;
                }
                Retype::Rebuild => {
                    log("rebuilding column", &w.name, format!("{} -> {}", current.declared(), to.declared()));
                    let tmp = ident(&format!("{}{REBUILD_SUFFIX}", w.name));
                    self.client.query(&format!("ALTER TABLE {t} ADD COLUMN {tmp} {}", to.declared()), &[]).await?;
                    lablake_failpoint::failpoint("sink.rebuild_after_add");
                    self.client
                        .query(&format!("UPDATE {t} SET {tmp} = {}", conversion(&col, &current, &to)), &[])
                        .await?;
                    self.client.query(&format!("ALTER TABLE {t} DROP COLUMN {col}"), &[]).await?;
                    lablake_failpoint::failpoint("sink.rebuild_after_drop");
                    self.client.query(&format!("ALTER TABLE {t} RENAME COLUMN {tmp} TO {col}"), &[]).await?;
                }
            }
            known.insert(w.name.clone(), to);
        }
        self.columns.insert(key, known);
        Ok(())
    }

    /// Columns of a table and their types.
    async fn existing_columns(
        &mut self,
        db: &str,
        schema: &str,
        table: &str,
    ) -> Result<HashMap<String, SfType>, SnowflakeError> {
        let r = self
            .client
            .query(
                &format!(
                    "SELECT COLUMN_NAME AS C, DATA_TYPE AS T, NUMERIC_PRECISION AS P, NUMERIC_SCALE AS S \
                     FROM {}.INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                    ident(db)
                ),
                &[Binding::Text(schema.to_owned()), Binding::Text(table.to_uppercase())],
            )
            .await?;
        let cell = |row: &[Option<String>], i: usize| row.get(i).cloned().flatten();
        Ok(r.rows
            .iter()
            .filter_map(|row| {
                let name = cell(row, 0)?;
                let num = |i| cell(row, i).and_then(|v| v.parse().ok());
                Some((name, SfType::of(&cell(row, 1).unwrap_or_default(), num(2), num(3))))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_curated_key_names_its_generation() {
        assert_eq!(generation_of_key("acme", "acme/curated/lab/results/dt=2026-01-01/f.parquet"), Some(0));
        assert_eq!(generation_of_key("acme", "acme/g12/curated/lab/results/dt=2026-01-01/f.parquet"), Some(12));
        assert_eq!(generation_of_key("acme", "acme/g0/curated/x"), None);
        assert_eq!(generation_of_key("acme", "acme/gx/curated/x"), None);
        assert_eq!(generation_of_key("acme", "acmex/curated/x"), None);
        assert_eq!(generation_of_key("acme", "other/curated/x"), None);
        assert_eq!(generation_of_key("acme", "acme/g1/transformed/x"), None);
    }

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
        assert_eq!(SfType::parse("VARCHAR"), SfType::of("TEXT", None, None));
        assert_eq!(SfType::parse("NUMBER(12,2)").declared(), "NUMBER(12,2)");
        assert_eq!(SfType::parse("TIMESTAMP_TZ(6)"), SfType::of("TIMESTAMP_TZ", None, None));
        assert_eq!(literal("a'b\\"), "'a''b\\\\'");
    }

    #[test]
    fn retype_widens_in_place_only_where_snowflake_can() {
        let t = SfType::parse;
        assert_eq!(retype(&t("NUMBER(10,0)"), &t("NUMBER(19,0)")), Retype::Widen);
        assert_eq!(retype(&t("NUMBER(19,0)"), &t("NUMBER(10,0)")), Retype::Keep);
        assert_eq!(retype(&t("NUMBER(12,2)"), &t("NUMBER(14,2)")), Retype::Widen);
        // A finer scale cannot be set in place.
        assert_eq!(retype(&t("NUMBER(12,2)"), &t("NUMBER(14,4)")), Retype::Rebuild);
        // A wider column holds a narrower type.
        assert_eq!(retype(&t("NUMBER(20,4)"), &t("NUMBER(12,2)")), Retype::Keep);
        assert_eq!(retype(&t("NUMBER(10,0)"), &t("VARCHAR")), Retype::Rebuild);
        assert_eq!(retype(&t("TEXT"), &t("VARCHAR")), Retype::Keep);
        assert_eq!(retype(&t("TIMESTAMP_NTZ(9)"), &t("TIMESTAMP_NTZ(6)")), Retype::Keep);
        assert_eq!(retype(&t("TIMESTAMP_NTZ"), &t("TIMESTAMP_TZ(6)")), Retype::Rebuild);
        assert_eq!(conversion("\"C\"", &t("VARCHAR"), &t("NUMBER(10,0)")), "TRY_CAST(\"C\" AS NUMBER(10,0))");
        assert_eq!(conversion("\"C\"", &t("NUMBER(10,2)"), &t("NUMBER(10,4)")), "CAST(\"C\" AS NUMBER(10,4))");
        assert_eq!(conversion("\"C\"", &t("VARCHAR"), &t("VARIANT")), "TRY_PARSE_JSON(\"C\")");
        assert_eq!(conversion("\"C\"", &t("NUMBER(10,0)"), &t("VARCHAR")), "TO_VARCHAR(\"C\")");
        assert_eq!(
            conversion("\"C\"", &t("TIMESTAMP_NTZ(6)"), &t("NUMBER(19,0)")),
            "TRY_CAST(TO_VARCHAR(\"C\") AS NUMBER(19,0))"
        );
        // Unions hold both sides; narrowing never happens.
        assert_eq!(t("NUMBER(12,4)").union(&t("NUMBER(12,2)")).declared(), "NUMBER(14,4)");
        assert_eq!(t("NUMBER(19,0)").union(&t("NUMBER(12,4)")).declared(), "NUMBER(23,4)");
        assert_eq!(t("NUMBER(10,0)").union(&t("NUMBER(19,0)")).declared(), "NUMBER(19,0)");
        assert_eq!(t("NUMBER(38,0)").union(&t("NUMBER(10,6)")).declared(), "VARCHAR");
        assert_eq!(t("NUMBER(10,0)").union(&t("VARCHAR")).declared(), "VARCHAR");
        assert_eq!(t("VARCHAR").union(&t("NUMBER(10,0)")).declared(), "NUMBER(10,0)");
    }

    #[test]
    fn staging_tables_are_per_batch_and_deterministic() {
        let a = staging_table("orders", "acme/curated/lab/orders/v1/p0-000001.parquet");
        assert_eq!(a, staging_table("orders", "acme/curated/lab/orders/v1/p0-000001.parquet"));
        assert_ne!(a, staging_table("orders", "acme/curated/lab/orders/v1/p0-000002.parquet"));
        assert!(a.starts_with("ORDERS__STAGE_") && a.len() == "ORDERS__STAGE_".len() + 16, "{a}");
    }
}
