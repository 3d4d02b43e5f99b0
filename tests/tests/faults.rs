//! Faults of the services around `lablake`, injected for real on 127.0.0.1,
//! on both sources:
//! - a TCP fault proxy between `lablake` and its source database resets every
//!   connection and refuses new ones for a while;
//! - the same link goes silent for 30 s (a blackhole: no reset, no error),
//!   then slow (200 ms per chunk);
//! - S3 and DynamoDB (moto) answer 8 % of requests with `503 SlowDown` /
//!   `ThrottlingException`, and apply 5 % then reset the connection before
//!   the answer (an HTTP fault proxy; the seed is printed to replay a run);
//! - the Kafka API broker is killed (SIGKILL) and started again on its
//!   durable storage, three times, while the source keeps changing;
//! - the link to the broker goes silent for 30 s, then slow;
//! - one tenant's lake writes fail while another tenant's land;
//! - S3 and DynamoDB answer every request with an error for the first
//!   seconds of the process (start-up waits, it does not exit).
//!
//! The stages retry in-process (the process must not exit), resume from their
//! checkpoints when the service is back, and the lake ends exact with every
//! change once.

use std::time::Duration;

use anyhow::Context as _;
use lablake_tests::broker::PrivateBroker;
use lablake_tests::http_fault::{HttpFaultProxy, Rates};
use lablake_tests::proxy::{FaultProxy, host_port, via};
use lablake_tests::{Kind, World, scrape_metrics};

const DDL: &str = "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(20), amount DECIMAL(12,2), \
                   note TEXT)";
const COLS: &[&str] = &["id", "status", "amount", "note"];

/// Every tenant's curated orders equal the source's within `timeout`, each
/// change once.
async fn await_exact(w: &mut World, timeout: Duration) -> anyhow::Result<()> {
    w.await_exact("orders", "id", COLS, timeout).await
}

/// Prints how long the lake took to be exact again after a fault healed
/// (recorded in docs/benchmarks.md; a measurement, not an assertion).
fn recovered(fault: &str, kind: Kind, healed: std::time::Instant) {
    eprintln!(
        "recovery: {fault} ({kind:?}): lake exact {:.1} s after the fault healed",
        healed.elapsed().as_secs_f64()
    );
}

/// The pipeline is up and never exited (stages retried in-process only).
fn assert_never_exited(w: &mut World) -> anyhow::Result<()> {
    w.assert_running()?;
    let log = std::fs::read_to_string(&w.log_path)?;
    assert_eq!(log.matches("lablake failed").count(), 0, "the process never exited:\n{}", w.log_tail());
    Ok(())
}

/// 200 inserts and some updates per tenant, each statement a transaction.
async fn write(w: &World, round: u32) -> anyhow::Result<()> {
    for t in &w.tenants {
        let rows: Vec<String> =
            (0..200).map(|i| format!("({}, 'new', {}.50, 'round {round}')", round * 1000 + i, i)).collect();
        w.exec(t, &[&format!("INSERT INTO orders VALUES {}", rows.join(", "))]).await?;
        w.exec(t, &[&format!("UPDATE orders SET status = 'seen' WHERE id % 7 = {}", round % 7)]).await?;
    }
    Ok(())
}

