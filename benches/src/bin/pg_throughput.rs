//! PostgreSQL → Kafka throughput against `pg_recvlogical` on the same WAL.
//! Prints one JSON report:
//! `{rows, pg_recvlogical_s, lablake_s, ratio}` where `ratio` is Lablake's
//! rows/s divided by `pg_recvlogical`'s (aim: ≥ 0.8).
//!
//! ```text
//! eval "$(dev/services env)"; cargo build --release -p lablake-benches
//! target/release/pg-throughput 200000 [--lablake-first]
//! ```
//!
//! Both readers get their own slot created at the same LSN before the rows
//! are written, and read up to the same end LSN, one after the other (so they
//! do not share the 2 cores). `pg_recvlogical` decodes with pgoutput
//! (`proto_version=1`, the publication) and writes to /dev/null; Lablake
//! decodes (protocol 2, binary values), encodes envelopes and produces to
//! Kafka, and the clock stops when Kafka acknowledged the last record.

use std::time::Instant;

use anyhow::Context;
use lablake_benches::pg;
use lablake_bus::{BusConfig, ChangeProducer, ack_queue};
use lablake_model::Resume;
use lablake_postgres::{PgSource, PgSourceConfig};
use lablake_source::SourceItem;
use lablake_tests::{kafka_brokers, pg_client, pg_url, rand_id};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows: i64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(200_000);
    let id = rand_id(8);
    let (schema, ours, theirs) = (format!("lab_b{id}"), format!("lablake_b{id}"), format!("recv_b{id}"));
    let c = pg_client().await?;
    c.batch_execute(&format!(
        "CREATE SCHEMA {schema}; {}; CREATE PUBLICATION {ours} FOR TABLE {schema}.results;",
        pg::results_ddl(&schema)
    ))
    .await?;
    for slot in [&ours, &theirs] {
        c.query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[slot]).await?;
    }
    pg::insert_results(&c, &schema, rows, 50_000).await?;
    let end: String = c.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0);
    let end_lsn = {
        let (hi, lo) = end.split_once('/').context("lsn")?;
        (u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?
    };

    let run_recvlogical = || -> anyhow::Result<f64> {
        let started = Instant::now();
        let bin = std::env::var("LABLAKE_PG_BIN")
            .map(|b| format!("{b}/pg_recvlogical"))
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_recvlogical".into());
        let status = std::process::Command::new(bin)
            .args(["-d", &pg_url(), "--slot", &theirs, "--start", "-o", "proto_version=1"])
            .args(["-o", &format!("publication_names={ours}"), "-f", "/dev/null", "--endpos", &end, "--no-loop"])
            .status()
            .context("running pg_recvlogical")?;
        anyhow::ensure!(status.success(), "pg_recvlogical failed: {status}");
        Ok(started.elapsed().as_secs_f64())
    };
    // `--lablake-first` swaps the order (the first reader finds the WAL colder).
    let lablake_first = std::env::args().any(|a| a == "--lablake-first");
    let mut theirs_s = if lablake_first { 0.0 } else { run_recvlogical()? };

    // Lablake: PgSource → envelopes → Kafka, until every record is acknowledged.
    let cfg: PgSourceConfig = serde_json::from_value(serde_json::json!({
        "name": "bench", "url": pg_url(), "slot": ours, "publication": ours,
        "tenant": { "kind": "schema", "pattern": "lab_{tenant}" }, "heartbeat_interval": "60s",
    }))?;
    let mut bus = BusConfig::new(kafka_brokers());
    bus.topic_prefix = format!("bench{id}");
    let mut producer = ChangeProducer::new(&bus)?;
    let (acks, mut acked) = ack_queue::<u64>(bus.max_in_flight);
    let started = Instant::now();
    let mut src = PgSource::start(&cfg, None).await?;
    let waiter = tokio::spawn(async move {
        while let Some(lsn) = acked.next().await? {
            if lsn >= end_lsn {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("acknowledgements ended before the end LSN")
    });
    let mut changes = 0i64;
    loop {
        match src.next().await? {
            SourceItem::Change(e) => {
                let sent = producer.send(&e).await?;
                acks.delivery(sent.topic, sent.delivery).await?;
                changes += 1;
            }
            SourceItem::Commit { resume: Resume::Lsn(lsn), .. }
            | SourceItem::Heartbeat { resume: Resume::Lsn(lsn) } => {
                acks.marker(lsn).await?;
                if lsn >= end_lsn {
                    break;
                }
            }
            _ => {}
        }
    }
    waiter.await??;
    let ours_s = started.elapsed().as_secs_f64();
    drop(acks);
    src.close().await;
    if lablake_first {
        theirs_s = run_recvlogical()?;
    }
    anyhow::ensure!(changes == rows, "read {changes} changes, wrote {rows}");
    for slot in [&ours, &theirs] {
        let _ = c.execute("SELECT pg_drop_replication_slot($1)", &[slot]).await;
    }
    c.batch_execute(&format!("DROP PUBLICATION {ours}; DROP SCHEMA {schema} CASCADE")).await?;
    let report = serde_json::json!({
        "rows": rows,
        "pg_recvlogical_s": (theirs_s * 100.0).round() / 100.0,
        "lablake_s": (ours_s * 100.0).round() / 100.0,
        "pg_recvlogical_rows_per_s": (rows as f64 / theirs_s).round(),
        "lablake_rows_per_s": (rows as f64 / ours_s).round(),
        "ratio": ((theirs_s / ours_s) * 100.0).round() / 100.0,
        "order": if lablake_first { "lablake first" } else { "pg_recvlogical first" },
    });
    println!("{report}");
    Ok(())
}
