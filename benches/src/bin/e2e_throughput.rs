//! End-to-end throughput: inserts N rows into MariaDB, runs `lablake run`, and
//! measures until every row is in curated Parquet. Prints one JSON report:
//! `{rows, seconds, rows_per_s, latency_p50_s, latency_p99_s, peak_rss_mb}`.
//!
//! ```text
//! eval "$(dev/services env)"; cargo build --release -p lablake-cli -p lablake-benches
//! LABLAKE_BIN=target/release/lablake target/release/e2e-throughput 200000          # burst
//! LABLAKE_BIN=target/release/lablake target/release/e2e-throughput 600000 20000    # steady 20k rows/s
//! ```
//!
//! Without a rate the rows are inserted as fast as MariaDB takes them (a
//! burst the pipeline then catches up with). With a rate (rows/s) they are
//! paced, and `steady_rss_mb` is the largest resident size sampled in the
//! second half of the insert phase.
//!
//! Latency is source commit time (binlog, 1 s resolution) → the curated file's
//! last-modified time in the object store, per row.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use lablake_checkpoint::prelude::*;
use lablake_checkpoint::{DynamoConfig, DynamoStore};
use lablake_tests::{World, dynamodb_endpoint};
use mysql_async::prelude::Queryable;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let rate: Option<u64> = std::env::args().nth(2).map(|s| s.parse()).transpose()?;
    let mut w = World::new(1, &[lablake_benches::mysql::RESULTS_DDL], "").await?;
    // Larger batches than the tests' defaults.
    let cfg = std::fs::read_to_string(&w.config_path)?
        .replace("max_rows = 5000", "max_rows = 100000")
        .replace("partitions = 2", "partitions = 4");
    std::fs::write(&w.config_path, cfg)?;
    let tenant = w.tenants[0].clone();
    w.start()?;
    let started = Instant::now();
    let mut conn = w.pool.get_conn().await?;
    conn.query_drop(format!("USE lab_{tenant}")).await?;
    let mut id = 0u64;
    let mut peak_rss_kb = 0u64;
    let mut steady_rss_kb = 0u64;
    while id < rows {
        if let Some(rate) = rate {
            // Pace: row `id` is due at id / rate seconds after the start.
            let due = Duration::from_secs_f64(id as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            if id >= rows / 2 {
                steady_rss_kb = steady_rss_kb.max(w.proc_status_kb("VmRSS:").unwrap_or(0));
            }
        }
        let n = 1000.min(rows - id);
        conn.query_drop(lablake_benches::mysql::insert_results(id..id + n)).await?;
        id += n;
    }
    let inserted = started.elapsed();
    let store = DynamoStore::connect(&DynamoConfig {
        table: format!("lablake_test_{}", w.id),
        endpoint: Some(dynamodb_endpoint()),
        region: None,
        create_table: true,
    })
    .await?;
    loop {
        w.assert_running()?;
        peak_rss_kb = peak_rss_kb.max(w.proc_status_kb("VmHWM:").unwrap_or(0));
        let done: u64 =
            store.status(Some(&tenant)).await?.iter().filter(|s| s.table == "results").map(|s| s.rows).sum();
        if done >= rows {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(900), "not done after 900 s ({done}/{rows})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    peak_rss_kb = peak_rss_kb.max(w.proc_status_kb("VmHWM:").unwrap_or(0));

    // Per-row latency: file last-modified minus row commit time.
    let lake = w.lake()?;
    let store_obj = lake.store_for(&tenant)?;
    let prefix = object_store::path::Path::from(format!("{tenant}/curated"));
    let metas: Vec<object_store::ObjectMeta> = store_obj.list(Some(&prefix)).try_collect().await?;
    let mut lat = Vec::new();
    for m in metas {
        let bytes = lake.get(&tenant, m.location.as_ref()).await?;
        let modified_ms = m.last_modified.timestamp_millis();
        for b in lablake_lake::decode_parquet(bytes)? {
            let col = b.column_by_name("_commit_ts").context("no _commit_ts")?;
            let ts =
                col.as_any().downcast_ref::<arrow::array::TimestampMicrosecondArray>().context("_commit_ts type")?;
            for v in ts.iter().flatten() {
                lat.push((modified_ms - v / 1000) as f64 / 1000.0);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct =
        |q: f64| lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    let report = serde_json::json!({
        "rows": rows,
        "seconds": (seconds * 100.0).round() / 100.0,
        "insert_seconds": (inserted.as_secs_f64() * 100.0).round() / 100.0,
        "rows_per_s": (rows as f64 / seconds).round(),
        "latency_p50_s": pct(0.50),
        "latency_p99_s": pct(0.99),
        "peak_rss_mb": peak_rss_kb / 1024,
        "rate": rate,
        "steady_rss_mb": rate.map(|_| steady_rss_kb / 1024),
    });
    println!("{report}");
    let _ = w.stop();
    Ok(())
}