async fn a_cut_source_link_is_retried_in_process(kind: Kind) -> anyhow::Result<()> {
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    let proxy = FaultProxy::start(&host_port(&w.source_url())).await?;
    w.set_source_url(&via(&w.source_url(), proxy.addr()))?;
    w.start()?;
    for round in 0..3 {
        write(&w, round).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for cut in 0..2u32 {
        proxy.cut();
        // Writes go on at the source while the link is down.
        for round in 0..3 {
            write(&w, 10 + cut * 10 + round).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        w.assert_running()?;
        proxy.heal();
        write(&w, 50 + cut).await?;
    }
    let healed = std::time::Instant::now();
    await_exact(&mut w, Duration::from_secs(120)).await?;
    recovered("source link cut", kind, healed);
    let log = std::fs::read_to_string(&w.log_path)?;
    assert!(
        log.lines().any(|l| l.contains("stage failed; starting it again") && l.contains("source")),
        "the source stage was restarted in-process:\n{}",
        w.log_tail()
    );
    assert_eq!(log.matches("lablake failed").count(), 0, "the process never exited");
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_mysql_link_is_retried_in_process() -> anyhow::Result<()> {
    a_cut_source_link_is_retried_in_process(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_postgres_link_is_retried_in_process() -> anyhow::Result<()> {
    a_cut_source_link_is_retried_in_process(Kind::Postgres).await
}

/// The broker dies (SIGKILL) three times and comes back on the same storage;
/// the source keeps changing while it is down (the producer holds those
/// changes until it is back). Each crash hits a broker at rest (everything
/// before it curated): tansu 0.6's S3 engine killed in the middle of a
/// produce leaves an offset hole (its watermark advanced, the batch never
/// written), which the curator rightly refuses to skip (docs/reliability.md).
async fn a_crashed_broker_loses_nothing(kind: Kind) -> anyhow::Result<()> {
    let mut broker = PrivateBroker::start()?;
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    w.set_kafka_brokers(&broker.brokers())?;
    w.start()?;
    for round in 0..3 {
        write(&w, round).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut healed = None;
    for crash in 0..3u32 {
        await_exact(&mut w, Duration::from_secs(180)).await?;
        if let Some(at) = healed.take() {
            recovered("broker crash", kind, at);
        }
        broker.crash();
        for round in 0..2 {
            write(&w, 10 + crash * 10 + round).await?;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        w.assert_running()?;
        broker.restart()?;
        healed = Some(std::time::Instant::now());
        write(&w, 60 + crash).await?;
    }
    await_exact(&mut w, Duration::from_secs(180)).await?;
    if let Some(at) = healed {
        recovered("broker crash", kind, at);
    }
    assert_never_exited(&mut w)?;
    // The broker still holds every record (what replay rebuilds from), not
    // only what the lake needed: each log starts at 0. (tansu's SQLite engine
    // deleted every record of a `cleanup.policy = delete`, `retention.ms =
    // -1` topic at each start: docs/reliability.md.)
    let bounds = lablake_tests::log_bounds(&broker.brokers(), &format!("{}.", w.prefix))?;
    let held: i64 = bounds.values().map(|(_, high)| high).sum();
    anyhow::ensure!(bounds.len() >= 2 * 2 && held > 0, "the tenants' partitions: {bounds:?}");
    let trimmed: Vec<_> = bounds.iter().filter(|(_, (low, _))| *low != 0).collect();
    anyhow::ensure!(trimmed.is_empty(), "logs that lost their start: {trimmed:?}");
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_broker_loses_nothing_mysql() -> anyhow::Result<()> {
    a_crashed_broker_loses_nothing(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_broker_loses_nothing_postgres() -> anyhow::Result<()> {
    a_crashed_broker_loses_nothing(Kind::Postgres).await
}

/// The source link goes silent for 30 s while the source keeps changing,
/// then slow: the stage notices by its own timeouts, retries, and the lake
/// ends exact once the link is back.
async fn a_silent_source_link_is_noticed_and_survived(kind: Kind) -> anyhow::Result<()> {
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    let proxy = FaultProxy::start(&host_port(&w.source_url())).await?;
    w.set_source_url(&via(&w.source_url(), proxy.addr()))?;
    silent_then_slow(&mut w, &proxy, Duration::from_millis(200), "source link", kind, None).await
}

/// With `metrics` (a pipeline's `metrics.listen`): `/metrics` answers, with
/// metrics, at `when`.
async fn observable(metrics: Option<&str>, when: &str) -> anyhow::Result<()> {
    if let Some(addr) = metrics {
        let text = scrape_metrics(addr).await.with_context(|| format!("/metrics does not answer {when}"))?;
        anyhow::ensure!(text.contains("lablake_"), "/metrics answered {when} without metrics");
    }
    Ok(())
}

/// Starts the pipeline, then the link through `proxy` goes silent for 30 s
/// while the source keeps changing, then slow (`latency` per chunk each
/// way): no exit, the lake exact with each change once. With `metrics` (the
/// pipeline's `metrics.listen`), `/metrics` answers throughout: the fault is
/// when an operator looks.
async fn silent_then_slow(
    w: &mut World,
    proxy: &FaultProxy,
    latency: Duration,
    link: &str,
    kind: Kind,
    metrics: Option<&str>,
) -> anyhow::Result<()> {
    w.start()?;
    write(w, 0).await?;
    await_exact(w, Duration::from_secs(120)).await?;
    observable(metrics, "before the fault").await?;
    proxy.blackhole();
    for round in 1..=6 {
        write(w, round).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        observable(metrics, &format!("{}s into the {link} blackhole", round * 5)).await?;
    }
    w.assert_running()?;
    proxy.heal();
    proxy.set_latency(latency);
    let healed = std::time::Instant::now();
    write(w, 7).await?;
    await_exact(w, Duration::from_secs(180)).await?;
    observable(metrics, "after the heal").await?;
    recovered(&format!("{link} silent 30 s, then {} ms per chunk", latency.as_millis()), kind, healed);
    assert_never_exited(w)?;
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_mysql_link_is_noticed_and_survived() -> anyhow::Result<()> {
    a_silent_source_link_is_noticed_and_survived(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_postgres_link_is_noticed_and_survived() -> anyhow::Result<()> {
    a_silent_source_link_is_noticed_and_survived(Kind::Postgres).await
}

/// The link between `lablake` and the Kafka broker goes silent for 30 s
/// (every connection, not only the bootstrap one: the broker advertises the
/// proxy's address; bytes held, nothing reset), then slow: producer and
/// consumer wait it out, the process never exits, the lake ends exact with
/// each change once.
async fn a_silent_then_slow_broker_link_is_survived(kind: Kind) -> anyhow::Result<()> {
    if PrivateBroker::binary().is_none() {
        eprintln!("skipped: no local tansu (LABLAKE_TANSU_BIN) to put a proxy in front of");
        return Ok(());
    }
    let port = PrivateBroker::free_port()?;
    let proxy = FaultProxy::start(&format!("127.0.0.1:{port}")).await?;
    let broker = PrivateBroker::start_on(port, &proxy.addr().to_string())?;
    let metrics = format!("127.0.0.1:{}", PrivateBroker::free_port()?);
    let mut w = World::with_source(kind, 2, &[DDL], &format!("\n[metrics]\nlisten = \"{metrics}\"\n")).await?;
    w.set_kafka_brokers(&broker.brokers())?;
    // 200 ms per chunk each way: slow metadata requests once starved the
    // curator's reading (its discovery timer burst; docs/reliability.md).
    silent_then_slow(&mut w, &proxy, Duration::from_millis(200), "broker link", kind, Some(&metrics)).await?;
    // A failed topic discovery is tried again at the next interval; it once
    // restarted the curator stage every 10 s of the blackhole.
    let log = std::fs::read_to_string(&w.log_path)?;
    anyhow::ensure!(
        !log.lines().any(|l| l.contains("stage failed") && l.contains("curator")),
        "the curator stage restarted during the broker-link blackhole:\n{}",
        w.log_tail()
    );
    drop(broker);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_then_slow_broker_link_is_survived_mysql() -> anyhow::Result<()> {
    a_silent_then_slow_broker_link_is_survived(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_then_slow_broker_link_is_survived_postgres() -> anyhow::Result<()> {
    a_silent_then_slow_broker_link_is_survived(Kind::Postgres).await
}

/// Every lake write of one tenant fails (each `PUT` under its prefix answered
/// `503 SlowDown`) for a while, the other tenant's keep landing: only the
/// failing tenant's partitions are held back and read again from their
/// checkpoints after a backoff; the curator stage never restarts, the
/// process never exits, and once the writes succeed the held tenant lands
/// exact too, each change once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_failing_lake_writes_hold_back_only_that_tenant() -> anyhow::Result<()> {
    let target = lablake_tests::proxy::host_port(&lablake_tests::s3_endpoint());
    let proxy = HttpFaultProxy::start(&target, Rates { error: 0.0, reset_after: 0.0 }, 1).await?;
    let mut w = World::new(2, &[DDL], "").await?;
    w.set_aws_endpoint(&proxy.url())?;
    w.start()?;
    write(&w, 0).await?;
    await_exact(&mut w, Duration::from_secs(120)).await?;
    let (bad, good) = (w.tenants[0].clone(), w.tenants[1].clone());
    proxy.fail_writes_to(Some(&format!("/{bad}/curated/")));
    let failing = std::time::Instant::now();
    // For at least 30 s the other tenant keeps landing, each round within
    // 20 s, while the failing one's writes still fail.
    let mut round = 1;
    while failing.elapsed() < Duration::from_secs(30) {
        write(&w, round).await?;
        round += 1;
        let expected = w.source_state(&good, "orders", COLS).await?;
        w.await_curated_state(&good, "orders", "id", &expected, Duration::from_secs(20)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let held = w.source_state(&bad, "orders", COLS).await?;
    anyhow::ensure!(w.curated_state(&bad, "orders", "id").await? != held, "the failing tenant cannot have landed");
    let log = std::fs::read_to_string(&w.log_path)?;
    anyhow::ensure!(log.contains("holding back this partition"), "no partition held back:\n{}", w.log_tail());
    proxy.fail_writes_to(None);
    let healed = std::time::Instant::now();
    write(&w, round).await?;
    await_exact(&mut w, Duration::from_secs(120)).await?;
    recovered("one tenant's lake writes failing 30 s", Kind::Mysql, healed);
    let log = std::fs::read_to_string(&w.log_path)?;
    let held_lines: Vec<&str> = log.lines().filter(|l| l.contains("holding back this partition")).collect();
    assert!(held_lines.iter().all(|l| l.contains(&*bad)), "only the failing tenant is held back: {held_lines:#?}");
    assert_eq!(log.matches("stage failed; starting it again").count(), 0, "no stage restarted:\n{}", w.log_tail());
    assert_never_exited(&mut w)?;
    let _ = w.stop();
    Ok(())
}

/// S3 and DynamoDB fail, throttle and reset after applying while the
/// pipeline runs: retried, the lake exact, each change once.
async fn failing_and_throttling_aws_services_lose_nothing(kind: Kind) -> anyhow::Result<()> {
    let seed = std::env::var("LABLAKE_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("fault seed {seed} (LABLAKE_FAULT_SEED={seed} replays it)");
    let target = lablake_tests::proxy::host_port(&lablake_tests::s3_endpoint());
    let proxy = HttpFaultProxy::start(&target, Rates { error: 0.08, reset_after: 0.05 }, seed).await?;
    let mut w = World::with_source(kind, 2, &[DDL], "").await?;
    w.set_aws_endpoint(&proxy.url())?;
    w.start()?;
    for round in 0..20 {
        write(&w, round).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    await_exact(&mut w, Duration::from_secs(240)).await?;
    let (requests, errors, resets) = proxy.counts();
    eprintln!("injected over {requests} requests: {errors} errors/throttles, {resets} resets after applying");
    assert!(requests > 100 && errors * 100 >= requests, "≥ 1 % injected: {requests} {errors} (seed {seed})");
    assert!(resets > 0, "some resets after applying (seed {seed})");
    assert_never_exited(&mut w)?;
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_throttling_aws_services_lose_nothing_mysql() -> anyhow::Result<()> {
    failing_and_throttling_aws_services_lose_nothing(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_and_throttling_aws_services_lose_nothing_postgres() -> anyhow::Result<()> {
    failing_and_throttling_aws_services_lose_nothing(Kind::Postgres).await
}

/// S3 and DynamoDB answer every request with a retryable error (`503`,
/// throttling) for the first 10 s of the process: start-up (the checkpoint
/// table, the first resume and lake writes) waits with backoff instead of
/// exiting, and once the services answer the lake ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_services_failing_at_start_up_are_waited_for() -> anyhow::Result<()> {
    let target = lablake_tests::proxy::host_port(&lablake_tests::s3_endpoint());
    let proxy = HttpFaultProxy::start(&target, Rates { error: 1.0, reset_after: 0.0 }, 1).await?;
    let mut w = World::with_source(Kind::Mysql, 2, &[DDL], "").await?;
    w.set_aws_endpoint(&proxy.url())?;
    write(&w, 0).await?;
    w.start()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    w.assert_running()?;
    let (requests, errors, _) = proxy.counts();
    anyhow::ensure!(requests >= 2 && errors == requests, "every request failed: {errors} of {requests}");
    proxy.set_enabled(false);
    let healed = std::time::Instant::now();
    write(&w, 1).await?;
    await_exact(&mut w, Duration::from_secs(120)).await?;
    recovered("S3 and DynamoDB failing from start-up for 10 s", Kind::Mysql, healed);
    assert_never_exited(&mut w)?;
    let _ = w.stop();
    Ok(())
}
