//! The warehouse stage: curated batches → one Snowflake database per tenant.
//!
//! Per table, in manifest order (topic, partition, first offset), the
//! batches the sink checkpoint does not cover are loaded with
//! [`lablake_snowflake::Loader`] (staged COPY, position-guarded MERGE, load
//! ledger), several files per load (up to `max_files_per_load` files and
//! `max_rows_per_load` rows, consecutive files of one layout), and only then
//! the checkpoint advances past them (DynamoDB, conditional on the sink's
//! lease). A crash anywhere repeats at most the last load, which the loader
//! makes harmless. Failures (wrong credentials, unreachable
//! endpoint) are logged with the tenant and the endpoint and retried with
//! backoff; nothing is skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lablake_checkpoint::{
    BatchStore, GenerationStore, LeaseName, LeaseStore, SchemaStore, SchemaVersion, SinkCheckpoint, SinkStore,
    column_lineage,
};
use lablake_lake::Lake;
use lablake_model::{ColumnType, TableId};
use lablake_snowflake::{Batch, BatchColumn, Client, Loader, LoaderConfig, SnowflakeConfig};
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::{Context, PipelineError};
use crate::metrics;

/// What the sink stage reads and writes in the checkpoint store.
pub trait SinkStores: LeaseStore + BatchStore + SchemaStore + SinkStore + GenerationStore {}
impl<T: LeaseStore + BatchStore + SchemaStore + SinkStore + GenerationStore> SinkStores for T {}

/// The sink's name in checkpoints and leases.
pub const SINK: &str = "snowflake";

/// `[snowflake]`: the warehouse sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// `[snowflake.connection]`: account, user, credentials, base URL.
    pub connection: SnowflakeConfig,
    /// Database of tenant `acme` = `<database_prefix>ACME`.
    #[serde(default = "default_prefix")]
    pub database_prefix: String,
    /// Storage integration of the external stages over the lake (production).
    #[serde(default)]
    pub storage_integration: Option<String>,
    /// Soft deletes: set this BOOLEAN column instead of deleting rows.
    #[serde(default)]
    pub soft_delete_column: Option<String>,
    /// How often new curated batches are looked for.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Only these tenants (empty: all).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Most curated files one load (one COPY, one MERGE) takes (1–1000,
    /// Snowflake's limit for a COPY's file list).
    #[serde(default = "default_max_files")]
    pub max_files_per_load: usize,
    /// Most rows one load takes (a single file larger than this loads alone).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_load: u64,
}

impl SinkConfig {
    /// Checks the load bounds and the connection settings; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=1000).contains(&self.max_files_per_load) {
            return Err(("snowflake.max_files_per_load".into(), "must be between 1 and 1000".into()));
        }
        if self.max_rows_per_load == 0 {
            return Err(("snowflake.max_rows_per_load".into(), "must be at least 1".into()));
        }
        self.connection.validate().map_err(|e| match e {
            lablake_snowflake::SnowflakeError::Config { key, reason } => {
                (format!("snowflake.connection.{key}"), reason)
            }
            other => ("snowflake.connection".into(), other.to_string()),
        })
    }
}

