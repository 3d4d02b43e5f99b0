//! The CI tier of the fault suite: one seeded run per source in which every
//! fault of the suite happens, in a random order, while the source keeps
//! changing — at least 300k row changes over 3 tenants (`CHAOS_SCALE=N`
//! multiplies the changes and every fault count, for longer manual runs):
//! - 30 SIGKILLs of `lablake` at random moments, and an abort at every
//!   crash-window failpoint (the snapshot's first, the others in between);
//! - 3 crashes of the Kafka API broker (a private tansu on durable storage):
//!   on the SQLite engine while the source produces a step's changes; on
//!   tansu 0.6's S3 engine at rest, because killed mid-produce it can leave
//!   an offset hole the curator rightly refuses (docs/reliability.md);
//! - 2 crashes of the source database;
//! - one 30 s blackhole of each link: source database, broker (it advertises
//!   the proxy, so every connection goes through it), S3 + DynamoDB,
//!   Snowflake;
//! - S3 and DynamoDB answering 3 % of requests `503`/throttling and
//!   resetting 0.5 % after applying them, throughout; Snowflake (the local
//!   emulator) 5 % and 2 %;
//! - the Snowflake sink runs in the pipeline throughout: its crash windows
//!   (COPY done, MERGE not; MERGE done, checkpoint not) are failpoints of
//!   the schedule like the others;
//! - 3 zombie rounds: the whole pipeline SIGSTOPped, a new one takes every
//!   lease and carries on, the old one woken — it must exit fenced;
//! - each step's changes in one transaction: on PostgreSQL over
//!   `logical_decoding_work_mem` (64 kB locally), so streamed in progress
//!   and spilled by the source (`spill_memory_bytes` 64 kB): the kills land
//!   in spilled transactions.
//!
//! The oracle checks every change, not only the final state: a version
//! column starts at 1 and each update adds one, so per key the curated
//! changes must carry 1, 2, 3, … in source order, none missing or repeated;
//! no (key, position) twice; the final state equal to the source's, in the
//! lake and in each tenant's Snowflake table (every column of every row). The seed
//! is printed: `LABLAKE_CHAOS_SEED=<seed>` replays the schedule and the
//! injected HTTP faults (timings and the services' own behaviour still vary).
//!
//! These tests crash the shared source database, so they run alone, after
//! the others (`restarts_` prefix, nextest's `restarts` profile).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablake_tests::broker::PrivateBroker;
use lablake_tests::http_fault::{HttpFaultProxy, Rates};
use lablake_tests::proxy::{FaultProxy, host_port, via};
use lablake_tests::{CRASH_WINDOWS, Kind, Reaped, World, services, snowflake, version_violations};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const DDL: &str = "CREATE TABLE results (id BIGINT NOT NULL PRIMARY KEY, analyte VARCHAR(20), value DECIMAL(12,3), \
                   flag VARCHAR(4), version INT NOT NULL)";
