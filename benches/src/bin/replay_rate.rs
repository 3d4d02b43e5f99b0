//! Replay rate next to the live curation rate, on the same topics in the
//! same run (issue 14, ADR 0013). One tenant's `results` table gets `rows`
//! inserts and an update of every row (2 × `rows` changes); `lablake source`
//! alone puts them on the topic; then `lablake curate` alone curates the
//! backlog (the live rate: records / seconds until every partition's
//! checkpoint reached the log end); then `lablake replay --no-cut-over`
//! rebuilds the same records into generation 1 (the replay rate: the build's
//! records / seconds, from its report; the verification gate is timed apart).
//! Prints one JSON report.
//!
//! ```text
//! eval "$(dev/services env)"; dev/services up
//! cargo build --release -p lablake-cli -p lablake-benches
//! LABLAKE_BIN=target/release/lablake target/release/replay-rate [rows=200000]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context;
use lablake_checkpoint::{BatchStore, PartitionRef};
use lablake_tests::{World, kafka_brokers, log_bounds};

const DDL: &str = "CREATE TABLE results (id BIGINT NOT NULL PRIMARY KEY, analyte VARCHAR(20), value DECIMAL(12,3), \
                   flag VARCHAR(4), version INT NOT NULL)";

/// The log end of every partition of the world's `results` topics.
fn log_ends(w: &World) -> anyhow::Result<Vec<((String, i32), i64)>> {
    Ok(log_bounds(&kafka_brokers(), &w.prefix)?
        .into_iter()
        .filter(|((t, _), _)| t.ends_with(".results"))
        .map(|(k, (_, high))| (k, high))
        .collect())
}

/// Records curated by `group`: the sum of its partitions' next offsets.
async fn curated(
    store: &lablake_checkpoint::DynamoStore,
    group: &str,
    ends: &[((String, i32), i64)],
) -> anyhow::Result<i64> {
    let mut sum = 0;
    for ((topic, p), _) in ends {
        sum += store.load_partition(&PartitionRef::new(group, topic, *p)).await?.map_or(0, |c| c.next_offset);
    }
    Ok(sum)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let w = World::new(1, &[DDL], "").await?;
    let t = w.tenants[0].clone();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(2000) {
        let values: Vec<String> = chunk.iter().map(|id| format!("({id}, 'K{}', {id}.5, NULL, 1)", id % 40)).collect();
        w.exec(&t, &[&format!("INSERT INTO results VALUES {}", values.join(", "))]).await?;
    }
    for lo in (0..rows).step_by(5000) {
        w.exec(&t, &[&format!("UPDATE results SET version = 2, flag = 'H' WHERE id >= {lo} AND id < {}", lo + 5000)])
            .await?;
    }

    // The source alone until the topic stops growing.
    let mut source = lablake_tests::Reaped(w.spawn(&["source"])?);
    let (mut last, mut still) = (-1, 0);
    let deadline = Instant::now() + Duration::from_secs(1800);
    while still < 3 {
        anyhow::ensure!(Instant::now() < deadline, "the source did not finish within 30 min");
        anyhow::ensure!(source.try_wait()?.is_none(), "the source exited:\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now: i64 = log_ends(&w)?.iter().map(|(_, h)| h).sum();
        if now == last && now >= 2 * rows as i64 {
            still += 1
        } else {
            still = 0
        }
        last = now;
    }
    let _ = source.kill();
    let _ = source.wait();
    let ends = log_ends(&w)?;
    let records: i64 = ends.iter().map(|(_, h)| h).sum();

    // Live curation of the backlog.
    let store = w.checkpoint_store().await?;
    let group = format!("g{}", w.id);
    let started = Instant::now();
    let mut curate = lablake_tests::Reaped(w.spawn(&["curate"])?);
    while curated(&store, &group, &ends).await? < records {
        anyhow::ensure!(curate.try_wait()?.is_none(), "the curator exited:\n{}", w.log_tail());
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "curation did not finish within 30 min");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let live_secs = started.elapsed().as_secs_f64();
    let _ = curate.kill();
    let _ = curate.wait();

    // The replay of the same records into generation 1.
    let started = Instant::now();
    let out = w.run_cli(&["replay", "--tenant", &t, "--no-cut-over", "--progress-secs", "10"])?;
    let total_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let last_line = out.stdout.split(|b| *b == b'\n').rfind(|l| !l.is_empty()).unwrap_or_default();
    let report: serde_json::Value = serde_json::from_slice(last_line).context("the replay's report")?;
    let built = report["built_records"].as_i64().unwrap_or(0);
    let build_secs = report["build_secs"].as_f64().unwrap_or(0.0);
    anyhow::ensure!(built == records, "the replay built {built} of {records} records");
    let equal = report["tables"].as_array().is_some_and(|t| t.iter().all(|t| t["active"] == t["rebuilt"]));
    anyhow::ensure!(equal, "the rebuilt generation differs: {report}");
    let live_rate = records as f64 / live_secs;
    let replay_rate = built as f64 / build_secs.max(0.001);
    println!(
        "{}",
        serde_json::json!({
            "bench": "replay-rate",
            "lablake_bin": lablake_tests::lablake_bin().display().to_string(),
            "records": records,
            "live_curation_secs": live_secs,
            "live_records_per_s": live_rate.round(),
            "replay_build_secs": build_secs,
            "replay_records_per_s": replay_rate.round(),
            "replay_vs_live": (replay_rate / live_rate * 100.0).round() / 100.0,
            "replay_total_secs_with_gate": total_secs,
        })
    );
    Ok(())
}
