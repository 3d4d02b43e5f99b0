//! Snapshots (full loads) with the DBLog watermark method, run inside the
//! source stage so they interleave with the change stream:
//!
//! 1. the worker writes a *low* watermark into the source's log, reads one
//!    chunk (primary-key order, after the last delivered key), hands the
//!    chunk to the stream loop, then writes a *high* watermark;
//! 2. the stream loop, between the two watermarks, notes the keys of the
//!    chunk's table that changed; at the high watermark it emits the chunk's
//!    other rows as `op = r` at the watermark's position.
//!
//! A changed key is not emitted from the chunk: its change is in the stream,
//! newer than what the chunk read. So the result equals the source with no
//! gap or double at the hand-over, without locks, while streaming continues.
//! Chunk progress is saved (checkpoint store, conditional) only after Kafka
//! acknowledged the chunk's rows, so a killed snapshot resumes after the last
//! delivered chunk. See ADR 0006.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lablake_checkpoint::{SchemaStore, SnapshotProgress, SnapshotState, SnapshotStore};
use lablake_model::{ChangeEvent, Chunk, Op, TableId, TableSchema, Value, envelope};
use lablake_source::{SnapshotTable, Snapshotter, Watermark};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::PipelineError;
use crate::lane::Lane;
use crate::metrics;

/// `[snapshot]`: how full loads run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Rows per chunk (one chunk is held in memory at a time).
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// Snapshot every selected table the first time it is seen (at start and
    /// when it appears later).
    #[serde(default = "default_true")]
    pub on_new_table: bool,
    /// Cap on rows read per second from the source (0: no cap).
    #[serde(default)]
    pub max_rows_per_second: u64,
    /// Chunks of one table read in parallel (each on its own connection,
    /// between the same pair of watermarks); memory is this many chunks.
    #[serde(default = "default_parallel")]
    pub parallel_chunks: usize,
    /// How often requests and new tables are looked for, e.g. `"2s"`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_chunk_rows() -> usize {
    10_000
}
fn default_parallel() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_poll() -> Duration {
    Duration::from_secs(2)
}

impl SnapshotConfig {
    /// Checks the bounds; the error names the key (under `section`).
    pub fn validate(&self, section: &str) -> Result<(), (String, String)> {
        if self.chunk_rows == 0 || self.chunk_rows > 1_000_000 {
            return Err((format!("{section}.chunk_rows"), "must be between 1 and 1000000".into()));
        }
        if self.parallel_chunks == 0 || self.parallel_chunks > 16 {
            return Err((format!("{section}.parallel_chunks"), "must be between 1 and 16".into()));
        }
        Ok(())
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            chunk_rows: default_chunk_rows(),
            on_new_table: true,
            max_rows_per_second: 0,
            parallel_chunks: default_parallel(),
            poll_interval: default_poll(),
        }
    }
}

/// A chunk on its way from the worker to the stream loop.
pub struct ChunkMsg {
    /// `<nonce>:<chunk>`, as in the watermarks.
    pub id: String,
    pub schema: Arc<TableSchema>,
    pub rows: Vec<Vec<Value>>,
    /// Progress once these rows are delivered (names the table).
    pub progress: SnapshotProgress,
}

/// A watermark's content: `l|h:<nonce>:<chunk>`.
pub fn watermark_id(high: bool, nonce: &str, chunk: u64) -> String {
    format!("{}:{nonce}:{chunk}", if high { 'h' } else { 'l' })
}

/// What the stream loop keeps of the snapshot lanes' chunk windows (one
/// lane per snapshot worker: core tables, user-defined tables).
pub struct Windows {
    lanes: Vec<LaneWindow>,
}

struct LaneWindow {
    nonce: String,
    rx: mpsc::Receiver<ChunkMsg>,
    open: Option<Window>,
}

struct Window {
    id: String,
    /// Keys (envelope key bytes) changed in the window, per table.
    changed: HashMap<TableId, HashSet<Vec<u8>>>,
    /// Tables truncated in the window: every row of their chunk is stale.
    truncated: HashSet<TableId>,
}

impl Windows {
    /// One lane: watermarks carrying `nonce`, chunks from `rx`.
    pub fn new(nonce: String, rx: mpsc::Receiver<ChunkMsg>) -> Self {
        Windows { lanes: vec![LaneWindow { nonce, rx, open: None }] }
    }

    /// Adds a lane with its own nonce (distinct from the others') and chunk channel.
    pub fn add_lane(&mut self, nonce: String, rx: mpsc::Receiver<ChunkMsg>) {
        self.lanes.push(LaneWindow { nonce, rx, open: None });
    }