fn default_prefix() -> String {
    "LABLAKE_".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_max_files() -> usize {
    100
}
fn default_max_rows() -> u64 {
    1_000_000
}

/// Columns and key of a curated file, from its Parquet schema, and the
/// schema version it was written with.
/// A curated file's columns, primary key and schema version.
type Layout = (Vec<BatchColumn>, Vec<String>, Option<u32>);

fn batch_layout(bytes: bytes::Bytes) -> Result<Layout, PipelineError> {
    let batches = lablake_lake::decode_parquet(bytes)?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| PipelineError::Invariant("curated file without rows".into()))?;
    let mut columns = Vec::new();
    for f in schema.fields() {
        if f.name().starts_with('_') {
            continue;
        }
        let ty: ColumnType = f
            .metadata()
            .get("lablake.type")
            .ok_or_else(|| PipelineError::Invariant(format!("column `{}` has no lablake.type", f.name())))?
            .parse()
            .map_err(|e| PipelineError::Invariant(format!("column `{}`: lablake.type: {e}", f.name())))?;
        columns.push(BatchColumn::new(f.name().clone(), ty));
    }
    let pk = schema
        .metadata()
        .get("lablake.primary_key")
        .map(|k| k.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let version = schema.metadata().get("lablake.schema_version").and_then(|v| v.parse().ok());
    Ok((columns, pk, version))
}

/// Points the batch's columns at their newest names and types in the
/// table's schema history, so Snowflake follows renames and type changes
/// at the source (and a batch written before a rename loads into the
/// renamed column). Without a known version the columns load as they are,
/// and existing column types are left alone. A column dropped since whose
/// name another column has now (a reused name) loads into `<name>__DROPPED`
/// instead of mixing with it.
fn follow_history(
    columns: &mut [BatchColumn],
    history: &[SchemaVersion],
    version: Option<u32>,
) -> Result<(), PipelineError> {
    let Some(v) = version.filter(|v| history.iter().any(|h| h.version == *v)) else {
        for c in columns.iter_mut() {
            c.target_ty = None;
        }
        return Ok(());
    };
    let mut dropped = Vec::new();
    for (i, c) in columns.iter_mut().enumerate() {
        let lineage = column_lineage(history, v, &c.name);
        c.target = lineage.current;
        c.earlier = lineage.earlier;
        c.target_ty = match lineage.current_type {
            Some(t) => Some(
                t.parse()
                    .map_err(|e| PipelineError::Invariant(format!("schema history type of `{}`: {e}", c.target)))?,
            ),
            None => None,
        };
        if lineage.dropped_later {
            dropped.push(i);
        }
    }
    let upper = |n: &str| n.to_uppercase();
    let mut taken: std::collections::HashSet<String> = history
        .last()
        .filter(|h| !h.is_drop())
        .map(|h| h.columns.iter().map(|c| upper(&c.name)).collect())
        .unwrap_or_default();
    taken.extend(columns.iter().enumerate().filter(|(i, _)| !dropped.contains(i)).map(|(_, c)| upper(&c.target)));
    for i in dropped {
        let c = &mut columns[i];
        if taken.contains(&upper(&c.target)) {
            c.target = format!("{}__DROPPED", c.target);
            c.earlier.clear();
            c.target_ty = None;
        }
    }
    Ok(())
}

/// Runs the sink until `shutdown` turns true.
pub async fn run_sink<S: SinkStores + 'static>(
    cfg: SinkConfig,
    lake: Lake,
    bucket: String,
    store: Arc<S>,
    mut shutdown: watch::Receiver<bool>,
    lease: crate::supervise::LeaseHeld,
) -> Result<(), PipelineError> {
    let Some(generation) =
        lease.acquire(store.as_ref(), &LeaseName::sink(SINK)).await.context("acquiring the sink lease")?
    else {
        return Ok(());
    };
    let client = Client::new(cfg.connection.clone())?;
    let endpoint = client.endpoint().to_owned();
    tracing::info!(endpoint, generation, "snowflake sink started");
    let mut loader = Loader::new(
        client,
        LoaderConfig {
            database_prefix: cfg.database_prefix.clone(),
            lake_url: format!("s3://{bucket}/"),
            storage_integration: cfg.storage_integration.clone(),
            soft_delete_column: cfg.soft_delete_column.clone(),
        },
    );
    let mut failures = 0u32;
    let mut held = HashMap::new();
    let lease = LeaseName::sink(SINK);
    let mut renew = tokio::time::interval(crate::supervise::LEASE_CHECK);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'passes: loop {
        let pass = load_new_batches(&cfg, &lake, store.as_ref(), generation, &mut loader, &endpoint, &mut held);
        tokio::pin!(pass);
        // The lease is renewed while a pass runs (one can take minutes): a
        // standby takes over a lease not renewed for its ttl, and a sink woken
        // after a successor took over may find nothing left to load, and so
        // never meet its fence in a checkpoint write.
        let outcome = loop {
            tokio::select! {
                _ = shutdown.changed() => break None,
                r = &mut pass => break Some(r),
                _ = renew.tick() => {
                    if let Err(e) = crate::supervise::still_held(store.as_ref(), &lease, generation).await {
                        break Some(Err(e));
                    }
                }
            }
        };
        let Some(outcome) = outcome else { break };
        let wait = {
            match outcome {
                Ok(()) => {
                    failures = 0;
                    cfg.interval
                }
                Err(e) if e.is_fenced() => {
                    return Err(e.within_context("another sink took over".into()));
                }
                Err(e) => {
                    failures += 1;
                    let wait = lablake_snowflake::backoff(Duration::from_secs(1), failures.min(6));
                    tracing::warn!(error = %crate::supervise::chain(&e), retry_in_s = wait.as_secs(), "snowflake load failed; retrying");
                    metrics::SINK_FAILURES.inc();
                    wait
                }
            }
        };
        let until = tokio::time::sleep(wait);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break 'passes,
                _ = &mut until => break,
                _ = renew.tick() => {
                    if let Err(e) = crate::supervise::still_held(store.as_ref(), &lease, generation).await {
                        return Err(e.within_context("another sink took over".into()));
                    }
                }
            }
        }
    }
    tracing::info!("snowflake sink stopped");
    Ok(())
}

