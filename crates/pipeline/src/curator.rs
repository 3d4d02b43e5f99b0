//! The curation stage: tenant topics → curated Parquet files, with offsets,
//! manifest and status in the checkpoint store.
//!
//! Per topic-partition, each batch goes through: intent recorded
//! (`begin_batch`) → dead letters acknowledged → Parquet written create-only →
//! `commit_batch`. A restart that finds a pending intent rebuilds exactly that
//! offset range into exactly that key, so files never overlap and a retried
//! batch never makes a second file.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use lablake_bus::{BusConfig, ChangeConsumer, ChangeProducer, DeadLetter, DeliveryFuture, Record};
use lablake_checkpoint::{
    BatchCommit, BatchIntent, BatchStore, Fence, GenerationStore, HighWater, LeaseName, LeaseStore, PartitionRef,
    generation_group,
};
use lablake_curate::toast::Resolution;
use lablake_curate::{BatchBuilder, BatchPolicy, BatchSummary, CloseReason, CurateError, OpenBatch};
use lablake_lake::{Lake, PutOutcome, curated_key, curated_prefix, decode_parquet, encode_parquet, parse_curated_key};
use lablake_model::envelope::Decoder;
use lablake_model::{ChangeEvent, Date, Op, TableId, topic};

/// A partition's high-water mark as the curator keeps it while records
/// arrive ([`HighWater`] is its stored form): raw key bytes, buffers
/// reused, so checking and advancing it allocates nothing per record once
/// warm. A record it covers — a lower position, or this position with one of
/// these keys — is a re-delivery.
#[derive(Debug, Default, PartialEq)]
struct Mark {
    position: String,
    keys: Vec<Vec<u8>>,
}

impl Mark {
    fn from_stored(h: &HighWater) -> Option<Mark> {
        let keys = h.keys.iter().map(|k| unhex(k)).collect::<Option<Vec<_>>>()?;
        Some(Mark { position: h.position.clone(), keys })
    }

    fn stored(&self) -> HighWater {
        HighWater { position: self.position.clone(), keys: self.keys.iter().map(|k| hex(k)).collect() }
    }

    fn covers(&self, position: &str, key: &[u8]) -> bool {
        position < self.position.as_str() || (position == self.position && self.keys.iter().any(|k| k == key))
    }

    /// After curating a record at `position` with `key` (which it did not cover).
    fn advance(&mut self, position: &str, key: &[u8]) {
        if position == self.position {
            self.keys.push(key.to_vec());
        } else if position > self.position.as_str() {
            self.position.clear();
            self.position.push_str(position);
            self.keys.truncate(1);
            match self.keys.first_mut() {
                Some(k) => {
                    k.clear();
                    k.extend_from_slice(key);
                }
                None => self.keys.push(key.to_vec()),
            }
        }
    }
}

/// The bytes of a lower-case hex string (`None`: not hex).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Lower-case hex of a record key (the form stored high-water marks keep).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// How many records before the resume offset a partition's fetch starts
/// (the records before it are skipped): the producer's largest batch.
const ASSIGN_LOOKBACK: i64 = lablake_bus::MAX_BATCH_RECORDS as i64;
use serde::Deserialize;
use tokio::sync::watch;

use crate::error::{Context, PipelineError};
use crate::lane::Lane;
use crate::metrics;

/// `[curate]`: the curation consumers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurateConfig {
    /// Consumer group name; checkpoints and leases are kept per group.
    #[serde(default = "default_group")]
    pub group: String,
    /// When batches close.
    #[serde(default)]
    pub batch: BatchPolicy,
    /// How often new topics (tenants, tables) are discovered, e.g. `"5s"`.
    #[serde(default = "default_discovery", with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Only these tenants (empty: all).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Byte budget of all open batches together (approximate in-memory size).
    /// Above it the largest open batch is closed early, so memory does not grow
    /// with the number of partitions.
    #[serde(default = "default_open_bytes")]
    pub max_open_bytes: usize,
    /// How the partitions of the group are shared: `all` (one curator per
    /// group and shard takes every partition) or `group` (Kafka's consumer
    /// group spreads them over every instance; each partition is fenced by
    /// a lease of its own, see ADR 0011).
    #[serde(default)]
    pub assignment: Assignment,
    /// With `assignment = "group"`: a member silent this long loses its
    /// partitions to the others (Kafka's `session.timeout.ms`), e.g. `"10s"`.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
}

/// `curate.assignment`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Every partition of every matching topic, fenced by the shard's lease.
    #[default]
    All,
    /// The partitions Kafka's group assignment gives this instance.
    Group,
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_open_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_group() -> String {
    "curate".into()
}
fn default_discovery() -> Duration {
    Duration::from_secs(5)
}

impl Default for CurateConfig {
    fn default() -> Self {
        CurateConfig {
            group: default_group(),
            batch: BatchPolicy::default(),
            discovery_interval: default_discovery(),
            tenants: Vec::new(),
            max_open_bytes: default_open_bytes(),
            assignment: Assignment::All,
            session_timeout: default_session_timeout(),
        }
    }
}

impl CurateConfig {
    /// Checks the bounds; the error names the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.max_open_bytes < self.batch.max_bytes.min(1024 * 1024) {
            return Err(("curate.max_open_bytes".into(), "must be at least 1 MiB (or curate.batch.max_bytes)".into()));
        }
        if self.batch.max_rows == 0 {
            return Err(("curate.batch.max_rows".into(), "must be at least 1".into()));
        }
        if !(Duration::from_secs(3)..=Duration::from_secs(300)).contains(&self.session_timeout) {
            return Err(("curate.session_timeout".into(), "must be between 3s and 5m".into()));
        }
        Ok(())
    }
}

