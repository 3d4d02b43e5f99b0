//! The source stage: a database's change stream → Kafka, checkpointing
//! positions only after Kafka acknowledged everything before them, and (for
//! PostgreSQL) reporting a position to the slot only after it is checkpointed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use lablake_bus::{BusConfig, ChangeProducer, DeadLetter, ack_queue};
use lablake_checkpoint::{CheckpointStore, SchemaVersion, SourceCheckpoint};
use lablake_model::{ChangeEvent, Op, SourceInfo, SourcePosition, TableId, TableSchema};
use lablake_mysql::{MysqlSnapshotter, MysqlSource, MysqlSourceConfig, ResumePoint, SourceItem};
use lablake_postgres::{PgAcker, PgItem, PgOrigin, PgSnapshotter, PgSource, PgSourceConfig};
use tokio::sync::watch;

use crate::{metrics, snapshot};

/// How often acknowledged positions are saved.
const SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// What the source stage needs from a change source.
///
/// Delivery contract: `next` yields changes in commit order, each
/// transaction's changes followed by a `Checkpoint` from which a restart
/// resumes without losing any later change (it may repeat the ones after the
/// last saved checkpoint). A checkpoint is saved only after Kafka acknowledged
/// every record before it; `saved` is then called with it, and only then may
/// the source tell its server that the position is consumed.
trait Reader: Send {
    fn next(&mut self) -> impl Future<Output = anyhow::Result<Item>> + Send;
}

/// What the checkpoint saver saves once Kafka acknowledged everything before it.
enum Marker {
    Source(SourceCheckpoint),
    Snapshot(lablake_checkpoint::SnapshotProgress),
}

/// A normalized source item.
enum Item {
    Change(ChangeEvent),
    Checkpoint(SourceCheckpoint),
    /// A snapshot watermark; `at(i)` positions the i-th snapshot row there.
    Watermark {
        id: String,
        at: Box<dyn Fn(u32) -> SourceInfo + Send>,
    },
    Unresolved {
        table: String,
        reason: String,
        position: SourcePosition,
    },
}

struct Mysql {
    source: MysqlSource,
    last_position: String,
}

impl Reader for Mysql {
    async fn next(&mut self) -> anyhow::Result<Item> {
        Ok(match self.source.next().await? {
            SourceItem::Change(event) => Item::Change(event),
            SourceItem::Commit { resume, position, commit_ts_ms } => {
                self.last_position = position.as_str().to_owned();
                Item::Checkpoint(SourceCheckpoint {
                    file: resume.file,
                    pos: resume.pos,
                    gtid: resume.gtid,
                    position: self.last_position.clone(),
                    commit_ts_ms,
                })
            }
            SourceItem::Heartbeat { resume } => Item::Checkpoint(SourceCheckpoint {
                file: resume.file,
                pos: resume.pos,
                gtid: resume.gtid,
                position: self.last_position.clone(),
                commit_ts_ms: (metrics::now_secs() * 1000.0) as i64,
            }),
            SourceItem::Unresolved { table, reason, position } => Item::Unresolved { table, reason, position },
            SourceItem::Watermark { id, source } => {
                Item::Watermark { id, at: Box::new(move |i| SourceItem::snapshot_source(&source, i)) }
            }
            _ => anyhow::bail!("the MySQL source produced an item this version cannot handle"),
        })
    }
}

struct Postgres {
    source: PgSource,
    /// Names of snapshot rows' source blocks.
    origin: PgOrigin,
    last_position: String,
}

impl Reader for Postgres {
    async fn next(&mut self) -> anyhow::Result<Item> {
        let checkpoint = |lsn: u64, position: String, commit_ts_ms: i64| {
            Item::Checkpoint(SourceCheckpoint { file: String::new(), pos: lsn, gtid: None, position, commit_ts_ms })
        };
        Ok(match self.source.next().await? {
            PgItem::Change(event) => Item::Change(event),
            PgItem::Commit { lsn, position, commit_ts_ms } => {
                self.last_position = position.as_str().to_owned();
                checkpoint(lsn, self.last_position.clone(), commit_ts_ms)
            }
            PgItem::Heartbeat { lsn } => {
                checkpoint(lsn, self.last_position.clone(), (metrics::now_secs() * 1000.0) as i64)
            }
            PgItem::Unresolved { table, reason, position } => Item::Unresolved { table, reason, position },
            PgItem::Watermark { id, commit_lsn, commit_ts_ms } => {
                let origin = self.origin.clone();
                let at = move |i| origin.source(commit_lsn, commit_ts_ms, SourcePosition::postgres(commit_lsn, i));
                Item::Watermark { id, at: Box::new(at) }
            }
            _ => anyhow::bail!("the PostgreSQL source produced an item this version cannot handle"),
        })
    }
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
    async fn apply<S: CheckpointStore>(&mut self, store: &S, event: &mut ChangeEvent) -> anyhow::Result<()> {
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
        let candidate =
            SchemaVersion::of(&event.schema, event.source.position.as_str(), (metrics::now_secs() * 1000.0) as i64);
        let version = store.register_schema(&event.table, &candidate).await.context("registering a schema version")?;
        let t = &event.table;
        if self.by_table.get(t).and_then(|(_, v)| v.version()) != Some(version) {
            tracing::info!(tenant = %t.tenant, table = %format!("{}.{}", t.database, t.table), version,
                columns = event.schema.columns.len(), "table schema version");
        }
        let versioned = event.schema.with_version(version);
        self.by_table.insert(event.table.clone(), (event.schema.clone(), versioned.clone()));
        event.schema = versioned;
        Ok(())
    }
}

