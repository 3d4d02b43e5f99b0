//! The source stage: any [`Connector`]'s change stream → Kafka, with its
//! snapshot workers beside it.
//!
//! Every record's delivery and every transaction-end position go into one
//! bounded acknowledgement queue, in order; a position is saved to the
//! checkpoint store only after Kafka acknowledged everything before it, and
//! only then is the source's [`SavedHook`] told (a PostgreSQL slot learns
//! the LSN as flushed). A restart resumes from the saved position, so
//! delivery is at-least-once with the same `(key, position)` for a
//! re-delivered change. The stage is generic: MySQL and PostgreSQL differ
//! only in their [`Connector`] implementation and their [`SourceConfig`]
//! variant.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::supervise::LeaseHeld;
use lablake_bus::{BusConfig, ChangeProducer, Sent, UnresolvedPayload, ack_queue};
use lablake_checkpoint::{CheckpointStore, LeaseName, SchemaStore, SchemaVersion, SourceCheckpoint};
use lablake_model::tenant::UNRESOLVED_TENANT;
use lablake_model::{ChangeEvent, Op, TableId, TableSchema};
use lablake_mysql::MysqlSourceConfig;
use lablake_postgres::PgSourceConfig;
use lablake_source::{ChangeSource, Connector, SavedHook, SourceItem, Unresolved, UnresolvedRow};
use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::{Context, PipelineError};
use crate::lane::Lanes;
use crate::{metrics, snapshot};

/// How often acknowledged positions are saved.
const SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// `[[sources]]`: one source, its kind named by `kind`. Adding a source kind
/// is a variant here plus the connector's [`Connector`] implementation.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// `kind = "mysql"`: a MySQL or MariaDB server's binlog.
    Mysql(MysqlSourceConfig),
    /// `kind = "postgres"`: a PostgreSQL logical replication slot (pgoutput).
    Postgres(PgSourceConfig),
}

impl SourceConfig {
    /// The configured name (checkpoints and leases are keyed by it).
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Mysql(c) => &c.name,
            SourceConfig::Postgres(c) => &c.name,
        }
    }

    /// Checks what the types cannot: URL scheme and user, tenant rule,
    /// filters. The error names the key below `key` (e.g. `sources[0]`).
    pub fn validate(&self, key: &str) -> Result<(), (String, String)> {
        let (url, schemes, decoder) = match self {
            SourceConfig::Mysql(c) => {
                (c.url.expose_secret(), &["mysql"][..], c.decoder_config().err().map(|e| e.to_string()))
            }
            SourceConfig::Postgres(c) => (
                c.url.expose_secret(),
                &["postgres", "postgresql"][..],
                c.decoder_config().err().map(|e| e.to_string()),
            ),
        };
        if let Some(reason) = decoder {
            return Err((key.to_owned(), reason));
        }
        let url = url::Url::parse(url).map_err(|e| (format!("{key}.url"), format!("not a URL: {e}")))?;
        if !schemes.contains(&url.scheme()) {
            let want: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            return Err((format!("{key}.url"), format!("scheme must be {}", want.join(" or "))));
        }
        if url.username().is_empty() {
            return Err((format!("{key}.url"), "missing credentials: the URL has no user".into()));
        }
        Ok(())
    }

    /// The tables the source captures now, with their tenants (tables shared
    /// by tenants through a tenant column are listed for none).
    pub async fn tables(&self) -> Result<Vec<TableId>, PipelineError> {
        match self {
            SourceConfig::Mysql(c) => tables_of(c).await,
            SourceConfig::Postgres(c) => tables_of(c).await,
        }
    }

    /// Runs this source until `stage.shutdown` turns true or an error occurs.
    pub async fn run<S: CheckpointStore + 'static>(self, stage: SourceStage<S>) -> Result<(), PipelineError> {
        match self {
            SourceConfig::Mysql(c) => run_source(c, stage).await,
            SourceConfig::Postgres(c) => run_source(c, stage).await,
        }
    }
}

