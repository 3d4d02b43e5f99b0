//! Time to recover after each fault: from the moment the fault heals until
//! every affected tenant's curated lake is fresh again — a batch committed
//! after the heal whose newest change is under 5 s old
//! (`lablake_curate_lag_seconds{tenant}` and
//! `lablake_curate_committed_timestamp_seconds{tenant}` from `/metrics`).
//! A steady writer (ROWS_PER_S over 2 tenants, one transaction per tenant every
//! 500 ms) runs throughout; each fault starts from a fresh lake (lag < 5 s).
//! Faults: `lablake` SIGKILLed and started again; the source link cut 10 s;
//! the source link silent 30 s; the broker crashed and down 5 s (with
//! the writer running on the SQLite engine; paused first on tansu's S3
//! engine, which is not crash-consistent mid-produce, docs/reliability.md); the broker link silent 30 s; S3 and
//! DynamoDB unreachable 20 s; one tenant's lake writes failing 30 s (the
//! other tenant's worst lag meanwhile is reported too); the source
//! database crashed. Prints one JSON report; ends by checking the lake
//! exact. Crashes the shared source database: run it alone.
//! `LABLAKE_RECOVERY_FAULTS="broker link,database"` runs only the faults
//! whose names contain one of these.
//!
//! ```text
//! eval "$(dev/services env)"; dev/services up
//! cargo build --release -p lablake-cli -p lablake-benches
//! LABLAKE_BIN=target/release/lablake target/release/recovery [mysql|postgres] [rows_per_s=300]
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lablake_tests::broker::PrivateBroker;
use lablake_tests::http_fault::{HttpFaultProxy, Rates};
use lablake_tests::proxy::{FaultProxy, host_port, via};
use lablake_tests::{Kind, World, exec_on, metric_by_label, scrape_metrics, services};

const DDL: &str = "CREATE TABLE results (id BIGINT NOT NULL PRIMARY KEY, analyte VARCHAR(20), value DECIMAL(12,3), \
                   flag VARCHAR(4))";
const COLS: &[&str] = &["id", "analyte", "value", "flag"];
/// Fresh: the newest change of a batch committed after the heal is younger than this.
const FRESH_S: f64 = 5.0;

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Per tenant: (lag of its last committed batch, when it was committed), or
/// `None` while `/metrics` does not answer (the process restarting).
async fn freshness(addr: &str) -> Option<BTreeMap<String, (f64, f64)>> {
    let text = scrape_metrics(addr).await.ok()?;
    let lag = metric_by_label(&text, "lablake_curate_lag_seconds", "tenant");
    let at = metric_by_label(&text, "lablake_curate_committed_timestamp_seconds", "tenant");
    Some(lag.into_iter().filter_map(|(t, l)| Some((t.clone(), (l, *at.get(&t)?)))).collect())
}