/// Takes the source's lease (fencing an older holder) and reads its checkpoint.
async fn claim<S: CheckpointStore>(name: &str, store: &S) -> anyhow::Result<(u64, Option<SourceCheckpoint>)> {
    let generation = store.acquire_lease(&format!("source#{name}")).await.context("acquiring the source lease")?;
    Ok((generation, store.load_source(name).await?))
}

/// Runs one MySQL/MariaDB source until `shutdown` turns true or an error occurs.
pub async fn run_source<S: CheckpointStore + 'static>(
    name: &str,
    config: MysqlSourceConfig,
    snap: &snapshot::Lanes,
    bus: &BusConfig,
    store: std::sync::Arc<S>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (generation, checkpoint) = claim(name, store.as_ref()).await?;
    let resume = checkpoint.map(|c| ResumePoint { file: c.file, pos: c.pos, gtid: c.gtid });
    match &resume {
        Some(r) => {
            tracing::info!(source = name, file = %r.file, pos = r.pos, gtid = ?r.gtid, generation, "resuming source")
        }
        None => tracing::info!(source = name, generation, "starting source from its configured start position"),
    }
    let source =
        MysqlSource::start(config.clone(), resume).await.with_context(|| format!("starting source `{name}`"))?;
    let reader = Mysql { source, last_position: String::new() };
    let connect = move || {
        let config = config.clone();
        async move { anyhow::Ok(MysqlSnapshotter::connect(&config).await?) }
    };
    with_snapshots(name, reader, None, connect, snap, generation, bus, store, shutdown).await
}

/// Runs one PostgreSQL source until `shutdown` turns true or an error occurs.
pub async fn run_pg_source<S: CheckpointStore + 'static>(
    name: &str,
    config: PgSourceConfig,
    snap: &snapshot::Lanes,
    bus: &BusConfig,
    store: std::sync::Arc<S>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (generation, checkpoint) = claim(name, store.as_ref()).await?;
    let resume = checkpoint.map(|c| c.pos);
    match resume {
        Some(lsn) => {
            tracing::info!(source = name, lsn = %lablake_postgres::error::lsn_text(lsn), generation, "resuming source")
        }
        None => tracing::info!(source = name, generation, "starting source from its slot's position"),
    }
    let source = PgSource::start(&config, resume).await.with_context(|| format!("starting source `{name}`"))?;
    let acker = source.acker();
    let reader = Postgres { source, origin: PgOrigin::new(name), last_position: String::new() };
    let connect = move || {
        let config = config.clone();
        async move { anyhow::Ok(PgSnapshotter::connect(&config).await?) }
    };
    with_snapshots(name, reader, Some(acker), connect, snap, generation, bus, store, shutdown).await
}