/// One pass over every table; tables whose last load failed wait out their
/// backoff in `held` (table → failures, retry time).
async fn load_new_batches<S: SinkStores>(
    cfg: &SinkConfig,
    lake: &Lake,
    store: &S,
    generation: u64,
    loader: &mut Loader,
    endpoint: &str,
    held: &mut HashMap<TableId, (u32, Instant)>,
) -> Result<(), PipelineError> {
    // Every tenant starts in generation 0, so its status rows list every
    // tenant; each is loaded from its active generation (ADR 0013), whose
    // manifest and sink checkpoints are its own.
    let rows = store.status(None).await?;
    let tenants: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    let mut work = Vec::new();
    for tenant in tenants {
        if !cfg.tenants.is_empty() && !cfg.tenants.iter().any(|t| t == tenant) {
            continue;
        }
        let data_gen = store.load_generations(tenant).await?.active;
        let scoped = store.in_generation(data_gen);
        let tables: Vec<TableId> = if data_gen == store.data_generation() {
            rows.iter().filter(|r| r.tenant == tenant).map(|r| TableId::new(&r.tenant, &r.database, &r.table)).collect()
        } else {
            scoped.status(Some(tenant)).await?.iter().map(|r| TableId::new(&r.tenant, &r.database, &r.table)).collect()
        };
        work.push((scoped, tables));
    }
    for (scoped, tables) in &work {
        for table in tables {
            if *table.table == *"*" {
                continue;
            }
            let table = table.clone();
            if held.get(&table).is_some_and(|(_, until)| Instant::now() < *until) {
                continue;
            }
            match load_table(cfg, scoped, lake, generation, loader, endpoint, &table).await {
                Ok(()) => {
                    held.remove(&table);
                }
                Err(e) if e.is_fenced() => return Err(e),
                // One table's trouble (a value Snowflake refuses, a schema step
                // that fails) holds back only that table, with its own backoff.
                Err(e) => {
                    let failures = held.get(&table).map_or(0, |(n, _)| *n) + 1;
                    let wait = lablake_snowflake::backoff(Duration::from_secs(1), failures.min(6));
                    tracing::warn!(table = %table, error = %crate::supervise::chain(&e), retry_in_s = wait.as_secs(),
                    "snowflake load failed; retrying");
                    metrics::SINK_FAILURES.inc();
                    held.insert(table, (failures, Instant::now() + wait));
                }
            }
        }
    }
    Ok(())
}

/// A curated file's layout with its columns pointed at their newest names
/// (see [`follow_history`]); `history` is read again when the file names a
/// version it does not have.
async fn layout_of<S: SinkStores>(
    store: &S,
    lake: &Lake,
    table: &TableId,
    object_key: &str,
    history: &mut Vec<SchemaVersion>,
) -> Result<(Vec<BatchColumn>, Vec<String>), PipelineError> {
    let (mut columns, primary_key, version) = batch_layout(lake.get(&table.tenant, object_key).await?)
        .with_context(|| format!("reading curated file {object_key}"))?;
    if version.is_some_and(|v| !history.iter().any(|h| h.version == v)) {
        *history = store.schema_history(table).await?;
    }
    follow_history(&mut columns, history, version)?;
    Ok((columns, primary_key))
}

