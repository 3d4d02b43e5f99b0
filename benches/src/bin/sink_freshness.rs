//! Snowflake sink throughput and freshness against the local emulator:
//! MariaDB rows written at a steady rate flow through Kafka, the curated
//! lake and the sink into fakesnow; the clock per write batch runs from its
//! commit until Snowflake holds it (and everything before it). Prints one
//! JSON report with rows/s loaded and freshness p50/p99 (aim: p99 ≤ 30 s).
//!
//! ```text
//! eval "$(dev/services env)"; dev/services up --with-snowflake
//! cargo build --release -p lablake-cli -p lablake-benches
//! LABLAKE_BIN=target/release/lablake target/release/sink-freshness [rows=100000] [rows_per_s=10000]
//! ```

use std::time::{Duration, Instant};

use lablake_snowflake::{Client, SnowflakeConfig};
use lablake_tests::{World, env_or};
use mysql_async::prelude::Queryable;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let rate: u64 = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let url = env_or("LABLAKE_SNOWFLAKE_URL", "http://127.0.0.1:28080");
    let prefix = format!("LLB{}_", lablake_tests::rand_id(6).to_uppercase());
    let sink = format!(
        "[snowflake]\ndatabase_prefix = \"{prefix}\"\ninterval = \"250ms\"\n[snowflake.connection]\naccount = \"bench\"\n\
         user = \"lablake\"\npassword = \"bench\"\nbase_url = \"{url}\"\nallow_http = true\n"
    );
    let mut w = World::new(1, &[lablake_benches::mysql::RESULTS_DDL], &sink).await?;
    let cfg = std::fs::read_to_string(&w.config_path)?.replace("max_rows = 5000", "max_rows = 20000");
    std::fs::write(&w.config_path, cfg)?;
    let tenant = w.tenants[0].clone();
    w.start()?;
    let mut sf = {
        let mut c = SnowflakeConfig::new("bench", "lablake");
        c.base_url = Some(url.clone());
        c.allow_http = true;
        c.password = Some("bench".to_owned().into());
        Client::new(c)?
    };
    let count_sql = format!(
        "SELECT COUNT(*) AS N FROM \"{prefix}{}\".\"LAB_{}\".\"RESULTS\"",
        tenant.to_uppercase(),
        tenant.to_uppercase()
    );
    let visible = |r: Result<lablake_snowflake::QueryResult, _>| -> u64 {
        r.ok().and_then(|r| r.get(0, "n").and_then(|v| v.parse().ok())).unwrap_or(0)
    };

    // Writer: 1,000-row statements paced to `rate`; remembers when each committed.
    let pool = w.pool.clone();
    let db = format!("lab_{tenant}");
    let writer = tokio::spawn(async move {
        let mut conn = pool.get_conn().await?;
        conn.query_drop(format!("USE {db}")).await?;
        let started = Instant::now();
        let mut committed: Vec<(u64, Instant)> = Vec::new();
        let mut id = 0u64;
        while id < rows {
            let due = Duration::from_secs_f64(id as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let n = 1000.min(rows - id);
            conn.query_drop(lablake_benches::mysql::insert_results(id..id + n)).await?;
            id += n;
            committed.push((id, Instant::now()));
        }
        anyhow::Ok((committed, started.elapsed()))
    });

    // Poll Snowflake; a write batch is fresh once the row count covers it.
    let started = Instant::now();
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    let mut last = 0;
    while last < rows {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "only {last} of {rows} rows in Snowflake");
        w.assert_running()?;
        let n = visible(sf.query(&count_sql, &[]).await);
        if n > last {
            seen.push((n, Instant::now()));
            last = n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_visible = started.elapsed();
    let (committed, write_time) = writer.await??;
    let mut freshness: Vec<f64> = committed
        .iter()
        .filter_map(|(upto, at)| {
            let (_, when) = seen.iter().find(|(n, _)| n >= upto)?;
            Some(when.saturating_duration_since(*at).as_secs_f64())
        })
        .collect();
    freshness.sort_by(f64::total_cmp);
    let pct = |p: f64| freshness.get(((freshness.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let _ = w.stop();
    let report = serde_json::json!({
        "rows": rows,
        "source_rows_per_s": rate,
        "write_s": (write_time.as_secs_f64() * 10.0).round() / 10.0,
        "all_in_snowflake_s": (all_visible.as_secs_f64() * 10.0).round() / 10.0,
        "loaded_rows_per_s": (rows as f64 / all_visible.as_secs_f64()).round(),
        "freshness_p50_s": (pct(0.5) * 10.0).round() / 10.0,
        "freshness_p99_s": (pct(0.99) * 10.0).round() / 10.0,
        "freshness_max_s": (pct(1.0) * 10.0).round() / 10.0,
    });
    println!("{report}");
    Ok(())
}