    /// Notes a streamed change (call for every change while a window may be open).
    pub fn observe(&mut self, event: &ChangeEvent, scratch: &mut Vec<u8>) {
        let mut encoded = false;
        for w in self.lanes.iter_mut().filter_map(|l| l.open.as_mut()) {
            if event.op == Op::Truncate {
                w.truncated.insert(event.table.clone());
                continue;
            }
            if !encoded {
                scratch.clear();
                envelope::encode_key(event, scratch);
                encoded = true;
            }
            match w.changed.get_mut(&event.table) {
                Some(keys) => {
                    keys.insert(scratch.clone());
                }
                None => {
                    w.changed.insert(event.table.clone(), HashSet::from([scratch.clone()]));
                }
            }
        }
    }

    /// Handles a watermark from the stream. At a high watermark of this
    /// run, returns the chunk's rows that did not change in the window, as
    /// snapshot reads positioned at the watermark, and the progress to save
    /// once they are delivered. Watermarks of other runs are ignored.
    pub async fn watermark(
        &mut self,
        mark: &Watermark,
    ) -> Result<Option<(Vec<ChangeEvent>, SnapshotProgress)>, PipelineError> {
        let mut parts = mark.id.splitn(3, ':');
        let (Some(kind), Some(nonce), Some(chunk)) = (parts.next(), parts.next(), parts.next()) else {
            return Ok(None);
        };
        let Some(lane) = self.lanes.iter_mut().find(|l| l.nonce == nonce) else {
            return Ok(None);
        };
        let base = format!("{nonce}:{chunk}");
        match kind {
            "l" => {
                lane.open = Some(Window { id: base, changed: HashMap::new(), truncated: HashSet::new() });
                Ok(None)
            }
            "h" => {
                let Some(w) = lane.open.take().filter(|w| w.id == base) else { return Ok(None) };
                // The worker sent the chunk before writing this watermark.
                let msg =
                    lane.rx.recv().await.ok_or_else(|| PipelineError::Invariant("snapshot worker stopped".into()))?;
                if msg.id != base {
                    return Err(PipelineError::Invariant(format!(
                        "snapshot chunk {} arrived at watermark {base}",
                        msg.id
                    )));
                }
                if w.truncated.contains(&msg.progress.table) {
                    // Rows read before the truncate must not come back after it.
                    return Ok(Some((Vec::new(), msg.progress)));
                }
                let changed = w.changed.get(&msg.progress.table);
                let mut scratch = Vec::new();
                let now = metrics::now_ms();
                let mut out = Vec::with_capacity(msg.rows.len());
                for (i, row) in msg.rows.into_iter().enumerate() {
                    let event = ChangeEvent {
                        table: msg.progress.table.clone(),
                        op: Op::Read,
                        schema: msg.schema.clone(),
                        before: None,
                        after: Some(row),
                        source: mark.row_source(u32::try_from(i).unwrap_or(u32::MAX - 1)),
                        ts_ms: now,
                    };
                    if let Some(changed) = changed {
                        scratch.clear();
                        envelope::encode_key(&event, &mut scratch);
                        if changed.contains(scratch.as_slice()) {
                            continue;
                        }
                    }
                    out.push(event);
                }
                Ok(Some((out, msg.progress)))
            }
            _ => Ok(None),
        }
    }
}

/// What one snapshot worker runs with.
pub struct Worker<S> {
    /// The source's configured name (its snapshot progress is keyed by it).
    pub source: String,
    /// The tables it owns.
    pub lane: Lane,
    pub config: SnapshotConfig,
    pub store: Arc<S>,
    /// The source lease's generation: progress saves are fenced by it.
    pub generation: u64,
    /// Distinguishes this worker's watermarks from other runs' and lanes'.
    pub nonce: String,
}

