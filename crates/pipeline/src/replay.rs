//! Replay (ADR 0013): a tenant's curated data rebuilt from its topics into a
//! new generation, checked against the active one, then switched on by one
//! conditional write.
//!
//! The builder is the live path's own [`Curator`] in
//! [`GenerationMode::Build`]: the same decoding, batching, two-phase commit
//! and fencing, reading every partition from offset 0 into the new
//! generation's prefix (`<tenant>/g<N>/curated/…`), manifest, status and
//! consumer group (`<group>-g<N>`). A killed replay is run again and
//! continues from the new generation's own checkpoints. The live curators
//! keep curating the active generation meanwhile.
//!
//! Steps, each safe to repeat after a crash:
//! 1. **Refusal** before anything is written: every partition of the
//!    tenant's topics must still start at offset 0 (retention or a
//!    truncation took records a rebuild needs otherwise).
//! 2. **Begin**: the generation record (`building`, with the code version
//!    and configuration hash) is saved conditionally.
//! 3. **Build** until every partition reached the log end seen when the
//!    build (or its resumption) started; progress per table is printed.
//! 4. **Verify**: per table, row count and content digest of the rebuilt and
//!    the active generation, both up to the same offset of every partition
//!    (the live generation moves meanwhile). Equal, or the difference
//!    accepted by the operator: `verified`.
//! 5. **Cut-over**: `active = N` in one conditional write. The live curators
//!    read the pointer at every discovery, drop the tenant's partitions of
//!    the old generation and go on in the new one from its checkpoints,
//!    taking the generation's lease (which fences this builder, should it
//!    still run). The Snowflake sink follows the pointer too.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use lablake_bus::{BusConfig, ChangeConsumer};
use lablake_checkpoint::{
    BatchStore, GenerationState, GenerationStore, Generations, LeaseStore, PartitionRef, generation_group,
};
use lablake_lake::{Lake, decode_parquet};
use lablake_model::{TableId, topic};
use tokio::sync::watch;

use crate::curator::{CurateConfig, Curator, GenerationMode};
use crate::error::{Context, PipelineError};
use crate::lane::Lane;
use crate::metrics;

/// What a replay needs.
pub struct Replay<S> {
    pub bus: BusConfig,
    pub lake: Lake,
    /// A handle on the checkpoint store (any generation's: the replay scopes it).
    pub store: Arc<S>,
    /// Every curation lane as the live process runs it (`UserTablesConfig::curators`).
    pub lanes: Vec<(Lane, CurateConfig)>,
    pub tenant: String,
    /// Cut over even when the rebuilt data differs from the active
    /// generation's (a replay after a curation fix is meant to differ).
    pub accept_difference: bool,
    /// Stop after the verification gate, without the cut-over.
    pub no_cut_over: bool,
    /// The Lablake version building, recorded with the generation.
    pub code_version: String,
    /// A hash of the curation configuration, recorded with the generation.
    pub config_hash: String,
    /// How often progress is printed.
    pub progress_every: Duration,
}

/// A table's rows in one generation, as the verification gate compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct TableDigest {
    /// Live rows (newest change per primary key, deleted keys left out).
    pub rows: u64,
    /// Order-independent digest of the live rows' keys, positions and
    /// values (the CDC metadata columns other than `_position` left out).
    pub digest: u64,
}

/// One table's comparison.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableCheck {
    pub table: String,
    pub active: TableDigest,
    pub rebuilt: TableDigest,
}

impl TableCheck {
    pub fn equal(&self) -> bool {
        self.active == self.rebuilt
    }
}

/// What a replay did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayReport {
    pub tenant: String,
    pub generation: u32,
    pub previous: u32,
    pub tables: Vec<TableCheck>,
    pub accepted_difference: bool,
    pub cut_over: bool,
    /// Records this run's builds curated into the generation, and how long
    /// they took (for the replay rate; 0 when nothing was left to build).
    pub built_records: i64,
    pub build_secs: f64,
}

/// What one build did.
#[derive(Debug, Clone, Copy, Default)]
struct Built {
    caught_up: bool,
    records: i64,
    secs: f64,
}

/// One partition of the tenant's topics, with the lane (consumer group) that curates it.
#[derive(Debug, Clone)]
struct Part {
    topic: String,
    partition: i32,
    group: String,
}