const COLS: &[&str] = &["id", "analyte", "value", "flag", "version"];
/// Rows per tenant before the first start: the first snapshot's input.
const SEED_ROWS: u64 = 5_000;
const TENANTS: usize = 3;
/// The sink's crash windows, beside the pipeline's [`CRASH_WINDOWS`].
const SINK_WINDOWS: &[(&str, u32)] = &[("sink.after_copy", 2), ("sink.after_merge", 2)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Link {
    Source,
    Broker,
    Aws,
    Snowflake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    Kill,
    Failpoint(&'static str, u32),
    BrokerCrash,
    DatabaseCrash,
    Blackhole(Link),
    Zombie,
}

/// The seeded schedule of one run.
struct Plan {
    seed: u64,
    scale: u32,
    /// Row changes the run makes at least (the lake must hold each once).
    changes: u64,
    faults: Vec<Fault>,
}

impl Plan {
    fn new() -> Plan {
        let seed = std::env::var("LABLAKE_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
        let scale = std::env::var("CHAOS_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1u32).max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let (snapshot, windows): (Vec<_>, Vec<_>) = CRASH_WINDOWS
            .iter()
            .chain(SINK_WINDOWS)
            .map(|&(p, h)| Fault::Failpoint(p, h))
            .partition(|f| matches!(f, Fault::Failpoint(p, _) if p.starts_with("snapshot.")));
        let mut rest = Vec::new();
        for _ in 0..scale {
            rest.extend(std::iter::repeat_n(Fault::Kill, 30));
            rest.extend(windows.iter().copied());
            rest.extend(std::iter::repeat_n(Fault::BrokerCrash, 3));
            rest.extend(std::iter::repeat_n(Fault::DatabaseCrash, 2));
            rest.extend([Link::Source, Link::Broker, Link::Aws, Link::Snowflake].map(Fault::Blackhole));
            rest.extend(std::iter::repeat_n(Fault::Zombie, 3));
        }
        rest.shuffle(&mut rng);
        // The snapshot runs once, at the first start.
        let faults = snapshot.into_iter().chain(rest).collect();
        Plan { seed, scale, changes: 300_000 * u64::from(scale), faults }
    }
}

/// The source's changes: each step, per tenant, one transaction inserting
/// `rows` rows (version 1) and updating `rows` recent ones (version + 1),
/// then one deleting 10 older rows.
struct Workload {
    rows: u64,
    next_id: u64,
    steps: u64,
    rng: StdRng,
}

impl Workload {
    async fn step(&mut self, w: &World) -> anyhow::Result<()> {
        let (n, first) = (self.rows, self.next_id);
        let values: Vec<String> =
            (first..first + n).map(|id| format!("({id}, 'K{}', {}.125, NULL, 1)", id % 40, id % 1000)).collect();
        let insert = format!("INSERT INTO results VALUES {}", values.join(", "));
        let lo = self.rng.random_range(first.saturating_sub(3 * n)..=first - n);
        let flag = ["H", "L", "HH", "LL"][self.rng.random_range(0..4)];
        let update = format!(
            "UPDATE results SET version = version + 1, flag = '{flag}', value = value + 1 WHERE id >= {lo} AND id < {}",
            lo + n
        );
        let gone = self.rng.random_range(0..first - n);
        let delete = format!("DELETE FROM results WHERE id >= {gone} AND id < {}", gone + 10);
        for t in &w.tenants {
            w.exec(t, &[&insert, &update]).await.context("workload step")?;
            w.exec(t, &[&delete]).await.context("workload step")?;
        }
        self.next_id += n;
        self.steps += 1;
        Ok(())
    }
}

/// What happened, for the summary line.
#[derive(Default)]
struct Done {
    by_fault: BTreeMap<String, u32>,
}

impl Done {
    fn count(&mut self, f: Fault) {
        let name = match f {
            Fault::Failpoint(p, _) => format!("failpoint {p}"),
            Fault::Blackhole(l) => format!("30 s blackhole of the {l:?} link"),
            other => format!("{other:?}"),
        };
        *self.by_fault.entry(name).or_default() += 1;
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status()?.success();
    anyhow::ensure!(ok, "kill {sig} {pid}");
    Ok(())
}

/// Waits until the database takes statements again.
async fn await_source(w: &World) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let t = w.tenants[0].clone();
    loop {
        match w.exec(&t, &["SELECT 1"]).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => bail!("the source database is not back after 90 s: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

fn lines_with(w: &World, needle: &str) -> anyhow::Result<usize> {
    Ok(std::fs::read_to_string(&w.log_path)?.lines().filter(|l| l.contains(needle)).count())
}

/// How often the log says `point` fired.
fn failpoint_hits(w: &World, point: &str) -> anyhow::Result<usize> {
    let log = std::fs::read_to_string(&w.log_path)?;
    Ok(log.lines().filter(|l| l.contains("failpoint reached") && l.contains(point)).count())
}

async fn chaos(kind: Kind) -> anyhow::Result<()> {
    if PrivateBroker::binary().is_none() {
        eprintln!("skipped: no local tansu (LABLAKE_TANSU_BIN) to crash and put a proxy in front of");
        return Ok(());
    }
    let plan = Plan::new();
    eprintln!(
        "chaos seed {} scale {} (LABLAKE_CHAOS_SEED={} replays the schedule): {} faults over ≥ {} changes",
        plan.seed,
        plan.scale,
        plan.seed,
        plan.faults.len(),
        plan.changes
    );
    let service = match kind {
        Kind::Mysql => "mysql",
        Kind::Postgres => "postgres",
    };
    // Snowflake through an HTTP fault proxy and a TCP fault proxy.
    let sf_http = HttpFaultProxy::start(
        &host_port(&snowflake::url()),
        Rates { error: 0.05, reset_after: 0.02 },
        plan.seed ^ 0x5f,
    )
    .await?;
    let sf_link = FaultProxy::start(&host_port(&sf_http.url())).await?;
    let sf_prefix = format!("LLC{}_", lablake_tests::rand_id(6).to_uppercase());
    let extra = format!(
        "{}\n{}",
        match kind {
            Kind::Mysql => "",
            Kind::Postgres => "spill_memory_bytes = 65536",
        },
        snowflake::sink_config_at(&sf_prefix, &via(&sf_http.url(), sf_link.addr()))
    );
    let mut w = World::with_source(kind, TENANTS, &[DDL], &extra).await?;

    // Every link through a fault proxy.
    let source_link = FaultProxy::start(&host_port(&w.source_url())).await?;
    w.set_source_url(&via(&w.source_url(), source_link.addr()))?;
    let port = PrivateBroker::free_port()?;
    let broker_link = FaultProxy::start(&format!("127.0.0.1:{port}")).await?;
    let mut broker = PrivateBroker::start_on(port, &broker_link.addr().to_string())?;
    w.set_kafka_brokers(&broker.brokers())?;
    let http = HttpFaultProxy::start(
        &host_port(&lablake_tests::s3_endpoint()),
        Rates { error: 0.03, reset_after: 0.005 },
        plan.seed,
    )
    .await?;
    let aws_link = FaultProxy::start(&host_port(&http.url())).await?;
    w.set_aws_endpoint(&via(&http.url(), aws_link.addr()))?;

    // At least this many steps (each fault takes one or more; the rest
    // after the last fault), sized so the run makes `plan.changes`.
    let steps = plan.faults.len() as u64 * 5 / 4 + 10;
    let rows = (plan.changes / (TENANTS as u64 * 2 * steps)) * 11 / 10 + 1;
    let mut work = Workload { rows, next_id: SEED_ROWS, steps: 0, rng: StdRng::seed_from_u64(plan.seed ^ 0x5eed) };
    for t in &w.tenants {
        for chunk in (0..SEED_ROWS).collect::<Vec<_>>().chunks(1000) {
            let values: Vec<String> =
                chunk.iter().map(|id| format!("({id}, 'K{}', {id}.5, NULL, 1)", id % 40)).collect();
            w.exec(t, &[&format!("INSERT INTO results VALUES {}", values.join(", "))]).await?;
        }
    }

    let started = Instant::now();
    let mut done = Done::default();
    w.start()?;
    for (i, &fault) in plan.faults.iter().enumerate() {
        let at = Instant::now();
        match fault {
            Fault::Kill => {
                work.step(&w).await?;
                let pause = work.rng.random_range(300..2500);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                w.assert_running()?;
                w.kill();
                w.start()?;
            }
            Fault::Failpoint(point, hit) => {
                let before = failpoint_hits(&w, point)?;
                w.kill();
                w.start_with_env(&[("LABLAKE_FAILPOINTS", &format!("{point}@{hit}"))])?;
                let deadline = Instant::now() + Duration::from_secs(180);
                // Changes for the failpoint to act on: a step every 0.7 s at
                // first, then one every 5 s. A lagging pipeline reaches the
                // failpoint from its backlog, and writing at full pace while it
                // lags only grows the lag (a CI run that stepped every 0.7 s
                // made 3.5× the planned changes and its lake fell behind).
                let mut waits = 0u32;
                let status = loop {
                    if waits < 4 || waits.is_multiple_of(7) {
                        work.step(&w).await?;
                    }
                    waits += 1;
                    if let Ok(status) = w.wait_exit(Duration::from_millis(700)).await {
                        break status;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "{point}@{hit} never fired:\n{}", w.log_tail());
                };
                anyhow::ensure!(!status.success(), "{point}: the failpoint aborts the process");
                let after = failpoint_hits(&w, point)?;
                anyhow::ensure!(
                    after > before,
                    "{point} did not fire; the process exited otherwise:\n{}",
                    w.log_tail()
                );
                w.start()?;
            }
            Fault::BrokerCrash if broker.survives_crash_mid_produce() => {
                // Under load: the step's changes are being produced (and
                // earlier ones fetched) when the broker dies.
                work.step(&w).await?;
                tokio::time::sleep(Duration::from_millis(work.rng.random_range(20..400))).await;
                broker.crash();
                work.step(&w).await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                w.assert_running()?;
                broker.restart()?;
            }
            Fault::BrokerCrash => {
                // At rest on the S3 engine (see the module documentation).
                w.await_exact("results", "id", COLS, Duration::from_secs(300))
                    .await
                    .with_context(|| format!("before broker crash (fault {i}, seed {})", plan.seed))?;
                broker.crash();
                work.step(&w).await?;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                w.assert_running()?;
                broker.restart()?;
            }
            Fault::DatabaseCrash => {
                work.step(&w).await?;
                services(&["restart", "--crash", service])?;
                await_source(&w).await?;
                w.assert_running()?;
                work.step(&w).await?;
            }
            Fault::Blackhole(link) => {
                let proxy = match link {
                    Link::Source => &source_link,
                    Link::Broker => &broker_link,
                    Link::Aws => &aws_link,
                    Link::Snowflake => &sf_link,
                };
                proxy.blackhole();
                for _ in 0..3 {
                    work.step(&w).await?;
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                w.assert_running()?;
                proxy.heal();
            }
            Fault::Zombie => {
                work.step(&w).await?;
                tokio::time::sleep(Duration::from_millis(work.rng.random_range(300..2000))).await;
                w.assert_running()?;
                let pid = w.pid().context("not running")?;
                signal(pid, "-STOP")?;
                let mut zombie = Reaped(w.detach().context("not running")?);
                // The new owner takes every lease (higher generations) while the old one sleeps.
                w.start()?;
                work.step(&w).await?;
                tokio::time::sleep(Duration::from_secs(4)).await;
                signal(pid, "-CONT")?;
                work.step(&w).await?;
                let deadline = Instant::now() + Duration::from_secs(120);
                let status = loop {
                    if let Some(status) = zombie.try_wait()? {
                        break status;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "the woken zombie kept running:\n{}", w.log_tail());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                };
                anyhow::ensure!(!status.success(), "the woken zombie exited successfully");
            }
        }
        done.count(fault);
        eprintln!(
            "chaos: fault {}/{} {fault:?} done in {:.1} s ({} steps, {:.0} s in)",
            i + 1,
            plan.faults.len(),
            at.elapsed().as_secs_f64(),
            work.steps,
            started.elapsed().as_secs_f64()
        );
    }
    // Everything healed: the last changes, then the oracle. The injected
    // share is counted over the faulty part of the run (the catch-up after
    // it runs on healthy services).
    http.set_enabled(false);
    sf_http.set_enabled(false);
    let (requests, errors, resets) = http.counts();
    let (sf_requests, sf_errors, sf_resets) = sf_http.counts();
    while work.steps < steps {
        work.step(&w).await?;
    }
    let healed = Instant::now();
    // Catch-up is bounded by throughput, not by the faults: 250 s in good
    // runs, and a CI schedule whose early kills kept restarting the first
    // snapshots left two 180k-row snapshots for the catch-up (lake 121k of
    // 181k rows after 600 s, correct but behind).
    w.await_exact("results", "id", COLS, Duration::from_secs(900))
        .await
        .with_context(|| format!("the final state (seed {})", plan.seed))?;
    eprintln!(
        "recovery: chaos run ({kind:?}): lake exact {:.1} s after the last change",
        healed.elapsed().as_secs_f64()
    );
    snowflake::await_exact(&mut w, &sf_prefix, "results", COLS, Duration::from_secs(300))
        .await
        .with_context(|| format!("Snowflake's final state (seed {})", plan.seed))?;
    eprintln!(
        "recovery: chaos run ({kind:?}): Snowflake exact {:.1} s after the last change",
        healed.elapsed().as_secs_f64()
    );
    let mut changes = 0;
    for t in w.tenants.clone() {
        let rows = w.curated_rows(&t, "results").await?;
        changes += rows.iter().filter(|r| matches!(r["_op"].as_str(), "c" | "u" | "d")).count() as u64;
        let wrong = version_violations(&rows, "id", "version", 10);
        anyhow::ensure!(
            wrong.is_empty(),
            "{t}: changes missing, repeated or out of order (seed {}): {wrong:#?}",
            plan.seed
        );
    }
    anyhow::ensure!(changes >= plan.changes, "only {changes} changes made (≥ {} planned)", plan.changes);
    anyhow::ensure!(
        requests > 500 && errors * 100 >= requests && resets > 0,
        "≥ 1 % injected HTTP faults while injecting: {errors} errors, {resets} resets over {requests} requests (seed {})",
        plan.seed
    );
    anyhow::ensure!(
        sf_requests > 200 && sf_errors * 100 >= sf_requests && sf_resets > 0,
        "≥ 1 % injected Snowflake faults while injecting: {sf_errors} errors, {sf_resets} resets over {sf_requests} \
         requests (seed {})",
        plan.seed
    );
    w.assert_running()?;
    // The process exited on its own only as a woken zombie, fenced.
    let log = std::fs::read_to_string(&w.log_path)?;
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("lablake failed")).collect();
    let zombies = done.by_fault.get("Zombie").copied().unwrap_or(0) as usize;
    anyhow::ensure!(
        failed.len() == zombies && failed.iter().all(|l| l.contains("fenced")),
        "the process exited only as a fenced zombie ({zombies}): {failed:#?}"
    );
    if kind == Kind::Postgres {
        anyhow::ensure!(lines_with(&w, "spilling it to disk")? > 0, "some transactions were spilled by the source");
    }
    let restarts = lines_with(&w, "stage failed; starting it again")?;
    let summary: Vec<String> = done.by_fault.iter().map(|(f, n)| format!("{n}× {f}")).collect();
    eprintln!(
        "chaos summary ({kind:?}, seed {}, scale {}): {} in {:.0} s; {errors} HTTP errors/throttles and {resets} resets \
         after applying over {requests} S3/DynamoDB requests, {sf_errors} and {sf_resets} over {sf_requests} Snowflake \
         requests; {restarts} in-process stage restarts; {changes} changes on {TENANTS} \
         tenants → 0 lost, 0 phantom, 0 divergent, 0 duplicated (broker crashes {})",
        plan.seed,
        plan.scale,
        summary.join(", "),
        started.elapsed().as_secs_f64(),
        if broker.survives_crash_mid_produce() { "under load" } else { "at rest" }
    );
    let _ = w.stop();
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_chaos_mysql() -> anyhow::Result<()> {
    chaos(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_chaos_postgres() -> anyhow::Result<()> {
    chaos(Kind::Postgres).await
}