/// Drives a source with its snapshot workers beside it (one per lane: core
/// tables, and user-defined tables when configured, each with its own
/// connection, chunk size and rate cap): a worker reads chunks between
/// watermarks, the stream loop emits them (see `snapshot`). Any of them
/// failing stops all.
#[allow(clippy::too_many_arguments)]
async fn with_snapshots<S, R, N, F, C>(
    name: &str,
    reader: R,
    acker: Option<PgAcker>,
    connect: C,
    lanes: &snapshot::Lanes,
    generation: u64,
    bus: &BusConfig,
    store: std::sync::Arc<S>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    S: CheckpointStore + 'static,
    R: Reader,
    N: snapshot::Snapshotter + 'static,
    F: Future<Output = anyhow::Result<N>> + Send + 'static,
    C: Fn() -> F + Clone + Send + 'static,
{
    let nonce = format!("{:x}", rand_nonce());
    let mut workers = tokio::task::JoinSet::new();
    let mut windows: Option<snapshot::Windows> = None;
    for (i, (lane, cfg)) in lanes.workers().into_iter().enumerate() {
        let lane_nonce = format!("{nonce}{i}");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        match windows.as_mut() {
            None => windows = Some(snapshot::Windows::new(lane_nonce.clone(), rx)),
            Some(w) => w.add_lane(lane_nonce.clone(), rx),
        }
        let (name, store, connect) = (name.to_owned(), store.clone(), connect.clone());
        workers.spawn(async move {
            // One connection per chunk read in parallel.
            let mut readers = Vec::with_capacity(cfg.parallel_chunks);
            for _ in 0..cfg.parallel_chunks.max(1) {
                readers.push(connect().await.context("connecting a snapshot reader")?);
            }
            snapshot::run_worker(name, readers, lane, cfg, store, generation, lane_nonce, tx).await
        });
    }
    let result = {
        let drive = drive(name, reader, acker, windows, generation, bus, store, shutdown);
        tokio::pin!(drive);
        loop {
            tokio::select! {
                r = &mut drive => break r,
                Some(w) = workers.join_next() => match w {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e.context(format!("snapshot worker of `{name}`"))),
                    Err(e) => break Err(anyhow::anyhow!("snapshot worker of `{name}` panicked: {e}")),
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

/// The source loop: reader → Kafka, checkpoints after acknowledgement. On
/// shutdown, every record already read is acknowledged and checkpointed.
#[allow(clippy::too_many_arguments)]
async fn drive<S: CheckpointStore + 'static, R: Reader>(
    name: &str,
    mut reader: R,
    acker: Option<PgAcker>,
    mut windows: Option<snapshot::Windows>,
    generation: u64,
    bus: &BusConfig,
    store: std::sync::Arc<S>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut producer = ChangeProducer::new(bus)?;
    let (acks, mut acked) = ack_queue::<Marker>(bus.max_in_flight);

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
                        return Err(anyhow::Error::new(e).context("kafka delivery failed"));
                    }
                };
                if let Some(cp) = latest.as_ref()
                    && (done || last_save.elapsed() >= SAVE_INTERVAL)
                    && saved.as_ref() != Some(cp)
                {
                    store.save_source(&name, generation, cp).await.context("saving the source checkpoint")?;
                    if let Some(a) = &acker {
                        // Only now may the server release what came before.
                        a.ack(cp.pos);
                    }
                    metrics::SOURCE_CHECKPOINT_AGE.with_label_values(&[&name]).set(metrics::now_secs());
                    saved = Some(cp.clone());
                    last_save = Instant::now();
                }
                if done {
                    return anyhow::Ok(());
                }
            }
        })
    };

    let records = metrics::SOURCE_RECORDS.with_label_values(&[name]);
    let mut versions = Versions::default();
    let mut scratch = Vec::new();
    let lag = metrics::SOURCE_LAG.with_label_values(&[name]);
    let result: anyhow::Result<()> = async {
        loop {
            let item = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                item = reader.next() => item.with_context(|| format!("reading source `{name}`"))?,
            };
            match item {
                Item::Change(mut event) if event.op == Op::Truncate => {
                    versions.apply(store.as_ref(), &mut event).await?;
                    tracing::info!(source = name, tenant = %event.table.tenant,
                        table = %format!("{}.{}", event.table.database, event.table.table), "TRUNCATE propagated");
                    for (topic, fut) in producer.send_truncate(&event).await? {
                        acks.delivery(topic, fut).await?;
                    }
                    records.inc();
                }
                Item::Change(mut event) => {
                    versions.apply(store.as_ref(), &mut event).await?;
                    // A key-changing update leaves its old key behind: a delete of it, then a create.
                    let (first, second) = event.split_key_change();
                    for event in std::iter::once(first).chain(second) {
                        if let Some(w) = windows.as_mut() {
                            w.observe(&event, &mut scratch);
                        }
                        let (topic, fut) = producer.send(&event).await?;
                        acks.delivery(topic, fut).await?;
                        records.inc();
                        lag.set((metrics::now_secs() - event.source.ts_ms as f64 / 1000.0).max(0.0));
                    }
                }
                Item::Checkpoint(cp) => acks.marker(Marker::Source(cp)).await?,
                Item::Watermark { id, at } => {
                    let Some(w) = windows.as_mut() else { continue };
                    if let Some((mut events, progress)) = w.watermark(&id, at).await? {
                        for event in &mut events {
                            versions.apply(store.as_ref(), event).await?;
                            let (topic, fut) = producer.send(event).await?;
                            acks.delivery(topic, fut).await?;
                        }
                        records.inc_by(events.len() as u64);
                        acks.marker(Marker::Snapshot(progress)).await?;
                    }
                }
                Item::Unresolved { table, reason, position } => {
                    tracing::warn!(
                        source = name,
                        table,
                        reason,
                        "row that cannot become a change sent to the dead-letter topic"
                    );
                    let payload = format!(
                        "{{\"table\":{},\"position\":\"{}\"}}",
                        serde_json::Value::String(table.clone()),
                        position
                    );
                    let (topic, fut) = producer
                        .send_dead_letter(DeadLetter {
                            tenant: "_unresolved",
                            key: None,
                            payload: Some(payload.as_bytes()),
                            reason: &reason,
                            stage: "source",
                            origin: None,
                        })
                        .await?;
                    acks.delivery(topic, fut).await?;
                    metrics::SOURCE_DEAD_LETTERS.with_label_values(&[name]).inc();
                }
            }
        }
        Ok(())
    }
    .await;
    drop(acks);
    let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30))).await;
    let saved = saver.await.context("checkpoint task panicked")?;
    result?;
    saved?;
    if let Ok(Err(e)) = flushed {
        return Err(e.into());
    }
    tracing::info!(source = name, "source stopped");
    Ok(())
}