/// The snapshot worker of a source: requests snapshots of new tables, then
/// runs every open request chunk by chunk. Ends when `tx` closes (the
/// source stopped).
pub async fn run_worker<S, R>(
    worker: Worker<S>,
    mut readers: Vec<R>,
    tx: mpsc::Sender<ChunkMsg>,
) -> Result<(), PipelineError>
where
    S: SnapshotStore + SchemaStore + 'static,
    R: Snapshotter,
{
    let Worker { source: name, lane, config: snap, store, generation, nonce } = worker;
    if readers.is_empty() {
        return Err(PipelineError::Invariant("a snapshot worker needs a reader".into()));
    }
    let failed = |what: &'static str| move |e: R::Error| PipelineError::source(what, e);
    let mut chunk_no: u64 = 0;
    let mut warned: HashSet<TableId> = HashSet::new();
    // Requests this process read to the end: their final progress is saved
    // once Kafka acknowledges the last chunk, maybe after the next poll.
    let mut finished: HashSet<(TableId, u64)> = HashSet::new();
    // Tables of this lane seen at the last poll: one that disappears was dropped.
    let mut known: Option<HashSet<TableId>> = None;
    loop {
        let tables: HashSet<TableId> = readers[0]
            .tables()
            .await
            .map_err(failed("listing tables for snapshots"))?
            .into_iter()
            .filter(|t| lane.owns(&t.table))
            .collect();
        for t in &tables {
            let new = known.as_ref().is_none_or(|k| !k.contains(t));
            if new && snap.on_new_table && store.request_snapshot(&name, t, true).await? {
                tracing::info!(source = name, table = %t, lane = lane.name(), "new table: snapshot requested");
            }
        }
        for t in known.iter().flatten().filter(|t| !tables.contains(*t)) {
            tracing::info!(source = name, table = %t, lane = lane.name(),
                "table dropped: retired (its topic and curated files stay; no new records)");
            metrics::TABLES_RETIRED.with_label_values(&[&name, lane.name()]).inc();
            let now = metrics::now_ms();
            store.register_schema(t, &lablake_checkpoint::SchemaVersion::dropped(now)).await?;
        }
        known = Some(tables);
        for p in store.snapshots(&name).await? {
            if p.state == SnapshotState::Done
                || finished.contains(&(p.table.clone(), p.request))
                || !lane.owns(&p.table.table)
            {
                continue;
            }
            let retire = |p: &SnapshotProgress| {
                tracing::warn!(source = name, table = %p.table, "table to snapshot no longer exists; request retired");
                let mut done = p.clone();
                done.state = SnapshotState::Done;
                done
            };
            let Some(table) = readers[0].table(&p.table).await.map_err(failed("reading a table's layout"))? else {
                store.save_snapshot(&name, generation, &retire(&p)).await?;
                continue;
            };
            if !table.keyed() {
                if warned.insert(p.table.clone()) {
                    tracing::warn!(source = name, table = %p.table,
                        "table has no primary key and no unique key over NOT NULL columns (PostgreSQL: replica \
                         identity index) of a comparable type: it cannot be snapshotted in chunks; add a primary key");
                }
                continue;
            }
            let mut progress = p.clone();
            if progress.state == SnapshotState::Requested {
                progress.estimate = readers[0].estimate(&table).await.map_err(failed("estimating rows"))?;
                progress.started_ms = metrics::now_ms();
            }
            progress.state = SnapshotState::Running;
            tracing::info!(source = name, table = %p.table, request = p.request,
                resume = progress.last_key.is_some(), estimate = progress.estimate, "snapshot started");
            let mut table = table;
            loop {
                chunk_no += 1;
                let started = Instant::now();
                readers[0]
                    .watermark(&watermark_id(false, &nonce, chunk_no))
                    .await
                    .map_err(failed("writing a low watermark"))?;
                let (chunk, done) = read_chunks(&mut readers, &table, progress.last_key.as_deref(), snap.chunk_rows)
                    .await
                    .map_err(failed("reading a snapshot chunk"))?;
                // A schema change between the layout read and the chunk read
                // would give rows without their new columns: read again.
                let now = readers[0].table(&p.table).await.map_err(failed("reading a table's layout"))?;
                let changed = now.as_ref().is_none_or(|t| t.schema().fingerprint() != table.schema().fingerprint());
                let n = chunk.rows.len();
                let done = !changed && done;
                let mut next = progress.clone();
                if !changed {
                    next.chunks += 1;
                    next.rows += n as u64;
                    if let Some(k) = chunk.last_key {
                        next.last_key = Some(k);
                    }
                }
                next.updated_ms = metrics::now_ms();
                if done {
                    next.state = SnapshotState::Done;
                }
                let msg = ChunkMsg {
                    id: format!("{nonce}:{chunk_no}"),
                    schema: table.schema().clone(),
                    rows: if changed { Vec::new() } else { chunk.rows },
                    progress: next.clone(),
                };
                if tx.send(msg).await.is_err() {
                    return Ok(());
                }
                readers[0]
                    .watermark(&watermark_id(true, &nonce, chunk_no))
                    .await
                    .map_err(failed("writing a high watermark"))?;
                progress = next;
                if snap.max_rows_per_second > 0 {
                    let due = Duration::from_secs_f64(n as f64 / snap.max_rows_per_second as f64);
                    tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
                }
                if done {
                    finished.insert((p.table.clone(), p.request));
                    break;
                }
                match now {
                    Some(t) => {
                        if changed {
                            tracing::info!(source = name, table = %p.table,
                                "table altered during a chunk read: chunk read again with the new layout");
                        }
                        table = t;
                    }
                    None => {
                        store.save_snapshot(&name, generation, &retire(&progress)).await?;
                        finished.insert((p.table.clone(), p.request));
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(snap.poll_interval) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Reads the next chunks of `table` after `after` between one pair of
/// watermarks: one chunk on the first reader, or — with several readers — up
/// to one chunk per reader in parallel over key ranges split at
/// [`Snapshotter::boundaries`]. Returns the rows in key order with the last
/// key, and whether the table ended.
pub async fn read_chunks<R: Snapshotter>(
    readers: &mut [R],
    table: &R::Table,
    after: Option<&[String]>,
    chunk_rows: usize,
) -> Result<(Chunk, bool), R::Error> {
    if readers.len() <= 1 {
        let Some(r) = readers.first_mut() else { return Ok((Chunk::default(), true)) };
        let chunk = r.read_chunk(table, after, chunk_rows).await?;
        let done = chunk.rows.len() < chunk_rows;
        return Ok((chunk, done));
    }
    let bounds = readers[0].boundaries(table, after, chunk_rows, readers.len() - 1).await?;
    // (after, up to) per reader; the last range is open and ends at `chunk_rows` rows.
    type Key = Option<Vec<String>>;
    let mut ranges: Vec<(Key, Key)> = Vec::with_capacity(bounds.len() + 1);
    let mut from = after.map(<[String]>::to_vec);
    for b in bounds {
        ranges.push((from.take(), Some(b.clone())));
        from = Some(b);
    }
    ranges.push((from, None));
    let reads =
        readers.iter_mut().zip(&ranges).map(|(r, (a, u))| r.read_range(table, a.as_deref(), u.as_deref(), chunk_rows));
    let parts = futures::future::try_join_all(reads).await?;
    let done = parts.last().is_none_or(|p| p.rows.len() < chunk_rows);
    let mut out = Chunk::default();
    for p in parts {
        out.rows.extend(p.rows);
        if p.last_key.is_some() {
            out.last_key = p.last_key;
        }
    }
    Ok((out, done))
}

/// Logs and exports a delivered chunk's progress (rows done / estimate,
/// rate, ETA).
pub fn report(source: &str, p: &SnapshotProgress) {
    let t = &p.table;
    let elapsed = ((p.updated_ms - p.started_ms).max(1) as f64) / 1000.0;
    let rate = p.rows as f64 / elapsed;
    let left = p.estimate.saturating_sub(p.rows) as f64;
    let eta = if rate > 0.0 && p.state != SnapshotState::Done { left / rate } else { 0.0 };
    let labels = [source, &t.tenant, &t.database, &t.table];
    metrics::SNAPSHOT_ROWS.with_label_values(&labels).set(p.rows as f64);
    metrics::SNAPSHOT_ESTIMATE.with_label_values(&labels).set(p.estimate as f64);
    metrics::SNAPSHOT_DONE.with_label_values(&labels).set(f64::from(u8::from(p.state == SnapshotState::Done)));
    tracing::info!(source, table = %t, rows = p.rows,
        estimate = p.estimate, chunks = p.chunks, rows_per_sec = rate as u64, eta_secs = eta as u64,
        state = p.state.as_str(), "snapshot progress");
}

/// One terminal line of progress.
pub fn progress_line(p: &SnapshotProgress, now_ms: i64) -> String {
    let t = &p.table;
    let end = if p.state == SnapshotState::Done { p.updated_ms } else { now_ms };
    let elapsed = ((end - p.started_ms).max(1) as f64) / 1000.0;
    let rate = p.rows as f64 / elapsed;
    let pct = if p.estimate > 0 { (p.rows as f64 * 100.0 / p.estimate as f64).min(100.0) } else { 0.0 };
    let eta = match p.state {
        SnapshotState::Done => "done".to_owned(),
        _ if rate > 0.0 => format!("ETA {:.0}s", p.estimate.saturating_sub(p.rows) as f64 / rate),
        _ => p.state.as_str().to_owned(),
    };
    format!("{t}: {} / ~{} rows ({pct:.0}%), {:.0} rows/s, {eta}", p.rows, p.estimate, rate)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lablake_model::SourcePosition;
    use lablake_postgres::PgOrigin;

    #[test]
    fn progress_lines_show_rows_rate_and_eta() {
        let p = SnapshotProgress {
            table: TableId::new("acme", "lab_acme", "results"),
            request: 1,
            state: SnapshotState::Running,
            last_key: None,
            chunks: 2,
            rows: 20_000,
            estimate: 100_000,
            started_ms: 0,
            updated_ms: 10_000,
        };
        assert_eq!(
            progress_line(&p, 10_000),
            "acme/lab_acme.results: 20000 / ~100000 rows (20%), 2000 rows/s, ETA 40s"
        );
        let done = SnapshotProgress { state: SnapshotState::Done, rows: 100_000, updated_ms: 20_000, ..p };
        assert_eq!(
            progress_line(&done, 99_000),
            "acme/lab_acme.results: 100000 / ~100000 rows (100%), 5000 rows/s, done"
        );
    }

    fn table() -> (TableId, Arc<TableSchema>) {
        use lablake_model::{Column, ColumnType};
        let schema = TableSchema::new(
            vec![
                Column { name: "id".into(), ty: ColumnType::Int { bytes: 8, unsigned: false }, nullable: false },
                Column { name: "v".into(), ty: ColumnType::String, nullable: true },
            ],
            vec![0],
        );
        (TableId { tenant: "acme".into(), database: "lab_acme".into(), table: "orders".into() }, schema)
    }

    fn progress(t: &TableId) -> SnapshotProgress {
        SnapshotProgress {
            table: t.clone(),
            request: 1,
            state: SnapshotState::Running,
            last_key: Some(vec!["3".into()]),
            chunks: 1,
            rows: 3,
            estimate: 3,
            started_ms: 0,
            updated_ms: 0,
        }
    }

    fn change(t: &TableId, schema: &Arc<TableSchema>, op: Op, id: i64) -> ChangeEvent {
        let row = vec![Value::Int(id), Value::String("streamed".into())];
        ChangeEvent {
            table: t.clone(),
            op,
            schema: schema.clone(),
            before: None,
            after: (op != Op::Truncate).then_some(row),
            source: PgOrigin::new("pg").source(1, 0, SourcePosition::postgres(1, 0)),
            ts_ms: 0,
        }
    }

    async fn chunk_through(nonce: &str, in_window: &[ChangeEvent]) -> Option<Vec<i64>> {
        let (t, schema) = table();
        let (tx, rx) = mpsc::channel(1);
        let mut w = Windows::new("n1".into(), rx);
        let origin = PgOrigin::new("pg");
        let mark = |high| {
            Watermark::lsn(watermark_id(high, nonce, 1), origin.source(0x500, 0, SourcePosition::postgres(0x500, 0)))
        };
        assert!(w.watermark(&mark(false)).await.unwrap().is_none());
        let mut scratch = Vec::new();
        for e in in_window {
            w.observe(e, &mut scratch);
        }
        let rows = (1..=3).map(|i| vec![Value::Int(i), Value::String("read".into())]).collect();
        tx.send(ChunkMsg { id: "n1:1".into(), schema, rows, progress: progress(&t) }).await.unwrap();
        let (events, p) = w.watermark(&mark(true)).await.unwrap()?;
        assert_eq!(p, progress(&t));
        assert!(events.iter().all(|e| e.op == Op::Read && e.source.position >= SourcePosition::postgres(0x500, 0)));
        Some(events.iter().map(|e| if let Value::Int(i) = e.after.as_ref().unwrap()[0] { i } else { 0 }).collect())
    }

    #[tokio::test]
    async fn keys_changed_between_the_watermarks_are_dropped_from_the_chunk() {
        let (t, schema) = table();
        let other = TableId { table: "results".into(), ..t.clone() };
        assert_eq!(chunk_through("n1", &[]).await, Some(vec![1, 2, 3]));
        let changed = [change(&t, &schema, Op::Update, 2), change(&other, &schema, Op::Update, 3)];
        assert_eq!(chunk_through("n1", &changed).await, Some(vec![1, 3]));
        // A truncate of the table in the window: nothing of the chunk survives.
        assert_eq!(chunk_through("n1", &[change(&t, &schema, Op::Truncate, 0)]).await, Some(vec![]));
        // Watermarks of another process (another nonce) are ignored.
        assert_eq!(chunk_through("old", &[]).await, None);
    }

    #[test]
    fn watermark_ids_round_trip() {
        assert_eq!(watermark_id(false, "n1", 7), "l:n1:7");
        assert_eq!(watermark_id(true, "n1", 7), "h:n1:7");
    }
}