/// What the curator needs.
pub struct Curator<S> {
    pub bus: BusConfig,
    pub curate: CurateConfig,
    pub lake: Lake,
    pub store: Arc<S>,
    /// Shard name of this consumer within its group (one lease per shard).
    pub shard: String,
    /// The tables whose topics this curator consumes.
    pub lane: Lane,
    /// A group whose checkpoint a partition starts from when this group has
    /// none (the core group, when the user-defined lane is enabled on a
    /// running deployment: its topics are not curated again from offset 0).
    pub inherit_group: Option<String>,
    /// The curation lease across in-process restarts.
    pub lease: crate::supervise::LeaseHeld,
    /// Which generation of each tenant's curated data this curator writes.
    pub generations: GenerationMode,
}

/// Which generation of a tenant's curated data a curator writes (ADR 0013).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationMode {
    /// The live path: each tenant's active generation, read at every
    /// discovery; a tenant whose active generation moved (a cut-over, a
    /// rollback) is dropped and read again in the new one from that
    /// generation's checkpoints.
    Follow,
    /// A replay: generation `N` (> 0) of the one tenant in `curate.tenants`,
    /// from each partition's first offset, under the generation's lease
    /// ([`LeaseName::generation`]), which the live curator takes over at the
    /// cut-over.
    Build(u32),
}

struct Open {
    acc: OpenBatch,
    builder: Option<BatchBuilder>,
    dead_lettered: u64,
    dead_letters: Vec<(Arc<str>, DeliveryFuture)>,
}

struct Partition {
    tenant: String,
    /// The generation of curated data this partition's batches belong to.
    data_gen: u32,
    /// The consumer group its checkpoint is kept under (per generation).
    group: String,
    version: Option<u64>,
    /// Next offset expected from Kafka (records below it are duplicates after a seek).
    next: i64,
    open: Option<Open>,
    /// A batch intent found at start that must be rebuilt exactly.
    replay: Option<BatchIntent>,
    /// How far the last gap recovery rewound (0: not recovering; -1: it
    /// rewound to offset 0, a gap after that is real).
    rewind: i64,
    /// The offset the partition was last assigned (fetched) from.
    fetched_from: i64,
    /// Whether the partition stopped (its log no longer holds what the
    /// checkpoint says): its records are ignored, other partitions go on.
    stopped: bool,
    /// What this partition curated up to, committed or in the open batch: a
    /// record it covers is a source's re-delivery and is dropped.
    high: Option<Mark>,
    /// What guards this partition's checkpoint: the shard's lease, or with
    /// group assignment the partition's own.
    fence: Fence,
    /// With group assignment: a write was fenced, another member owns the
    /// partition now; it is dropped here.
    lost: bool,
    /// A batch failed with a retryable error (the lake, the checkpoint store
    /// or the dead-letter topic briefly failing): the partition is dropped and
    /// read again from its checkpoint after a backoff, the others go on.
    held: bool,
    /// Consecutive failed batches of this partition (0 after a commit).
    failures: u32,
}

/// A partition waiting out its backoff before it is read again.
struct Reopen {
    at: std::time::Instant,
    topic: String,
    partition: i32,
    tenant: String,
    data_gen: u32,
    fence: Fence,
    failures: u32,
}