/// Seconds from `healed` (an instant and its unix time) until each of
/// `tenants` committed a fresh batch after it; fails after `limit`.
async fn time_to_fresh(addr: &str, tenants: &[String], healed: (Instant, f64), limit: Duration) -> anyhow::Result<f64> {
    loop {
        if let Some(f) = freshness(addr).await
            && tenants.iter().all(|t| f.get(t).is_some_and(|&(lag, at)| at > healed.1 && lag < FRESH_S))
        {
            return Ok(healed.0.elapsed().as_secs_f64());
        }
        if healed.0.elapsed() > limit {
            bail!("not fresh {limit:?} after the heal: {:?}", freshness(addr).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `rows_per_s` rows per second over the tenants until `stop`, not
/// while `paused`; a statement that fails (the database down) is skipped.
fn spawn_writer(
    kind: Kind,
    pool: mysql_async::Pool,
    tenants: Vec<String>,
    rows_per_s: u64,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Few, larger transactions: the local broker stores every produced
        // batch in moto's S3, which many small ones saturate.
        let per = (rows_per_s / 2 / tenants.len() as u64).max(1);
        let mut id = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while !stop.load(Ordering::SeqCst) {
            tick.tick().await;
            if paused.load(Ordering::SeqCst) {
                continue;
            }
            let values: Vec<String> =
                (id..id + per).map(|i| format!("({i}, 'K{}', {}.125, NULL)", i % 40, i % 1000)).collect();
            let insert = format!("INSERT INTO results VALUES {}", values.join(", "));
            let update = format!("UPDATE results SET flag = 'H' WHERE id = {}", id.saturating_sub(per));
            for t in &tenants {
                if exec_on(kind, &pool, &format!("lab_{t}"), &[&insert, &update]).await.is_ok() {
                    written.fetch_add(per, Ordering::Relaxed);
                }
            }
            id += per;
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let kind = match std::env::args().nth(1).as_deref() {
        None | Some("mysql") => Kind::Mysql,
        Some("postgres") => Kind::Postgres,
        Some(other) => bail!("unknown source {other} (mysql or postgres)"),
    };
    let rows_per_s: u64 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(300);
    let port = PrivateBroker::free_port()?;
    let metrics_addr = format!("127.0.0.1:{}", PrivateBroker::free_port()?);
    let extra = format!("\n[metrics]\nlisten = \"{metrics_addr}\"\n");
    let mut w = World::with_source(kind, 2, &[DDL], &extra).await?;
    // Batches close after 2 s: the steady lag is the batch age, well under the 5 s of "fresh".
    let config = std::fs::read_to_string(&w.config_path)?.replace("max_age = \"30s\"", "max_age = \"2s\"");
    std::fs::write(&w.config_path, config)?;
    let tenants = w.tenants.clone();

    let source_link = FaultProxy::start(&host_port(&w.source_url())).await?;
    w.set_source_url(&via(&w.source_url(), source_link.addr()))?;
    let broker_link = FaultProxy::start(&format!("127.0.0.1:{port}")).await?;
    let mut broker = PrivateBroker::start_on(port, &broker_link.addr().to_string())?;
    w.set_kafka_brokers(&broker.brokers())?;
    let http =
        HttpFaultProxy::start(&host_port(&lablake_tests::s3_endpoint()), Rates { error: 0.0, reset_after: 0.0 }, 1)
            .await?;
    let aws_link = FaultProxy::start(&host_port(&http.url())).await?;
    w.set_aws_endpoint(&via(&http.url(), aws_link.addr()))?;

    let (paused, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let written = Arc::new(AtomicU64::new(0));
    w.start()?;
    let writer =
        spawn_writer(kind, w.pool.clone(), tenants.clone(), rows_per_s, paused.clone(), stop.clone(), written.clone());
    let limit = Duration::from_secs(300);
    let mut report: Vec<serde_json::Value> = Vec::new();
    let service = if kind == Kind::Mysql { "mysql" } else { "postgres" };
    let faults = [
        "lablake SIGKILLed, started again",
        "source link cut 10 s",
        "source link silent 30 s",
        "broker crashed, down 5 s",
        "broker link silent 30 s",
        "S3 and DynamoDB unreachable 20 s",
        "one tenant's lake writes failing 30 s",
        "source database crashed",
    ];
    // LABLAKE_RECOVERY_FAULTS="broker link,database": only the faults whose
    // name contains one of these.
    let only: Vec<String> = std::env::var("LABLAKE_RECOVERY_FAULTS")
        .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    for fault in faults.into_iter().filter(|f| only.is_empty() || only.iter().any(|o| f.contains(o.as_str()))) {
        // Steady and fresh before each fault.
        tokio::time::sleep(Duration::from_secs(10)).await;
        time_to_fresh(&metrics_addr, &tenants, (Instant::now(), unix_now()), limit)
            .await
            .with_context(|| format!("fresh before: {fault}"))?;
        let mut affected = tenants.clone();
        let mut other_worst: Option<f64> = None;
        match fault {
            "lablake SIGKILLed, started again" => {
                w.kill();
                w.start()?;
            }
            "source link cut 10 s" => {
                source_link.cut();
                tokio::time::sleep(Duration::from_secs(10)).await;
                source_link.heal();
            }
            "source link silent 30 s" => {
                source_link.blackhole();
                tokio::time::sleep(Duration::from_secs(30)).await;
                source_link.heal();
            }
            "broker crashed, down 5 s" => {
                // Under load on the SQLite engine; at rest (the writer paused) on
                // tansu's S3 engine, which is not crash-consistent mid-produce.
                let at_rest = !broker.survives_crash_mid_produce();
                if at_rest {
                    paused.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                broker.crash();
                tokio::time::sleep(Duration::from_secs(5)).await;
                broker.restart()?;
                paused.store(false, Ordering::SeqCst);
            }
            "broker link silent 30 s" => {
                broker_link.blackhole();
                tokio::time::sleep(Duration::from_secs(30)).await;
                broker_link.heal();
            }
            "S3 and DynamoDB unreachable 20 s" => {
                aws_link.cut();
                tokio::time::sleep(Duration::from_secs(20)).await;
                aws_link.heal();
            }
            "one tenant's lake writes failing 30 s" => {
                let (bad, good) = (tenants[0].clone(), tenants[1].clone());
                http.fail_writes_to(Some(&format!("/{bad}/curated/")));
                let until = Instant::now() + Duration::from_secs(30);
                let mut worst: f64 = 0.0;
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    // The other tenant's age of its newest curated change.
                    if let Some(f) = freshness(&metrics_addr).await
                        && let Some(&(lag, at)) = f.get(&good)
                    {
                        worst = worst.max(lag + (unix_now() - at));
                    }
                }
                http.fail_writes_to(None);
                affected = vec![bad];
                other_worst = Some(worst);
            }
            "source database crashed" => {
                services(&["restart", "--crash", service])?;
                let deadline = Instant::now() + Duration::from_secs(90);
                while exec_on(kind, &w.pool, &format!("lab_{}", tenants[0]), &["SELECT 1"]).await.is_err() {
                    anyhow::ensure!(Instant::now() < deadline, "the source database is not back after 90 s");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            _ => unreachable!("every fault is handled"),
        }
        let healed = (Instant::now(), unix_now());
        w.assert_running()?;
        // A fault not recovered from within the limit is reported, and the
        // run goes on with the next one (still from a fresh lake).
        let mut entry = match time_to_fresh(&metrics_addr, &affected, healed, limit).await {
            Ok(secs) => {
                eprintln!("recovery bench ({kind:?}): {fault}: fresh {secs:.1} s after the heal");
                serde_json::json!({ "fault": fault, "recovery_s": (secs * 10.0).round() / 10.0 })
            }
            Err(e) => {
                eprintln!("recovery bench ({kind:?}): {fault}: NOT recovered: {e:#}");
                serde_json::json!({ "fault": fault, "recovered": false, "error": format!("{e:#}") })
            }
        };
        if let Some(worst) = other_worst {
            entry["other_tenant_worst_age_s"] = serde_json::json!((worst * 10.0).round() / 10.0);
        }
        report.push(entry);
    }
    stop.store(true, Ordering::SeqCst);
    writer.await?;
    w.await_exact("results", "id", COLS, Duration::from_secs(300)).await.context("the lake exact at the end")?;
    let out = serde_json::json!({
        "bench": "recovery",
        "source": format!("{kind:?}").to_lowercase(),
        "rows_per_s": rows_per_s,
        "fresh_below_s": FRESH_S,
        "lablake": lablake_tests::lablake_bin().display().to_string(),
        "rows_written": written.load(Ordering::Relaxed),
        "faults": report,
        "lake_exact_at_end": true,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    let _ = w.stop();
    drop(broker);
    Ok(())
}