impl<S: LeaseStore + BatchStore + GenerationStore + 'static> Replay<S> {
    /// Runs the replay to its cut-over (or to the gate with `no_cut_over`).
    /// `shutdown` stops the build early (nothing is lost: run it again).
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<ReplayReport, PipelineError> {
        let tenant = self.tenant.clone();
        let mut gens = self.store.load_generations(&tenant).await.context("reading the tenant's generations")?;
        let previous = gens.active;
        let parts = self.partitions().await?;
        if parts.is_empty() {
            return Err(PipelineError::Refused(format!("tenant `{tenant}` has no topics to replay")));
        }
        let n = match gens.pending().map(|p| p.generation) {
            Some(n) => {
                tracing::info!(tenant, generation = n, "resuming the replay of a pending generation");
                n
            }
            None => {
                self.refuse_without_full_history(&parts, previous).await?;
                let n = gens.begin(&self.code_version, &self.config_hash, metrics::now_ms());
                gens.version = self.store.save_generations(&gens).await.context("recording the new generation")?;
                tracing::info!(tenant, generation = n, "replay started");
                n
            }
        };
        println!("replay: tenant {tenant}: building generation {n} (active: {previous})");
        let state = gens.record(n).map(|r| r.state);
        let mut tables = Vec::new();
        let mut built = Built::default();
        if state == Some(GenerationState::Building) {
            let target = self.log_ends(&parts).await?;
            built = self.build(n, &parts, &target, shutdown.clone()).await?;
            if !built.caught_up {
                return Err(PipelineError::Refused(format!(
                    "replay of tenant `{tenant}` interrupted before generation {n} caught up; run it again to continue"
                )));
            }
            tables = self.verify(n, previous, &parts).await?;
            let differ: Vec<&TableCheck> = tables.iter().filter(|t| !t.equal()).collect();
            for t in &tables {
                println!(
                    "verify: {}: active {} rows digest {:016x}, rebuilt {} rows digest {:016x}: {}",
                    t.table,
                    t.active.rows,
                    t.active.digest,
                    t.rebuilt.rows,
                    t.rebuilt.digest,
                    if t.equal() { "equal" } else { "DIFFERENT" }
                );
            }
            if !differ.is_empty() && !self.accept_difference {
                return Err(PipelineError::Refused(format!(
                    "generation {n} of tenant `{tenant}` differs from the active generation {previous} in {} table(s) \
                     ({}); nothing was switched. If the difference is intended (a curation fix), run the replay again \
                     with --accept-difference",
                    differ.len(),
                    differ.iter().map(|t| t.table.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            let report = serde_json::to_string(&tables).unwrap_or_default();
            self.update(|g| g.verified(n, report.clone(), metrics::now_ms())).await?;
        }
        if !self.no_cut_over && state == Some(GenerationState::Verified) {
            // Verified by an earlier run: catch up with what came since.
            let target = self.log_ends(&parts).await?;
            let more = self.build(n, &parts, &target, shutdown.clone()).await?;
            if !more.caught_up {
                return Err(PipelineError::Refused(format!(
                    "replay of tenant `{tenant}` interrupted before generation {n} caught up; run it again to continue"
                )));
            }
            built.records += more.records;
            built.secs += more.secs;
        }
        if self.no_cut_over {
            return Ok(ReplayReport {
                tenant,
                generation: n,
                previous,
                tables,
                accepted_difference: self.accept_difference,
                cut_over: false,
                built_records: built.records,
                build_secs: built.secs,
            });
        }
        lablake_failpoint::failpoint("replay.before_cutover");
        let g = self.update(|g| g.cut_over(n, metrics::now_ms())).await?;
        lablake_failpoint::failpoint("replay.after_cutover");
        tracing::info!(tenant, generation = n, previous = g.previous, "cut over");
        println!("replay: tenant {tenant}: generation {n} is active (was {previous})");
        Ok(ReplayReport {
            tenant,
            generation: n,
            previous,
            tables,
            accepted_difference: self.accept_difference,
            cut_over: true,
            built_records: built.records,
            build_secs: built.secs,
        })
    }

    /// Applies `change` to the stored generations in one conditional write
    /// (read again and retried when another writer came in between).
    async fn update(
        &self,
        change: impl Fn(&mut Generations) -> Result<(), lablake_checkpoint::CheckpointError>,
    ) -> Result<Generations, PipelineError> {
        for _ in 0..5 {
            let mut g = self.store.load_generations(&self.tenant).await.context("reading the tenant's generations")?;
            change(&mut g).context("changing the tenant's generations")?;
            match self.store.save_generations(&g).await {
                Ok(v) => {
                    g.version = v;
                    return Ok(g);
                }
                Err(lablake_checkpoint::CheckpointError::Fenced(_)) => continue,
                Err(e) => return Err(e).context("saving the tenant's generations"),
            }
        }
        Err(PipelineError::Refused(format!("the generations of tenant `{}` keep changing; try again", self.tenant)))
    }

    /// Every partition of the tenant's table topics, with its lane's group.
    async fn partitions(&self) -> Result<Vec<Part>, PipelineError> {
        let consumer = ChangeConsumer::new(&self.bus, "lablake-replay")?;
        let prefix = format!("{}.", self.bus.topic_prefix);
        let mut out = Vec::new();
        for (t, n) in consumer.topics(&prefix).await.context("listing the tenant's topics")? {
            if topic::tenant_of_topic(&self.bus.topic_prefix, &t) != Some(self.tenant.as_str()) {
                continue;
            }
            let Some(name) = topic::table_of_topic(&self.bus.topic_prefix, &t) else { continue };
            let Some((_, curate)) = self.lanes.iter().find(|(lane, _)| lane.owns(name)) else { continue };
            for p in 0..n {
                out.push(Part { topic: t.clone(), partition: p, group: curate.group.clone() });
            }
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    }

    /// Refuses, before anything is written, when a partition's log no longer
    /// holds the whole history the active generation curated.
    async fn refuse_without_full_history(&self, parts: &[Part], active: u32) -> Result<(), PipelineError> {
        let consumer = ChangeConsumer::new(&self.bus, "lablake-replay")?;
        let curated = self.next_offsets(parts, active).await?;
        let mut missing = Vec::new();
        for p in parts {
            let (low, high) = consumer.watermarks(&p.topic, p.partition).await.context("reading a log start")?;
            let done = curated.get(&(p.topic.clone(), p.partition)).copied().unwrap_or(0);
            if let Some(gap) = history_gap(low, high, done) {
                missing.push(format!("{}/{}: {gap}", p.topic, p.partition));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(PipelineError::Refused(format!(
            "cannot replay tenant `{}` from its topics: their history is incomplete (retention or a truncation \
             removed records): {}. Nothing was written. Rebuild from the source instead: a snapshot into a new \
             generation (`lablake replay --from-snapshot`, not built yet: ADR 0013), or take a snapshot of the tables \
             with `lablake snapshot`",
            self.tenant,
            missing.join("; ")
        )))
    }

    /// The log end of every partition now: what the build must reach.
    async fn log_ends(&self, parts: &[Part]) -> Result<HashMap<(String, i32), i64>, PipelineError> {
        let consumer = ChangeConsumer::new(&self.bus, "lablake-replay")?;
        let mut out = HashMap::new();
        for p in parts {
            let (_, high) = consumer.watermarks(&p.topic, p.partition).await.context("reading a log end")?;
            out.insert((p.topic.clone(), p.partition), high);
        }
        Ok(out)
    }

    /// Runs the builder curators of generation `n` until every partition's
    /// checkpoint reached `target` (then they drain and stop); not caught up:
    /// stopped by `shutdown` first.
    async fn build(
        &self,
        n: u32,
        parts: &[Part],
        target: &HashMap<(String, i32), i64>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Built, PipelineError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (lane, curate) in &self.lanes {
            let mut curate = curate.clone();
            curate.tenants = vec![self.tenant.clone()];
            let curator = Curator {
                bus: self.bus.clone(),
                curate,
                lake: self.lake.clone(),
                store: self.store.clone(),
                shard: "replay".into(),
                lane: lane.clone(),
                inherit_group: None,
                lease: crate::supervise::LeaseHeld::default(),
                generations: GenerationMode::Build(n),
            };
            tasks.spawn(curator.run(stop_rx.clone()));
        }
        let started = Instant::now();
        let first = self.next_offsets(parts, n).await?;
        let mut last = (Instant::now(), first.clone());
        // Caught up is checked every half second; progress is printed every
        // `progress_every`.
        let mut tick = tokio::time::interval(Duration::from_millis(500).min(self.progress_every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let caught_up = loop {
            tokio::select! {
                _ = shutdown.changed() => break false,
                done = tasks.join_next() => match done {
                    Some(Ok(Err(e))) => return Err(e.within_context(format!("the replay of tenant `{}`", self.tenant))),
                    Some(Err(e)) => return Err(PipelineError::task("the replay's curator", e)),
                    Some(Ok(Ok(()))) | None => {
                        return Err(PipelineError::Invariant("the replay's curator stopped by itself".into()));
                    }
                },
                _ = tick.tick() => {
                    let now = self.next_offsets(parts, n).await?;
                    let all = parts.iter().all(|p| {
                        let key = (p.topic.clone(), p.partition);
                        now.get(&key).copied().unwrap_or(0) >= target.get(&key).copied().unwrap_or(0)
                    });
                    if !all && last.0.elapsed() < self.progress_every {
                        continue;
                    }
                    let secs = last.0.elapsed().as_secs_f64().max(0.001);
                    let mut by_table: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
                    for p in parts {
                        let key = (p.topic.clone(), p.partition);
                        let (done, before) = (now.get(&key).copied().unwrap_or(0), last.1.get(&key).copied().unwrap_or(0));
                        let goal = target.get(&key).copied().unwrap_or(0);
                        let e = by_table.entry(p.topic.as_str()).or_default();
                        e.0 += done.min(goal);
                        e.1 += goal;
                        e.2 += done - before;
                    }
                    for (t, (done, goal, moved)) in by_table {
                        let rate = moved as f64 / secs;
                        let eta = if done >= goal { "done".to_owned() } else if rate > 0.0 {
                            format!("ETA {:.0}s", (goal - done) as f64 / rate)
                        } else { "ETA -".to_owned() };
                        println!("replay: {t}: {done}/{goal} records ({:.0}/s) {eta}", rate);
                        metrics::REPLAY_RECORDS.with_label_values(&[self.tenant.as_str()]).set(done as f64);
                    }
                    last = (Instant::now(), now);
                    if all {
                        break true;
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(r) => r?,
                Err(e) => return Err(PipelineError::task("the replay's curator", e)),
            }
        }
        let done = self.next_offsets(parts, n).await?;
        let records = done.values().sum::<i64>() - first.values().sum::<i64>();
        let secs = started.elapsed().as_secs_f64();
        tracing::info!(tenant = self.tenant, generation = n, secs, records, caught_up, "build stopped");
        Ok(Built { caught_up, records, secs })
    }

    /// Each partition's next offset in generation `data_gen`'s checkpoints
    /// (a pending batch counts from its first offset).
    async fn next_offsets(&self, parts: &[Part], data_gen: u32) -> Result<HashMap<(String, i32), i64>, PipelineError> {
        let mut out = HashMap::new();
        for p in parts {
            let at = PartitionRef::new(generation_group(&p.group, data_gen), &p.topic, p.partition);
            let cp = self.store.load_partition(&at).await.context("reading a replay checkpoint")?;
            let next = cp.map_or(0, |c| c.pending.as_ref().map_or(c.next_offset, |i| i.first_offset));
            out.insert((p.topic.clone(), p.partition), next);
        }
        Ok(out)
    }

    /// The verification gate: every table of either generation, digested up
    /// to the same offset of every partition in both.
    async fn verify(&self, n: u32, active: u32, parts: &[Part]) -> Result<Vec<TableCheck>, PipelineError> {
        let rebuilt = self.next_offsets(parts, n).await?;
        let live = self.next_offsets(parts, active).await?;
        let cut: HashMap<(String, i32), i64> =
            rebuilt.iter().map(|(k, v)| (k.clone(), (*v).min(live.get(k).copied().unwrap_or(0)))).collect();
        let (new_store, old_store) = (self.store.in_generation(n), self.store.in_generation(active));
        let mut tables: Vec<TableId> = Vec::new();
        for s in [&new_store, &old_store] {
            for row in s.status(Some(&self.tenant)).await.context("reading the tenant's tables")? {
                let t = TableId::new(&row.tenant, &row.database, &row.table);
                if row.table != "*" && !tables.contains(&t) {
                    tables.push(t);
                }
            }
        }
        tables.sort();
        let mut out = Vec::new();
        for t in tables {
            let a = digest_table(&old_store, &self.lake, &t, &cut).await?;
            let b = digest_table(&new_store, &self.lake, &t, &cut).await?;
            out.push(TableCheck { table: format!("{}.{}", t.database, t.table), active: a, rebuilt: b });
        }
        Ok(out)
    }
}

/// Why a partition's log cannot rebuild what was curated from it: `low` and
/// `high` its log start and end, `curated` the active generation's next
/// offset there. `None`: the log holds it all.
fn history_gap(low: i64, high: i64, curated: i64) -> Option<String> {
    if low > 0 {
        return Some(format!("the log starts at offset {low}: offsets 0..{low} are gone (ends at {high})"));
    }
    if high < curated {
        return Some(format!(
            "the log ends at offset {high} but offsets up to {curated} were curated (topic recreated or truncated)"
        ));
    }
    None
}

/// Digests one table of a generation (the store handle's): the newest change
/// per primary key among the rows below `cut` of their partition. Holds one
/// entry per key (key bytes, position, 8-byte row digest) in memory.
pub async fn digest_table<S: BatchStore>(
    store: &S,
    lake: &Lake,
    table: &TableId,
    cut: &HashMap<(String, i32), i64>,
) -> Result<TableDigest, PipelineError> {
    let mut latest: HashMap<String, (String, Option<u64>)> = HashMap::new();
    for e in store.manifest(table).await.context("reading a manifest")? {
        let limit = cut.get(&(e.topic.clone(), e.partition)).copied().unwrap_or(0);
        if e.first_offset >= limit {
            continue;
        }
        let bytes = lake.get(&table.tenant, &e.object_key).await?;
        let batches = tokio::task::spawn_blocking(move || decode_parquet(bytes))
            .await
            .map_err(|e| PipelineError::task("decoding a curated file", e))??;
        for batch in batches {
            fold_batch(&batch, limit, &mut latest).map_err(|reason| {
                PipelineError::Invariant(format!("curated file {} of {table}: {reason}", e.object_key))
            })?;
        }
    }
    Ok(finish(&latest))
}

/// The digest of the live rows of `latest`.
fn finish(latest: &HashMap<String, (String, Option<u64>)>) -> TableDigest {
    let mut d = TableDigest::default();
    for (key, (_, row)) in latest {
        if let Some(row) = row {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            row.hash(&mut h);
            d.rows += 1;
            d.digest = d.digest.wrapping_add(h.finish());
        }
    }
    d
}

/// Folds one curated batch into `latest` (key → newest position and its row
/// digest, `None` for a delete), leaving out rows at or above `limit`.
fn fold_batch(
    batch: &arrow::record_batch::RecordBatch,
    limit: i64,
    latest: &mut HashMap<String, (String, Option<u64>)>,
) -> Result<(), String> {
    use lablake_curate::meta;
    let schema = batch.schema();
    let pk = lablake_curate::primary_key_indices(&schema);
    if pk.is_empty() {
        return Err("no primary key in the file's metadata".into());
    }
    let col = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("no column {name}"));
    let pos = col(meta::POSITION)?;
    let op = col(meta::OP)?;
    let offset = col(meta::KAFKA_OFFSET)?;
    // A file of another shape is an error, never a panic.
    let mistyped = |name: &str| format!("column {name} has an unexpected type");
    let pos = pos.as_string_opt::<i32>().ok_or_else(|| mistyped(meta::POSITION))?;
    let op = op.as_string_opt::<i32>().ok_or_else(|| mistyped(meta::OP))?;
    let offset =
        offset.as_primitive_opt::<arrow::datatypes::Int64Type>().ok_or_else(|| mistyped(meta::KAFKA_OFFSET))?;
    let skip = [
        meta::OP,
        meta::COMMIT_TS,
        meta::GTID,
        meta::SOURCE,
        meta::KAFKA_PARTITION,
        meta::KAFKA_OFFSET,
        meta::UNCHANGED,
    ];
    let mut values: Vec<(&str, usize)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !skip.contains(&f.name().as_str()))
        .map(|(i, f)| (f.name().as_str(), i))
        .collect();
    values.sort();
    let opts = FormatOptions::default();
    let fmt = |i: usize| ArrayFormatter::try_new(batch.column(i).as_ref(), &opts).map_err(|e| e.to_string());
    let keys: Vec<ArrayFormatter<'_>> = pk.iter().map(|i| fmt(*i)).collect::<Result<_, _>>()?;
    let vals: Vec<(&str, &dyn arrow::array::Array, ArrayFormatter<'_>)> =
        values.iter().map(|(n, i)| fmt(*i).map(|f| (*n, batch.column(*i).as_ref(), f))).collect::<Result<_, _>>()?;
    let mut text = String::new();
    for r in 0..batch.num_rows() {
        if offset.value(r) >= limit {
            continue;
        }
        let key = keys.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join("\u{1f}");
        let p = pos.value(r);
        if latest.get(&key).is_some_and(|(old, _)| old.as_str() >= p) {
            continue;
        }
        let row = if op.value(r) == "d" {
            None
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (name, column, f) in &vals {
                name.hash(&mut h);
                if column.is_null(r) {
                    0u8.hash(&mut h);
                } else {
                    1u8.hash(&mut h);
                    text.clear();
                    write!(text, "{}", f.value(r)).map_err(|e| e.to_string())?;
                    text.hash(&mut h);
                }
            }
            Some(h.finish())
        };
        latest.insert(key, (p.to_owned(), row));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    fn batch(rows: &[(i64, &str, &str, Option<&str>, i64)]) -> RecordBatch {
        let mut md = HashMap::new();
        md.insert("lablake.primary_key".to_owned(), "id".to_owned());
        let schema = Arc::new(
            Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("flag", DataType::Utf8, true),
                Field::new("_op", DataType::Utf8, false),
                Field::new("_position", DataType::Utf8, false),
                Field::new("_kafka_partition", DataType::Int32, false),
                Field::new("_kafka_offset", DataType::Int64, false),
            ])
            .with_metadata(md),
        );
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            Arc::new(Int32Array::from(vec![0; rows.len()])),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn digest(batches: &[RecordBatch], limit: i64) -> TableDigest {
        let mut latest = HashMap::new();
        for b in batches {
            fold_batch(b, limit, &mut latest).unwrap();
        }
        finish(&latest)
    }

    #[test]
    fn a_log_without_the_whole_history_is_named() {
        assert_eq!(history_gap(0, 100, 100), None);
        assert_eq!(history_gap(0, 120, 100), None, "records not curated yet are fine");
        assert_eq!(history_gap(0, 0, 0), None);
        assert!(history_gap(5, 100, 100).is_some_and(|g| g.contains("starts at offset 5")));
        assert!(history_gap(0, 40, 100).is_some_and(|g| g.contains("recreated")));
    }

    #[test]
    fn the_digest_depends_on_the_rows_not_on_how_files_cut_them() {
        let rows = [
            (1, "c", "p1", Some("H"), 0),
            (2, "c", "p2", None, 1),
            (1, "u", "p3", Some("L"), 2),
            (3, "c", "p4", Some("A"), 3),
            (3, "d", "p5", None, 4),
        ];
        let whole = digest(&[batch(&rows)], 10);
        let split = digest(&[batch(&rows[..2]), batch(&rows[2..])], 10);
        assert_eq!(whole, split);
        assert_eq!(whole.rows, 2, "key 3 was deleted");
        // A different value, a missing update or a row above the cut changes it.
        let mut changed = rows;
        changed[2].3 = Some("HH");
        assert_ne!(digest(&[batch(&changed)], 10), whole);
        assert_ne!(digest(&[batch(&rows[..2])], 10), whole);
        assert_eq!(digest(&[batch(&rows)], 2), digest(&[batch(&rows[..2])], 10));
        // Null and the empty string differ.
        let mut empty = rows;
        empty[1].3 = Some("");
        assert_ne!(digest(&[batch(&empty)], 10), whole);
        // A repeated (re-delivered) change does not count twice.
        let mut again = rows.to_vec();
        again.push(rows[0]);
        assert_eq!(digest(&[batch(&again)], 10), whole);
    }
}