impl<S: LeaseStore + BatchStore + GenerationStore + 'static> Curator<S> {
    /// Runs until `shutdown` turns true (then closes open batches) or an error
    /// occurs (then stops without committing anything partial).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), PipelineError> {
        let group = self.curate.group.clone();
        let group_mode = self.curate.assignment == Assignment::Group;
        // With group assignment each partition has a lease of its own, taken
        // when Kafka assigns it; otherwise the shard's lease guards them all.
        let shard_fence = if group_mode {
            None
        } else {
            let lease = match self.generations {
                GenerationMode::Follow => LeaseName::curator(&group, &self.shard),
                GenerationMode::Build(n) => match self.curate.tenants.as_slice() {
                    [tenant] if n > 0 => LeaseName::generation(&group, tenant, n),
                    _ => {
                        return Err(PipelineError::Invariant(format!(
                            "a replay builds generation {n} (> 0) of exactly one tenant, not of {:?}",
                            self.curate.tenants
                        )));
                    }
                },
            };
            let Some(generation) =
                self.lease.acquire(self.store.as_ref(), &lease).await.context("acquiring the curation lease")?
            else {
                return Ok(());
            };
            Some(Fence { lease, generation })
        };
        tracing::info!(group, shard = self.shard, generation = shard_fence.as_ref().map(|f| f.generation),
            assignment = ?self.curate.assignment, lane = self.lane.name(), "curator started");
        let mut consumer = ChangeConsumer::new(&self.bus, &format!("lablake-{group}"))?;
        let mut member = if group_mode {
            let pattern = lablake_bus::topic_pattern(&self.bus.topic_prefix, &self.curate.tenants);
            Some(lablake_bus::GroupMember::join(
                &self.bus,
                &format!("lablake-{group}-members"),
                &pattern,
                self.curate.session_timeout,
                self.curate.discovery_interval,
            )?)
        } else {
            None
        };
        let mut dlq = ChangeProducer::new(&self.bus)?;
        let mut parts: HashMap<(Arc<str>, i32), Partition> = HashMap::new();
        let mut decoder = Decoder::new();
        let prefix = format!("{}.", self.bus.topic_prefix);
        // Delay, not burst: a discovery slower than its interval (a metadata
        // request over a slow broker link) must not run back to back and
        // starve the reading of records — the curator then read nothing for
        // minutes after a broker link went silent and came back slow.
        let mut discovery = tokio::time::interval(self.curate.discovery_interval);
        discovery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // With group assignment, a tenant whose generation moved restarts the
        // stage: it joins the group again and opens what Kafka assigns in
        // the new generation.
        let mut gen_check = tokio::time::interval(self.curate.discovery_interval);
        gen_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lease_check = tokio::time::interval(crate::supervise::LEASE_CHECK);
        lease_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ctx = Ctx { store: &self.store, lake: &self.lake, group: &group, group_mode, dropped: AtomicU32::new(0) };
        let mut since_budget_check = 0u32;
        let mut reopen: Vec<Reopen> = Vec::new();
        let mut gens = Gens::default();
        loop {
            if ctx.dropped.swap(0, Ordering::Relaxed) > 0 {
                let gone: Vec<_> = parts.iter().filter(|(_, p)| p.lost || p.held).map(|(k, _)| k.clone()).collect();
                for (t, p) in gone {
                    let Some(part) = parts.remove(&(t.clone(), p)) else { continue };
                    consumer.unassign(&t, p)?;
                    if part.lost {
                        tracing::info!(group, topic = %t, partition = p, "partition taken over by another member; dropped here");
                        metrics::CURATE_PARTITIONS_LOST.with_label_values(&[&group]).inc();
                        continue;
                    }
                    let failures = part.failures + 1;
                    let wait = crate::supervise::backoff(failures);
                    tracing::warn!(group, tenant = part.tenant, topic = %t, partition = p, failures,
                        retry_in_ms = wait.as_millis() as u64, "partition held back; reading it again from its checkpoint");
                    metrics::CURATE_PARTITION_RETRIES.with_label_values(&[&part.tenant]).inc();
                    reopen.push(Reopen {
                        at: std::time::Instant::now() + wait,
                        topic: t.to_string(),
                        partition: p,
                        tenant: part.tenant,
                        data_gen: part.data_gen,
                        fence: part.fence,
                        failures,
                    });
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = lease_check.tick(), if shard_fence.is_some() => {
                    // Quiet partitions write nothing that would meet the fence.
                    if let Some(f) = &shard_fence {
                        crate::supervise::still_held(self.store.as_ref(), &f.lease, f.generation).await?;
                    }
                }
                _ = gen_check.tick(), if group_mode && self.generations == GenerationMode::Follow => {
                    match gens.refresh(&self).await {
                        Ok(moved) if !moved.is_empty() => {
                            return Err(PipelineError::Restart(format!(
                                "the active generation of tenant(s) {} moved; curating them in the new one",
                                moved.join(", ")
                            )));
                        }
                        Ok(_) => {}
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(group, error = %crate::supervise::chain(&e), "reading the tenants' generations failed; trying again");
                        }
                        Err(e) => return Err(e),
                    }
                }
                change = next_membership(member.as_mut()) => match change {
                    Ok(lablake_bus::Membership::Assigned(list)) => {
                        for (t, p) in list {
                            let key: (Arc<str>, i32) = (t.as_str().into(), p);
                            let Some(tenant) = self.wanted(&t) else { continue };
                            if parts.contains_key(&key) {
                                continue;
                            }
                            reopen.retain(|r| !(r.topic == t && r.partition == p));
                            let data_gen = gens.of(&self, tenant).await?;
                            let lease = LeaseName::partition(&generation_group(&group, data_gen), &t, p);
                            let generation = self.store.acquire_lease(&lease).await.context("taking a partition lease")?;
                            let part = self.open_partition(&mut consumer, &t, p, tenant, data_gen, Fence { lease, generation }).await?;
                            parts.insert(key, part);
                        }
                        metrics::CURATE_PARTITIONS_OWNED.with_label_values(&[&group]).set(parts.len() as f64);
                    }
                    Ok(lablake_bus::Membership::Revoked(list)) => {
                        // Whatever is open is read again by the next owner from
                        // the committed checkpoint.
                        for (t, p) in list {
                            let key: (Arc<str>, i32) = (t.as_str().into(), p);
                            reopen.retain(|r| !(r.topic == t && r.partition == p));
                            if parts.remove(&key).is_some() {
                                consumer.unassign(&t, p)?;
                            }
                        }
                        metrics::CURATE_PARTITIONS_OWNED.with_label_values(&[&group]).set(parts.len() as f64);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka group membership error; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                _ = discovery.tick(), if !group_mode => {
                    let Some(fence) = &shard_fence else { continue };
                    // A failed metadata request (the broker unreachable or
                    // slow) is tried again at the next tick; the partitions
                    // already open keep being read. Restarting the stage for
                    // it would re-read them from their checkpoints each time.
                    let topics = match consumer.topics(&prefix).await.map_err(PipelineError::from) {
                        Ok(topics) => topics,
                        Err(e) if e.is_retryable() => {
                            metrics::CURATE_DISCOVERY_FAILURES.with_label_values(&[&group]).inc();
                            tracing::warn!(group, error = %crate::supervise::chain(&e), "topic discovery failed; trying again at the next interval");
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    // Which generation each tenant is in, read again: a tenant
                    // whose active generation moved is dropped here and
                    // opened again below in the new one.
                    if self.generations == GenerationMode::Follow {
                        let moved = match gens.refresh(&self).await {
                            Ok(moved) => moved,
                            Err(e) if e.is_retryable() => {
                                metrics::CURATE_DISCOVERY_FAILURES.with_label_values(&[&group]).inc();
                                tracing::warn!(group, error = %crate::supervise::chain(&e), "reading the tenants' generations failed; trying again at the next interval");
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        if !moved.is_empty() {
                            let gone: Vec<_> = parts.iter().filter(|(_, p)| moved.contains(&p.tenant)).map(|(k, _)| k.clone()).collect();
                            for (t, p) in gone {
                                parts.remove(&(t.clone(), p));
                                consumer.unassign(&t, p)?;
                            }
                            reopen.retain(|r| !moved.contains(&r.tenant));
                            for tenant in &moved {
                                tracing::info!(group, tenant, generation = gens.active.get(tenant).copied().unwrap_or(0),
                                    "tenant's active generation moved; curating it in that generation");
                            }
                        }
                    }
                    for (t, n) in topics {
                        let Some(tenant) = self.wanted(&t) else { continue };
                        for p in 0..n {
                            let key: (Arc<str>, i32) = (t.as_str().into(), p);
                            // Held back partitions wait for their backoff.
                            if parts.contains_key(&key) || reopen.iter().any(|r| r.topic == t && r.partition == p) {
                                continue;
                            }
                            let opened = async {
                                let data_gen = gens.of(&self, tenant).await?;
                                let fence = gens.fence(&self, fence, tenant, data_gen).await?;
                                self.open_partition(&mut consumer, &t, p, tenant, data_gen, fence).await
                            };
                            match opened.await {
                                Ok(part) => {
                                    parts.insert(key, part);
                                }
                                // The checkpoint store briefly failing: the
                                // next discovery opens the partition.
                                Err(e) if e.is_retryable() => {
                                    metrics::CURATE_DISCOVERY_FAILURES.with_label_values(&[&group]).inc();
                                    tracing::warn!(group, topic = %t, partition = p, error = %crate::supervise::chain(&e),
                                        "opening a partition failed; trying again at the next interval");
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    }
                    metrics::CURATE_PARTITIONS_OWNED.with_label_values(&[&group]).set(parts.len() as f64);
                }
                _ = tick.tick() => {
                    for ((t, p), part) in parts.iter_mut() {
                        let policy = &self.curate.batch;
                        let due = if part.replay.is_some() {
                            None
                        } else {
                            part.open.as_ref().filter(|o| o.builder.as_ref().is_some_and(|b| !b.is_empty())).and_then(|o| {
                                if o.acc.idle(policy) {
                                    Some(CloseReason::Idle)
                                } else {
                                    o.acc.too_old(policy).then_some(CloseReason::Age)
                                }
                            })
                        };
                        if let Some(reason) = due {
                            ctx.close(t, *p, part, reason).await?;
                        }
                    }
                    if reopen.iter().any(|r| r.at <= std::time::Instant::now()) {
                        let now = std::time::Instant::now();
                        let (due, waiting): (Vec<Reopen>, Vec<Reopen>) = reopen.drain(..).partition(|r| r.at <= now);
                        reopen = waiting;
                        for r in due {
                            let mut part = self.open_partition(&mut consumer, &r.topic, r.partition, &r.tenant, r.data_gen, r.fence).await?;
                            part.failures = r.failures;
                            parts.insert((r.topic.as_str().into(), r.partition), part);
                        }
                    }
                }
                rec = consumer.recv() => {
                    let rec = match rec {
                        Ok(r) => r,
                        Err(e) => {
                            // librdkafka reconnects by itself; consumption errors are transient.
                            tracing::warn!(error = %e, "kafka consumer error; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    };
                    let key = (rec.topic.clone(), rec.partition);
                    let Some(part) = parts.get_mut(&key) else { continue };
                    if part.stopped || part.lost || part.held {
                        continue;
                    }
                    match arrival(rec.offset, part.next, part.fetched_from, part.rewind) {
                        Arrival::Skip => continue,
                        Arrival::Take => {}
                        Arrival::Rewind { to, rewind } => {
                            tracing::warn!(topic = %rec.topic, partition = rec.partition, expected = part.next, got = rec.offset, rewind_to = to, "offset gap from the broker; re-reading from an earlier offset");
                            consumer.unassign(&rec.topic, rec.partition)?;
                            consumer.assign(&rec.topic, rec.partition, to)?;
                            (part.rewind, part.fetched_from) = (rewind, to);
                            continue;
                        }
                        Arrival::Stop(reason) => {
                            tracing::error!(group, topic = %rec.topic, partition = rec.partition, tenant = part.tenant, reason,
                                "partition stopped: its log no longer holds what the checkpoint says was there; the other \
                                 partitions go on. Nothing after the gap is curated until an operator recovers it (take a \
                                 snapshot of the table with `lablake snapshot`, then `lablake move-partition --topic T --partition P --to \
                                 <first offset after the gap>` and restart)");
                            metrics::CURATE_PARTITION_STOPPED
                                .with_label_values(&[part.tenant.as_str(), &rec.topic, &rec.partition.to_string()])
                                .set(1.0);
                            consumer.unassign(&rec.topic, rec.partition)?;
                            part.stopped = true;
                            continue;
                        }
                    }
                    part.rewind = 0;
                    part.next = rec.offset + 1;
                    ctx.handle(&mut dlq, &mut decoder, &self.curate.batch, part, rec).await?;
                    since_budget_check += 1;
                    if since_budget_check >= 1024 {
                        since_budget_check = 0;
                        ctx.enforce_budget(&mut parts, self.curate.max_open_bytes).await?;
                    }
                }
            }
        }
        // Graceful drain: close every open batch (never a pending replay, which
        // must end at its recorded offset).
        for ((t, p), part) in parts.iter_mut() {
            if part.replay.is_none()
                && part.open.as_ref().is_some_and(|o| o.builder.as_ref().is_some_and(|b| !b.is_empty()))
            {
                ctx.close(t, *p, part, CloseReason::Shutdown).await?;
            }
        }
        tracing::info!(group, "curator stopped");
        Ok(())
    }

    /// The tenant of `topic` when this curator curates it (its prefix, its
    /// lane, its tenant filter).
    fn wanted<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let tenant = topic::tenant_of_topic(&self.bus.topic_prefix, topic)?;
        if !self.curate.tenants.is_empty() && !self.curate.tenants.iter().any(|x| x == tenant) {
            return None;
        }
        topic::table_of_topic(&self.bus.topic_prefix, topic).is_some_and(|n| self.lane.owns(n)).then_some(tenant)
    }

    /// Starts reading a partition of generation `data_gen` from its checkpoint.
    async fn open_partition(
        &self,
        consumer: &mut ChangeConsumer,
        t: &str,
        p: i32,
        tenant: &str,
        data_gen: u32,
        fence: Fence,
    ) -> Result<Partition, PipelineError> {
        let group = generation_group(&self.curate.group, data_gen);
        let group = group.as_str();
        let cp = self.store.load_partition(&partition_ref(group, t, p)).await?;
        let (start, version, replay, high) = match cp {
            Some(cp) => match cp.pending {
                Some(i) => (i.first_offset, Some(cp.version), Some(i), cp.high_water),
                None => (cp.next_offset, Some(cp.version), None, cp.high_water),
            },
            // A later generation starts from offset 0 (a replay).
            None => match self.inherit_group.as_ref().filter(|_| data_gen == 0) {
                // Everything the other group committed is curated already; a batch it
                // has pending is rebuilt here from its first offset (same object key).
                Some(g) => match self.store.load_partition(&partition_ref(g, t, p)).await? {
                    Some(cp) => (cp.pending.map_or(cp.next_offset, |i| i.first_offset), None, None, cp.high_water),
                    None => (0, None, None, None),
                },
                None => (0, None, None, None),
            },
        };
        tracing::info!(group, topic = %t, partition = p, start, generation = data_gen, replay = replay.is_some(), "assigned");
        // Fetch from a little before `start` (records before it are skipped):
        // tansu 0.6 answers a fetch from inside a record batch with the *next*
        // batch, which at the end of the log means nothing at all until more
        // records arrive. Producer batches hold at most 1,000 records.
        let fetched_from = start.saturating_sub(ASSIGN_LOOKBACK).max(0);
        consumer.assign(t, p, fetched_from)?;
        let high = match high.as_ref().map(|h| (h, Mark::from_stored(h))) {
            Some((_, Some(m))) => Some(m),
            Some((h, None)) => {
                return Err(PipelineError::Invariant(format!(
                    "the high-water mark of {t}/{p} has a key that is not hex ({})",
                    h.position
                )));
            }
            None => None,
        };
        Ok(Partition {
            tenant: tenant.to_owned(),
            data_gen,
            group: group.to_owned(),
            version,
            next: start,
            open: None,
            replay,
            rewind: 0,
            fetched_from,
            stopped: false,
            high,
            fence,
            lost: false,
            held: false,
            failures: 0,
        })
    }
}

/// Which generation each tenant is in, as the curator last read it, and the
/// generation leases it holds.
#[derive(Default)]
struct Gens {
    active: HashMap<String, u32>,
    fences: HashMap<(String, u32), Fence>,
}

impl Gens {
    /// The generation a partition of `tenant` is curated in.
    async fn of<S: LeaseStore + BatchStore + GenerationStore + 'static>(
        &mut self,
        c: &Curator<S>,
        tenant: &str,
    ) -> Result<u32, PipelineError> {
        match c.generations {
            GenerationMode::Build(n) => Ok(n),
            GenerationMode::Follow => {
                if let Some(g) = self.active.get(tenant) {
                    return Ok(*g);
                }
                let g = c.store.load_generations(tenant).await.context("reading a tenant's generations")?.active;
                self.active.insert(tenant.to_owned(), g);
                Ok(g)
            }
        }
    }

    /// Reads the active generation of every tenant seen again; returns the
    /// tenants whose generation moved.
    async fn refresh<S: LeaseStore + BatchStore + GenerationStore + 'static>(
        &mut self,
        c: &Curator<S>,
    ) -> Result<Vec<String>, PipelineError> {
        let mut moved = Vec::new();
        for (tenant, g) in self.active.iter_mut() {
            let now = c.store.load_generations(tenant).await.context("reading a tenant's generations")?.active;
            if now != *g {
                *g = now;
                moved.push(tenant.clone());
            }
        }
        Ok(moved)
    }

    /// What guards a partition of `tenant` in generation `data_gen`: the
    /// shard's lease for generation 0 and in a replay; otherwise the
    /// generation's lease, taken on first use — which fences the replay that
    /// built the generation, should it still run.
    async fn fence<S: LeaseStore + BatchStore + GenerationStore + 'static>(
        &mut self,
        c: &Curator<S>,
        shard: &Fence,
        tenant: &str,
        data_gen: u32,
    ) -> Result<Fence, PipelineError> {
        if data_gen == 0 || matches!(c.generations, GenerationMode::Build(_)) {
            return Ok(shard.clone());
        }
        let key = (tenant.to_owned(), data_gen);
        if let Some(f) = self.fences.get(&key) {
            return Ok(f.clone());
        }
        let lease = LeaseName::generation(&c.curate.group, tenant, data_gen);
        let generation = c.store.acquire_lease(&lease).await.context("taking a generation's lease")?;
        let f = Fence { lease, generation };
        self.fences.insert(key, f.clone());
        Ok(f)
    }
}

/// The next change of the group membership; never, without one.
async fn next_membership(
    member: Option<&mut lablake_bus::GroupMember>,
) -> Result<lablake_bus::Membership, lablake_bus::BusError> {
    match member {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

fn partition_ref(group: &str, topic: &str, partition: i32) -> PartitionRef {
    PartitionRef { group: group.to_owned(), topic: topic.to_owned(), partition }
}

/// What to do with a record that arrives at `offset` for a partition whose
/// next expected offset is `next`, fetched from `fetched_from`, `rewind`
/// being the last gap recovery's step (0: none; -1: it reached offset 0).
#[derive(Debug, PartialEq, Eq)]
enum Arrival {
    /// Below `next`: curated already (the fetch starts a little early).
    Skip,
    /// The expected record.
    Take,
    /// A gap: read again from `to` (with the next step `rewind`).
    Rewind { to: i64, rewind: i64 },
    /// The log cannot be what the checkpoint says: stop the partition.
    Stop(String),
}

/// The offset decision of the curator, never a silent skip. Our topics are
/// neither compacted nor transactional, so offsets are contiguous:
/// * a record *below* the offset the partition was fetched from means the
///   broker reset the fetch (it was out of range): the log ends before
///   what is committed — the topic was recreated or its log reset;
/// * a gap above `next` is first taken for tansu 0.6's fetch quirk (it
///   answers a fetch from inside a record batch with the *next* batch):
///   rewinding into an earlier batch gets the one needed; a gap that stays
///   after reading from offset 0 is real — retention or truncation removed
///   records not yet curated.
fn arrival(offset: i64, next: i64, fetched_from: i64, rewind: i64) -> Arrival {
    if offset < fetched_from {
        return Arrival::Stop(format!(
            "the broker reset the fetch from offset {fetched_from} to {offset}: the log ends before the committed \
             offset {next} (topic recreated, or log reset)"
        ));
    }
    if offset < next {
        return Arrival::Skip;
    }
    if offset == next {
        return Arrival::Take;
    }
    if rewind >= 0 {
        let step = if rewind == 0 { 256 } else { rewind.saturating_mul(4) };
        let to = next.saturating_sub(step).max(0);
        return Arrival::Rewind { to, rewind: if to == 0 { -1 } else { step } };
    }
    Arrival::Stop(format!(
        "offsets {next}..={} are missing from the log (retention or truncation removed records not yet curated)",
        offset - 1
    ))
}

struct Ctx<'a, S> {
    store: &'a Arc<S>,
    lake: &'a Lake,
    group: &'a str,
    /// Group assignment: a fenced partition write means the partition moved
    /// to another member (it is marked lost and counted in `lost`), not that
    /// this process was superseded.
    group_mode: bool,
    /// Partitions marked lost or held since the loop last dropped them.
    dropped: AtomicU32,
}

impl<S: BatchStore + GenerationStore> Ctx<'_, S> {
    /// Closes the largest open batches while all open batches together hold
    /// more than `budget` bytes.
    async fn enforce_budget(
        &self,
        parts: &mut HashMap<(Arc<str>, i32), Partition>,
        budget: usize,
    ) -> Result<(), PipelineError> {
        let open_bytes = |p: &Partition| p.open.as_ref().map_or(0, |o| o.acc.bytes);
        let mut total: usize = parts.values().map(open_bytes).sum();
        while total > budget {
            let Some(((t, p), part)) = parts
                .iter_mut()
                .filter(|(_, p)| p.replay.is_none() && p.open.as_ref().is_some_and(|o| o.acc.rows > 0))
                .max_by_key(|(_, p)| open_bytes(p))
            else {
                break;
            };
            let bytes = open_bytes(part);
            self.close(t, *p, part, CloseReason::Bytes).await?;
            total -= bytes;
        }
        Ok(())
    }

    async fn handle(
        &self,
        dlq: &mut ChangeProducer,
        decoder: &mut Decoder,
        policy: &BatchPolicy,
        part: &mut Partition,
        rec: Record,
    ) -> Result<(), PipelineError> {
        metrics::CURATE_RECORDS.with_label_values(&[&part.tenant]).inc();
        let decoded: Result<ChangeEvent, String> = match rec.payload.as_deref() {
            None => Err("record has no value".into()),
            Some(bytes) => match decoder.decode(bytes) {
                Ok(e) if *e.table.tenant != *part.tenant => {
                    Err("envelope tenant differs from the topic's tenant".into())
                }
                Ok(e) => Ok(e),
                Err(e) => Err(e.to_string()),
            },
        };
        let topic = rec.topic.clone();
        let key = rec.key.as_deref().unwrap_or_default();
        if let Ok(ev) = &decoded
            && part.high.as_ref().is_some_and(|h| h.covers(ev.source.position.as_str(), key))
            // A redriven dead letter was never curated: never a re-delivery.
            && !rec.headers.iter().any(|(k, _)| k == lablake_bus::redrive::REDRIVEN)
        {
            // A source's re-delivery of what this partition already curated
            // (same position, same key): dropped, its offset still counted.
            let open = part.open.get_or_insert_with(|| Open {
                acc: OpenBatch::new(rec.offset),
                builder: None,
                dead_lettered: 0,
                dead_letters: Vec::new(),
            });
            open.acc.add(rec.offset, None);
            metrics::CURATE_REDELIVERIES.with_label_values(&[&part.tenant]).inc();
            return self.close_if_done(&topic, rec.partition, part, rec.offset, policy).await;
        }
        if part.replay.is_none()
            && let (Ok(ev), Some(open)) = (&decoded, part.open.as_ref())
        {
            // A truncate carries no row, so it fits the open batch of its table.
            let schema_change = ev.op != Op::Truncate && open.builder.as_ref().is_some_and(|b| !b.accepts(&ev.schema));
            let table_change =
                open.builder.as_ref().and_then(|b| b.summary()).is_some_and(|first| first.table != ev.table);
            // (Age is wall-clock: the 200 ms tick closes aged batches, which
            // the biased loop serves before the next record.)
            if schema_change || table_change {
                self.close(&topic, rec.partition, part, CloseReason::Schema).await?;
            }
            if part.held {
                // Read again from the checkpoint later, this record too.
                return Ok(());
            }
        }
        let open = part.open.get_or_insert_with(|| Open {
            acc: OpenBatch::new(rec.offset),
            builder: None,
            dead_lettered: 0,
            dead_letters: Vec::new(),
        });
        let reject = |reason: String| (reason, rec.offset);
        let outcome = match decoded {
            Ok(ev) => {
                let size = ev.approx_size();
                let commit_ms = ev.source.ts_ms;
                let builder = open.builder.get_or_insert_with(|| BatchBuilder::new(ev.schema.clone()));
                match builder.push(&ev, rec.partition, rec.offset) {
                    Ok(()) => {
                        open.acc.add(rec.offset, Some((size, commit_ms)));
                        part.high.get_or_insert_with(Mark::default).advance(ev.source.position.as_str(), key);
                        None
                    }
                    Err(CurateError::SchemaMismatch) => Some(reject("schema differs inside a replayed batch".into())),
                    Err(e) => Some(reject(e.to_string())),
                }
            }
            Err(reason) => Some(reject(reason)),
        };
        if let Some((reason, offset)) = outcome {
            tracing::warn!(topic = %topic, partition = rec.partition, offset, reason, "record dead-lettered");
            let sent = dlq
                .send_dead_letter(DeadLetter {
                    tenant: &part.tenant,
                    key: rec.key.as_deref(),
                    payload: rec.payload.as_deref(),
                    reason: &reason,
                    stage: "curate",
                    origin: Some((&topic, rec.partition, offset)),
                })
                .await?;
            open.dead_letters.push(sent);
            open.dead_lettered += 1;
            open.acc.add(offset, None);
            metrics::CURATE_DEAD_LETTERS.with_label_values(&[&part.tenant]).inc();
        }
        self.close_if_done(&topic, rec.partition, part, rec.offset, policy).await
    }

    /// Closes the open batch after the record at `offset` when it ends the
    /// batch being rebuilt, or when the batch is full.
    async fn close_if_done(
        &self,
        topic: &str,
        partition: i32,
        part: &mut Partition,
        offset: i64,
        policy: &BatchPolicy,
    ) -> Result<(), PipelineError> {
        let done_replay = part.replay.as_ref().is_some_and(|i| offset >= i.last_offset);
        let full = if part.replay.is_none() { part.open.as_ref().and_then(|o| o.acc.full(policy)) } else { None };
        if done_replay {
            self.close(topic, partition, part, CloseReason::Replay).await?;
        } else if let Some(reason) = full {
            self.close(topic, partition, part, reason).await?;
        }
        Ok(())
    }

    /// Fills in unchanged (TOAST) values from the earlier rows of their keys:
    /// the batch itself, then this partition's earlier curated files, newest
    /// first (see `lablake_curate::toast`). Reads files only when a key's
    /// previous change is not in the batch.
    async fn fill_unchanged(
        &self,
        batch: RecordBatch,
        table: &TableId,
        data_gen: u32,
        topic: &str,
        partition: i32,
        first_offset: i64,
    ) -> Result<RecordBatch, PipelineError> {
        let mut r = Resolution::new(batch)?;
        if r.is_complete() {
            return Ok(r.finish()?);
        }
        let mut earlier: Vec<(i64, String)> = self
            .lake
            .list(&table.tenant, &curated_prefix(table, data_gen))
            .await?
            .into_iter()
            .filter_map(|k| {
                let f = parse_curated_key(&k)?;
                (f.topic == topic && f.partition == partition && f.last < first_offset).then_some((f.first, k))
            })
            .collect();
        earlier.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut read = 0u64;
        for (_, key) in earlier {
            if r.is_complete() {
                break;
            }
            let bytes = self.lake.get(&table.tenant, &key).await?;
            read += 1;
            let batches = tokio::task::spawn_blocking(move || decode_parquet(bytes))
                .await
                .map_err(|e| PipelineError::task("decoding an earlier curated file", e))??;
            for b in batches.into_iter().rev() {
                r.offer(b)?;
            }
        }
        metrics::CURATE_UNCHANGED_FILES_READ.with_label_values(&[&table.tenant]).inc_by(read);
        Ok(r.finish()?)
    }

    /// Marks a partition another member took over: nothing more of it is
    /// written here, and the loop drops it.
    fn lose(&self, part: &mut Partition) {
        part.lost = true;
        part.open = None;
        part.replay = None;
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes the open batch durable and commits its offsets. A retryable
    /// failure (the lake, the checkpoint store or the dead-letter topic
    /// briefly failing) holds back only this partition: it is read again
    /// from its checkpoint after a backoff — what a restart of the stage
    /// would do, without pausing the other partitions and tenants.
    async fn close(
        &self,
        topic: &str,
        partition: i32,
        part: &mut Partition,
        reason: CloseReason,
    ) -> Result<(), PipelineError> {
        if part.held {
            return Ok(());
        }
        match self.close_batch(topic, partition, part, reason).await {
            Err(e) if e.is_retryable() && !e.is_fenced() => {
                tracing::warn!(tenant = part.tenant, topic, partition, error = %crate::supervise::chain(&e),
                    "curated batch failed; holding back this partition");
                part.held = true;
                part.open = None;
                part.replay = None;
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(()) => {
                part.failures = 0;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn close_batch(
        &self,
        topic: &str,
        partition: i32,
        part: &mut Partition,
        reason: CloseReason,
    ) -> Result<(), PipelineError> {
        let Some(mut open) = part.open.take() else { return Ok(()) };
        let rows = open.builder.as_ref().map_or(0, |b| b.len());
        // What the commit records about the batch, derived from its rows.
        let summary = open.builder.as_ref().and_then(|b| b.summary()).cloned().map(|s| {
            let BatchSummary { table, source, max_position, max_commit_ms } = s;
            (table, source, max_position, max_commit_ms)
        });
        let (Some((table, source, max_position, max_commit_ms)), true) = (summary, rows > 0) else {
            // Only dead letters so far: keep accumulating, offsets advance with
            // the next real batch (dead letters may then be re-sent after a crash).
            if part.replay.is_none() {
                part.open = Some(open);
                return Ok(());
            }
            return Err(PipelineError::Invariant(format!("replayed batch of {topic}/{partition} has no rows")));
        };
        let (intent, replayed) = match part.replay.take() {
            Some(i) => (i, true),
            None => {
                let day = open.acc.first_commit_ms.unwrap_or(0).div_euclid(86_400_000) as i32;
                let key = curated_key(
                    &table,
                    part.data_gen,
                    Date::from_days_since_epoch(day),
                    topic,
                    partition,
                    open.acc.first_offset,
                    open.acc.last_offset,
                );
                (
                    BatchIntent {
                        first_offset: open.acc.first_offset,
                        last_offset: open.acc.last_offset,
                        object_key: key,
                    },
                    false,
                )
            }
        };
        let at = partition_ref(&part.group, topic, partition);
        let store = self.store.in_generation(part.data_gen);
        if !replayed {
            let begun = store.begin_batch(&at, &part.fence, part.version, &intent).await;
            let cp = match begun {
                Err(e) if self.group_mode && matches!(e, lablake_checkpoint::CheckpointError::Fenced(_)) => {
                    self.lose(part);
                    return Ok(());
                }
                r => r.with_context(|| format!("recording the batch intent of {topic}/{partition}"))?,
            };
            part.version = Some(cp.version);
            lablake_failpoint::failpoint("curate.after_begin");
        }
        for (t, fut) in open.dead_letters.drain(..) {
            match fut.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    let e = lablake_bus::BusError::Delivery { topic: t.to_string(), source: e };
                    return Err(e).context(format!("dead letters of {topic}/{partition}"));
                }
                Err(_) => return Err(PipelineError::Invariant(format!("dead-letter delivery to {t} was cancelled"))),
            }
        }
        let mut builder = open
            .builder
            .take()
            .ok_or_else(|| PipelineError::Invariant(format!("batch of {topic}/{partition} without rows")))?;
        let batch = builder.finish()?;
        let batch = self.fill_unchanged(batch, &table, part.data_gen, topic, partition, intent.first_offset).await?;
        let level = self.lake.config().zstd_level;
        let bytes = tokio::task::spawn_blocking(move || encode_parquet(&batch, level))
            .await
            .map_err(|e| PipelineError::task("encoding a curated file", e))??;
        let size = bytes.len() as u64;
        let outcome = self.lake.put_create(&table.tenant, &intent.object_key, bytes).await?;
        if outcome == PutOutcome::AlreadyExists {
            tracing::info!(key = intent.object_key, "batch file already durable from an earlier attempt");
        }
        lablake_failpoint::failpoint("curate.after_put");
        let commit = BatchCommit {
            intent: intent.clone(),
            table: table.clone(),
            source,
            rows: rows as u64,
            bytes: size,
            dead_lettered: open.dead_lettered,
            max_commit_ts_ms: max_commit_ms,
            max_position,
            high_water: part.high.as_ref().map(Mark::stored),
        };
        let version = part.version.ok_or_else(|| {
            PipelineError::Invariant(format!("commit of {topic}/{partition} without a recorded intent"))
        })?;
        let committed = store.commit_batch(&at, &part.fence, version, &commit).await;
        let cp = match committed {
            // The next owner rebuilds the pending batch into the same object key.
            Err(e) if self.group_mode && matches!(e, lablake_checkpoint::CheckpointError::Fenced(_)) => {
                self.lose(part);
                return Ok(());
            }
            r => r.with_context(|| format!("committing the batch of {topic}/{partition}"))?,
        };
        part.version = Some(cp.version);
        lablake_failpoint::failpoint("curate.after_commit");
        metrics::CURATE_BATCHES.with_label_values(&[&table.tenant, reason.as_str()]).inc();
        metrics::CURATE_BATCH_ROWS.with_label_values(&[&table.tenant]).observe(rows as f64);
        metrics::CURATE_BATCH_BYTES.with_label_values(&[&table.tenant]).observe(size as f64);
        metrics::CURATE_LAG
            .with_label_values(&[&table.tenant])
            .set((metrics::now_secs() - max_commit_ms as f64 / 1000.0).max(0.0));
        metrics::CURATE_COMMITTED_TS.with_label_values(&[&table.tenant]).set(metrics::now_secs());
        metrics::CURATE_CHECKPOINT_TS.with_label_values(&[self.group]).set(metrics::now_secs());
        tracing::debug!(
            topic,
            partition,
            first = intent.first_offset,
            last = intent.last_offset,
            rows,
            reason = reason.as_str(),
            "batch committed"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cover_lower_positions_and_the_keys_at_theirs() {
        let mut m = Mark::default();
        m.advance("0005", b"k1");
        m.advance("0005", b"k2"); // a key change: delete and create at one position
        assert!(m.covers("0004", b"any") && m.covers("0005", b"k1") && m.covers("0005", b"k2"));
        assert!(!m.covers("0005", b"k3") && !m.covers("0006", b"k1"));
        m.advance("0006", b"");
        assert_eq!(m, Mark { position: "0006".into(), keys: vec![Vec::new()] });
        m.advance("0001", b"late");
        assert_eq!(m.position, "0006", "a mark never moves back");
        let stored = Mark { position: "0007".into(), keys: vec![vec![0x0a, 0xff], Vec::new()] }.stored();
        assert_eq!(stored.keys, ["0aff", ""]);
        assert_eq!(Mark::from_stored(&stored).map(|m| m.keys), Some(vec![vec![0x0a, 0xff], Vec::new()]));
        assert_eq!(unhex("0g"), None);
    }

    #[test]
    fn offsets_are_taken_skipped_rewound_or_stop_the_partition() {
        // Fetched from 4000 for next 5000: the lookback is skipped, the next record taken.
        assert_eq!(arrival(4500, 5000, 4000, 0), Arrival::Skip);
        assert_eq!(arrival(5000, 5000, 4000, 0), Arrival::Take);
        // A gap is rewound into, in growing steps, down to offset 0 …
        assert_eq!(arrival(5100, 5000, 4000, 0), Arrival::Rewind { to: 4744, rewind: 256 });
        assert_eq!(arrival(5100, 5000, 4744, 256), Arrival::Rewind { to: 3976, rewind: 1024 });
        assert_eq!(arrival(5100, 5000, 3976, 4096), Arrival::Rewind { to: 0, rewind: -1 });
        // … and a gap that stays after reading from 0 stops the partition, naming the offsets.
        let Arrival::Stop(reason) = arrival(5100, 5000, 0, -1) else { panic!("a real gap must stop") };
        assert!(reason.contains("5000..=5099"), "{reason}");
        // A record below where the fetch started: the broker reset it, the log ends before what is committed.
        let Arrival::Stop(reason) = arrival(0, 90_000, 89_000, 0) else { panic!("a reset log must stop") };
        assert!(reason.contains("89000") && reason.contains("90000"), "{reason}");
        // A partition never fetched past 0 has nothing to be reset from.
        assert_eq!(arrival(0, 0, 0, 0), Arrival::Take);
    }
}