async fn tables_of<C: Connector>(connector: &C) -> Result<Vec<TableId>, PipelineError> {
    use lablake_source::Snapshotter;
    let name = connector.name();
    let mut reader = connector
        .snapshotter()
        .await
        .map_err(|e| PipelineError::source(format!("connecting to source `{name}`"), e))?;
    reader.tables().await.map_err(|e| PipelineError::source(format!("listing the tables of source `{name}`"), e))
}

/// Refuses sources whose tables map to the same tenant, database and table:
/// they would share a topic, a lake prefix and a Snowflake table. Lists each
/// source's tables (see [`SourceConfig::tables`]).
pub async fn check_distinct_tables(sources: &[SourceConfig]) -> Result<(), PipelineError> {
    if sources.len() < 2 {
        return Ok(());
    }
    let mut owner: BTreeMap<TableId, &str> = BTreeMap::new();
    for s in sources {
        for t in s.tables().await? {
            if let Some(first) = owner.insert(t.clone(), s.name())
                && first != s.name()
            {
                return Err(PipelineError::config(
                    "sources",
                    format!(
                        "sources `{first}` and `{}` both capture {t}: they would share its topic, lake prefix and \
                         Snowflake table; narrow one source's `include`/`exclude` or give them different tenant rules",
                        s.name()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What the source stage shares with the rest of the process.
pub struct SourceStage<S> {
    /// Snapshot lanes (core tables, user-defined tables).
    pub lanes: Lanes,
    pub bus: BusConfig,
    pub store: Arc<S>,
    pub shutdown: watch::Receiver<bool>,
    /// The source lease across in-process restarts.
    pub lease: LeaseHeld,
}

/// What the checkpoint saver saves once Kafka acknowledged everything before it.
enum Marker {
    Source(SourceCheckpoint),
    Snapshot(lablake_checkpoint::SnapshotProgress),
}

/// Gives every change its table's schema-history version (registering a
/// shape the first time this process sees it), before the change is sent:
/// records carry `lablake.schema_version`, and the history in the checkpoint
/// store says what each version looks like and what changed.
#[derive(Default)]
struct Versions {
    /// Per table: the schema as the source built it, and its versioned copy.
    by_table: HashMap<TableId, (Arc<TableSchema>, Arc<TableSchema>)>,
}

impl Versions {
    async fn apply<S: SchemaStore>(&mut self, store: &S, event: &mut ChangeEvent) -> Result<(), PipelineError> {
        if event.schema.columns.is_empty() {
            // A truncate of a table whose layout is unknown here.
            return Ok(());
        }
        // A schema object the source built anew (DDL, a new table map or
        // Relation message, a snapshot chunk) is looked up again even when its
        // shape is unchanged: the table may have been dropped and created again
        // since, which starts a new run of versions.
        if let Some((seen, versioned)) = self.by_table.get(&event.table)
            && Arc::ptr_eq(seen, &event.schema)
        {
            event.schema = versioned.clone();
            return Ok(());
        }
        let candidate = SchemaVersion::of(&event.schema, event.source.position.as_str(), metrics::now_ms());
        let version = store.register_schema(&event.table, &candidate).await.context("registering a schema version")?;
        let t = &event.table;
        if self.by_table.get(t).and_then(|(_, v)| v.version()) != Some(version) {
            tracing::info!(table = %t, version, columns = event.schema.columns.len(), "table schema version");
        }
        let versioned = event.schema.with_version(version);
        self.by_table.insert(event.table.clone(), (event.schema.clone(), versioned.clone()));
        event.schema = versioned;
        Ok(())
    }
}

/// Runs one source: takes its lease (fencing an older holder), resumes from
/// its checkpoint, and drives its stream with its snapshot workers beside it
/// (one per lane, each with its own connections, chunk size and rate cap): a
/// worker reads chunks between watermarks, the stream loop emits them (see
/// [`snapshot`]). Any of them failing stops all.
pub async fn run_source<C: Connector, S: CheckpointStore + 'static>(
    connector: C,
    stage: SourceStage<S>,
) -> Result<(), PipelineError> {
    let name = connector.name().to_owned();
    let store = stage.store.clone();
    let Some(generation) =
        stage.lease.acquire(store.as_ref(), &LeaseName::source(&name)).await.context("acquiring the source lease")?
    else {
        return Ok(());
    };
    let checkpoint = store.load_source(&name).await.context("reading the source checkpoint")?;
    match &checkpoint {
        Some(c) => tracing::info!(source = name, resume = %c.resume, generation, "resuming source"),
        None => tracing::info!(source = name, generation, "starting source from its configured start"),
    }
    let source = connector
        .start(checkpoint.map(|c| c.resume))
        .await
        .map_err(|e| PipelineError::source(format!("starting source `{name}`"), e))?;
    let nonce = format!("{:x}", rand_nonce());
    let mut workers = tokio::task::JoinSet::new();
    let mut windows: Option<snapshot::Windows> = None;
    for (i, (lane, cfg)) in stage.lanes.workers().into_iter().enumerate() {
        let lane_nonce = format!("{nonce}{i}");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        match windows.as_mut() {
            None => windows = Some(snapshot::Windows::new(lane_nonce.clone(), rx)),
            Some(w) => w.add_lane(lane_nonce.clone(), rx),
        }
        let worker = snapshot::Worker {
            source: name.clone(),
            lane,
            config: cfg,
            store: store.clone(),
            generation,
            nonce: lane_nonce,
        };
        let connector = connector.clone();
        workers.spawn(async move {
            // One connection per chunk read in parallel.
            let mut readers = Vec::with_capacity(worker.config.parallel_chunks);
            for _ in 0..worker.config.parallel_chunks.max(1) {
                let reader = connector
                    .snapshotter()
                    .await
                    .map_err(|e| PipelineError::source("connecting a snapshot reader", e))?;
                readers.push(reader);
            }
            snapshot::run_worker(worker, readers, tx).await
        });
    }
    let result = {
        let drive = drive(&name, source, windows, generation, &stage);
        tokio::pin!(drive);
        let lease = LeaseName::source(&name);
        let mut lease_check = tokio::time::interval(crate::supervise::LEASE_CHECK);
        lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = &mut drive => break r,
                // A quiet source writes no checkpoint that would meet its
                // fence, and would hold the replication slot its successor needs.
                _ = lease_check.tick() => {
                    if let Err(e) = crate::supervise::still_held(store.as_ref(), &lease, generation).await {
                        break Err(e.within_context(format!("source `{name}`")));
                    }
                }
                Some(w) = workers.join_next() => match w {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e.within_context(format!("snapshot worker of `{name}`"))),
                    Err(e) => break Err(PipelineError::task(format!("snapshot worker of `{name}`"), e)),
                },
            }
        }
    };
    workers.abort_all();
    result
}

fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// The source loop: stream → Kafka, checkpoints after acknowledgement. On
/// shutdown, every record already read is acknowledged and checkpointed.
async fn drive<R: ChangeSource, S: CheckpointStore + 'static>(
    name: &str,
    mut reader: R,
    mut windows: Option<snapshot::Windows>,
    generation: u64,
    stage: &SourceStage<S>,
) -> Result<(), PipelineError> {
    let (bus, store) = (&stage.bus, stage.store.clone());
    let mut shutdown = stage.shutdown.clone();
    let mut producer = ChangeProducer::new(bus)?;
    // Kafka is the record replay rebuilds from: say which topics would lose it.
    match producer.retention_problems().await {
        Ok(problems) => {
            for (topic, problem) in problems {
                tracing::warn!(
                    source = name,
                    topic,
                    problem,
                    "topic deletes history a replay needs; set retention.ms=-1 and retention.bytes=-1 on it \
                     (new topics get kafka.retention_ms)"
                );
            }
        }
        Err(e) => tracing::warn!(source = name, error = %e, "cannot check the retention of existing topics"),
    }
    let (acks, mut acked) = ack_queue::<Marker>(bus.max_in_flight);
    let hook: SavedHook = reader.saved_hook();

    let saver = {
        let store = store.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            let mut latest: Option<SourceCheckpoint> = None;
            let mut saved: Option<SourceCheckpoint> = None;
            let mut last_save = Instant::now();
            loop {
                let next = acked.next().await;
                let done = match next {
                    Ok(Some(Marker::Source(cp))) => {
                        latest = Some(cp);
                        false
                    }
                    Ok(Some(Marker::Snapshot(p))) => {
                        // Every row of the chunk is acknowledged: the snapshot may resume after it.
                        lablake_failpoint::failpoint("snapshot.before_progress");
                        if store.save_snapshot(&name, generation, &p).await.context("saving snapshot progress")? {
                            snapshot::report(&name, &p);
                        }
                        false
                    }
                    Ok(None) => true,
                    Err(e) => {
                        // Save what was acknowledged before the failure, then stop.
                        if let Some(cp) = latest.as_ref().filter(|c| Some(*c) != saved.as_ref()) {
                            store.save_source(&name, generation, cp).await?;
                        }
                        return Err(PipelineError::from(e).within_context("kafka delivery failed".into()));
                    }
                };
                if let Some(cp) = latest.as_ref()
                    && (done || last_save.elapsed() >= SAVE_INTERVAL)
                    && saved.as_ref() != Some(cp)
                {
                    lablake_failpoint::failpoint("source.before_save");
                    store.save_source(&name, generation, cp).await.context("saving the source checkpoint")?;
                    lablake_failpoint::failpoint("source.after_save");
                    // Only now may the server release what came before.
                    hook.saved(&cp.resume);
                    metrics::SOURCE_CHECKPOINT_AGE.with_label_values(&[&name]).set(metrics::now_secs());
                    saved = Some(cp.clone());
                    last_save = Instant::now();
                }
                if done {
                    return Ok::<(), PipelineError>(());
                }
            }
        })
    };

    let records = metrics::SOURCE_RECORDS.with_label_values(&[name]);
    let dead_letters = metrics::SOURCE_DEAD_LETTERS.with_label_values(&[name]);
    let mut versions = Versions::default();
    let mut scratch = Vec::new();
    let lag = metrics::SOURCE_LAG.with_label_values(&[name]);
    // The position of the last committed change, for heartbeats' checkpoints.
    let mut last_position = String::new();
    let result: Result<(), PipelineError> = async {
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                item = reader.next() => item.map_err(|e| PipelineError::source(format!("reading source `{name}`"), e))?,
            };
            match item {
                SourceItem::Change(mut event) if event.op == Op::Truncate => {
                    versions.apply(store.as_ref(), &mut event).await?;
                    tracing::info!(source = name, table = %event.table, "TRUNCATE propagated");
                    for (topic, fut) in producer.send_truncate(&event).await? {
                        acks.delivery(topic, fut).await?;
                    }
                    records.inc();
                }
                SourceItem::Change(mut event) => {
                    versions.apply(store.as_ref(), &mut event).await?;
                    // A key-changing update leaves its old key behind: a delete of it, then a create.
                    let (first, second) = event.split_key_change();
                    for event in std::iter::once(first).chain(second) {
                        if let Some(w) = windows.as_mut() {
                            w.observe(&event, &mut scratch);
                        }
                        let sent = producer.send(&event).await?;
                        lablake_failpoint::failpoint("source.after_send");
                        let produced = !dead_lettered(name, &event, &sent, &dead_letters);
                        acks.delivery(sent.topic, sent.delivery).await?;
                        records.inc_by(u64::from(produced));
                        lag.set((metrics::now_secs() - event.source.ts_ms as f64 / 1000.0).max(0.0));
                    }
                }
                SourceItem::Commit { resume, position, commit_ts_ms } => {
                    last_position = position.as_str().to_owned();
                    let cp = SourceCheckpoint { resume, position: last_position.clone(), commit_ts_ms };
                    acks.marker(Marker::Source(cp)).await?;
                }
                SourceItem::Heartbeat { resume } => {
                    let cp =
                        SourceCheckpoint { resume, position: last_position.clone(), commit_ts_ms: metrics::now_ms() };
                    acks.marker(Marker::Source(cp)).await?;
                }
                SourceItem::Watermark(mark) => {
                    let Some(w) = windows.as_mut() else { continue };
                    if let Some((mut events, progress)) = w.watermark(&mark).await? {
                        let mut produced = 0;
                        for event in &mut events {
                            versions.apply(store.as_ref(), event).await?;
                            let sent = producer.send(event).await?;
                            produced += u64::from(!dead_lettered(name, event, &sent, &dead_letters));
                            acks.delivery(sent.topic, sent.delivery).await?;
                        }
                        records.inc_by(produced);
                        acks.marker(Marker::Snapshot(progress)).await?;
                    }
                }
                SourceItem::Unresolved(Unresolved { table, reason, position, tenant, row }) => {
                    let tenant = tenant.as_deref().unwrap_or(UNRESOLVED_TENANT);
                    tracing::warn!(
                        source = name,
                        table,
                        tenant,
                        reason,
                        "row that cannot become a change sent to the dead-letter topic"
                    );
                    let payload = match &row {
                        UnresolvedRow::Change(event) => UnresolvedPayload::Change(event),
                        UnresolvedRow::Raw(raw) => UnresolvedPayload::Raw(raw),
                        UnresolvedRow::Nothing => UnresolvedPayload::Nothing,
                    };
                    let (topic, fut) =
                        producer.send_unresolved(tenant, &table, position.as_str(), &reason, payload).await?;
                    acks.delivery(topic, fut).await?;
                    dead_letters.inc();
                }
            }
        }
        Ok(())
    }
    .await;
    drop(acks);
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
    let saved = saver.await.map_err(|e| PipelineError::task("the checkpoint task", e))?;
    result?;
    saved?;
    if let Ok(Err(e)) = flushed {
        return Err(PipelineError::from(e).within_context("flushing the producer".into()));
    }
    tracing::info!(source = name, "source stopped");
    Ok(())
}