/// Loads every batch of one table the sink checkpoint does not cover, in
/// manifest order, several per load, advancing the checkpoint after each
/// load.
async fn load_table<S: SinkStores>(
    cfg: &SinkConfig,
    store: &S,
    lake: &Lake,
    generation: u64,
    loader: &mut Loader,
    endpoint: &str,
    table: &TableId,
) -> Result<(), PipelineError> {
    let (tenant, table_name) = (&*table.tenant, &*table.table);
    let mut cp = store.load_sink(SINK, table).await?.unwrap_or_else(|| SinkCheckpoint::new(table));
    let entries: Vec<_> = store
        .manifest(table)
        .await?
        .into_iter()
        .filter(|e| !cp.has_loaded(&e.topic, e.partition, e.first_offset))
        .collect();
    // Read once per pass and table (and again when a batch names a newer version).
    let mut history: Vec<SchemaVersion> = Vec::new();
    // The layout of the file that ended the previous load (it starts the next).
    let mut next_layout = None;
    let mut i = 0;
    while i < entries.len() {
        let (columns, primary_key) = match next_layout.take() {
            Some(l) => l,
            None => layout_of(store, lake, table, &entries[i].object_key, &mut history).await?,
        };
        // Consecutive files of the same layout, within the load's budget.
        let mut end = i + 1;
        let mut rows = entries[i].rows;
        while end < entries.len()
            && end - i < cfg.max_files_per_load
            && rows + entries[end].rows <= cfg.max_rows_per_load
        {
            let l = layout_of(store, lake, table, &entries[end].object_key, &mut history).await?;
            if l.0 != columns || l.1 != primary_key {
                next_layout = Some(l);
                break;
            }
            rows += entries[end].rows;
            end += 1;
        }
        let group = &entries[i..end];
        let batch = Batch {
            table: table.clone(),
            columns,
            primary_key,
            object_keys: group.iter().map(|e| e.object_key.clone()).collect(),
        };
        let out = loader.load(&batch).await.with_context(|| format!("loading {table} into {endpoint}"))?;
        for e in group {
            cp.next.insert(format!("{}#{}", e.topic, e.partition), e.last_offset + 1);
            cp.files += 1;
            cp.rows += e.rows;
        }
        if let Some(ts) = out.max_commit_ts_ms {
            cp.max_commit_ts_ms = cp.max_commit_ts_ms.max(ts);
        }
        cp.updated_ms = metrics::now_ms();
        lablake_failpoint::failpoint("sink.after_merge");
        // Only after the MERGE: a crash before this repeats the load harmlessly.
        store.save_sink(SINK, generation, &cp).await?;
        let labels = [tenant, table_name];
        metrics::SINK_BATCHES.with_label_values(&labels).inc_by(group.len() as u64);
        metrics::SINK_LOADS.with_label_values(&labels).inc();
        metrics::SINK_ROWS.with_label_values(&labels).inc_by(out.inserted + out.updated + out.deleted);
        if cp.max_commit_ts_ms > 0 {
            metrics::SINK_LAG.with_label_values(&labels).set(metrics::now_secs() - cp.max_commit_ts_ms as f64 / 1000.0);
        }
        tracing::debug!(tenant = %tenant, table = %table_name, files = group.len(), first = %group[0].object_key,
            skipped = out.files_skipped, staged = out.staged, inserted = out.inserted, updated = out.updated,
            deleted = out.deleted, "batches loaded into snowflake");
        i = end;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lablake_model::{Column, TableSchema};

    fn version(n: u32, cols: &[&str], prev: Option<&SchemaVersion>) -> SchemaVersion {
        let columns = cols
            .iter()
            .map(|c| Column { name: (*c).into(), ty: ColumnType::Int { bytes: 4, unsigned: false }, nullable: true })
            .collect();
        let mut v = SchemaVersion::of(&TableSchema::new(columns, vec![0]), "p", 0);
        v.version = n;
        if let Some(p) = prev {
            v.changes = v.changes_from(p);
        }
        v
    }

    #[test]
    fn a_dropped_column_whose_name_was_reused_loads_beside_it() {
        // v1 {id, a, b}; v2 drops b; v3 renames a to b.
        let v1 = version(1, &["id", "a", "b"], None);
        let v2 = version(2, &["id", "a"], Some(&v1));
        let v3 = version(3, &["id", "b"], Some(&v2));
        let history = vec![v1, v2, v3];
        let int = ColumnType::Int { bytes: 4, unsigned: false };
        let mut cols: Vec<BatchColumn> = ["id", "a", "b"].iter().map(|n| BatchColumn::new(*n, int.clone())).collect();
        follow_history(&mut cols, &history, Some(1)).unwrap();
        let targets: Vec<&str> = cols.iter().map(|c| c.target.as_str()).collect();
        assert_eq!(targets, ["id", "b", "b__DROPPED"]);
        assert_eq!(cols[1].earlier, ["a"]);
        assert!(cols[2].target_ty.is_none());
        // Unknown version: as they are, types left alone.
        let mut cols: Vec<BatchColumn> = ["id", "a"].iter().map(|n| BatchColumn::new(*n, int.clone())).collect();
        follow_history(&mut cols, &history, Some(9)).unwrap();
        assert_eq!(cols[1].target, "a");
        assert!(cols.iter().all(|c| c.target_ty.is_none()));
    }
}