/// Whether the producer dead-lettered `event` because it did not fit in a
/// Kafka record; if so, counts it (`lablake_source_dead_letters_total`) and
/// logs a warning naming the table, position and sizes — never a value, nor
/// the key. The stream goes on: the dead letter is acknowledged like any
/// record before a position after it is saved.
fn dead_lettered(name: &str, event: &ChangeEvent, sent: &Sent, dead_letters: &prometheus::IntCounter) -> bool {
    let Some(o) = &sent.oversized else { return false };
    dead_letters.inc();
    tracing::warn!(
        source = name,
        table = %event.table,
        op = event.op.code(),
        position = event.source.position.as_str(),
        bytes = o.bytes,
        limit = o.limit,
        dead_letter_topic = &*sent.topic,
        "change too large for Kafka (kafka.max_message_bytes) sent to the dead-letter topic instead"
    );
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<SourceConfig, String> {
        serde_json::from_value(v).map_err(|e| e.to_string())
    }

    #[test]
    fn sources_are_one_list_tagged_by_kind() {
        let tenant = serde_json::json!({ "kind": "schema", "pattern": "lab_{tenant}" });
        let my = parse(serde_json::json!({
            "kind": "mysql", "name": "lims", "url": "mysql://u:p@h:3306", "server_id": 7, "tenant": tenant,
        }))
        .unwrap();
        assert!(matches!(&my, SourceConfig::Mysql(_)) && my.name() == "lims");
        assert!(my.validate("sources[0]").is_ok());
        let pg = parse(serde_json::json!({
            "kind": "postgres", "name": "audit", "url": "postgres://u@h/db", "slot": "s", "tenant": tenant,
        }))
        .unwrap();
        assert!(matches!(&pg, SourceConfig::Postgres(_)) && pg.name() == "audit");
        // Unknown keys inside a variant are still refused, naming the key.
        let err = parse(serde_json::json!({
            "kind": "postgres", "name": "a", "url": "postgres://u@h/db", "slott": "s", "tenant": tenant,
        }))
        .unwrap_err();
        assert!(err.contains("slott"), "{err}");
        let err = parse(serde_json::json!({ "kind": "oracle", "name": "x" })).unwrap_err();
        assert!(err.contains("oracle") && err.contains("mysql") && err.contains("postgres"), "{err}");
        // A URL of the other kind is named by its key.
        let wrong = parse(serde_json::json!({
            "kind": "postgres", "name": "a", "url": "mysql://u@h/db", "slot": "s", "tenant": tenant,
        }))
        .unwrap();
        let (key, reason) = wrong.validate("sources[1] (name `a`)").unwrap_err();
        assert_eq!(key, "sources[1] (name `a`).url");
        assert!(reason.contains("postgres://"), "{reason}");
    }
}
