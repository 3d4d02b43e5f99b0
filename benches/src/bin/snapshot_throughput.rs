//! PostgreSQL snapshot throughput against a raw `COPY … TO STDOUT` of the
//! same table to /dev/null (psql), in the same run. Prints one JSON report:
//! `{rows, raw_copy_s, lablake_s, ratio}` where `ratio` is Lablake's rows/s
//! divided by the raw read's (aim: ≥ 0.7).
//!
//! ```text
//! eval "$(dev/services env)"; cargo build --release -p lablake-benches
//! target/release/snapshot-throughput 500000 [--chunk-rows N] [--read-only]
//! ```
//!
//! `--read-only` stops after the chunk reads and decodes (no envelopes, no
//! Kafka), to split the cost.
//!
//! Lablake's side is the snapshot path of the source stage: for every chunk a
//! low watermark, a key-ordered `COPY (…) (FORMAT binary)` chunk read and
//! decode, a high watermark, then each row becomes a change event, an
//! envelope, and a Kafka record; the clock stops when Kafka acknowledged the
//! last one. The stream-side window bookkeeping (an idle table here) is not
//! part of it.

use std::time::Instant;

use anyhow::Context;
use lablake_benches::pg;
use lablake_bus::{BusConfig, ChangeProducer, ack_queue};
use lablake_model::{ChangeEvent, Op, SourceInfo, SourcePosition};
use lablake_postgres::{PgSnapshotter, PgSourceConfig};
use lablake_tests::{kafka_brokers, pg_client, pg_url, rand_id};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows: i64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(500_000);
    let chunk_rows: usize = args
        .iter()
        .position(|a| a == "--chunk-rows")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let read_only = args.iter().any(|a| a == "--read-only");
    let id = rand_id(8);
    let schema = format!("lab_s{id}");
    let c = pg_client().await?;
    c.batch_execute(&format!("CREATE SCHEMA {schema}; {}", pg::results_ddl(&schema))).await?;
    pg::insert_results(&c, &schema, rows, 100_000).await?;
    c.batch_execute(&format!("VACUUM ANALYZE {schema}.results")).await?;

    // Raw read: COPY in text format to /dev/null through psql.
    let psql = std::env::var("LABLAKE_PG_BIN")
        .map(|b| format!("{b}/psql"))
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/psql".into());
    let raw = || -> anyhow::Result<f64> {
        let started = Instant::now();
        let out = std::process::Command::new(&psql)
            .args([&pg_url(), "-q", "-c", &format!("COPY {schema}.results TO STDOUT")])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running psql")?;
        anyhow::ensure!(out.success(), "psql failed: {out}");
        Ok(started.elapsed().as_secs_f64())
    };
    raw()?; // warm the cache for both
    let raw_s = raw()?;

    let cfg: PgSourceConfig = serde_json::from_value(serde_json::json!({
        "name": "bench", "url": pg_url(), "slot": "unused", "publication": "unused",
        "tenant": { "kind": "schema", "pattern": "lab_{tenant}" },
    }))?;
    let mut bus = BusConfig::new(kafka_brokers());
    bus.topic_prefix = format!("snap{id}");
    let mut producer = ChangeProducer::new(&bus)?;
    let (acks, mut acked) = ack_queue::<()>(bus.max_in_flight);
    let waiter = tokio::spawn(async move {
        let mut n = 0u64;
        while acked.next().await?.is_some() {
            n += 1;
        }
        anyhow::Ok(n)
    });
    let mut snap = PgSnapshotter::connect(&cfg).await?;
    let table_id =
        snap.tables().await?.into_iter().find(|t| *t.database == *schema).context("benchmark table not listed")?;
    let table = snap.table(&table_id).await?.context("benchmark table layout")?;
    let name: std::sync::Arc<str> = "bench".into();
    let started = Instant::now();
    let (mut last, mut read, mut chunk_no) = (None, 0i64, 0u64);
    loop {
        chunk_no += 1;
        snap.watermark(&format!("l:bench:{chunk_no}")).await?;
        let chunk = snap.read_chunk(&table, last.as_deref(), chunk_rows).await?;
        snap.watermark(&format!("h:bench:{chunk_no}")).await?;
        let n = chunk.rows.len();
        let rows_of_chunk = if read_only { Vec::new() } else { chunk.rows };
        for (i, row) in rows_of_chunk.into_iter().enumerate() {
            let event = ChangeEvent {
                table: table.id.clone(),
                op: Op::Read,
                schema: table.schema.clone(),
                before: None,
                after: Some(row),
                source: SourceInfo {
                    connector: "postgresql".into(),
                    name: name.clone(),
                    server_id: 0,
                    file: "".into(),
                    pos: chunk_no,
                    row: i as u32,
                    gtid: None,
                    ts_ms: 0,
                    position: SourcePosition::postgres(chunk_no, i as u32),
                },
                ts_ms: 0,
            };
            let (topic, fut) = producer.send(&event).await?;
            acks.delivery(topic, fut).await?;
        }
        acks.marker(()).await?;
        read += n as i64;
        if n < chunk_rows {
            break;
        }
        last = chunk.last_key;
    }
    drop(acks);
    waiter.await??;
    let ours_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(read == rows, "snapshot read {read} rows, table has {rows}");
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
    let report = serde_json::json!({
        "rows": rows,
        "chunk_rows": chunk_rows,
        "path": if read_only { "chunk reads + decode" } else { "chunk reads + decode + envelope + Kafka acked" },
        "raw_copy_s": (raw_s * 100.0).round() / 100.0,
        "lablake_s": (ours_s * 100.0).round() / 100.0,
        "raw_copy_rows_per_s": (rows as f64 / raw_s).round(),
        "lablake_rows_per_s": (rows as f64 / ours_s).round(),
        "ratio": ((raw_s / ours_s) * 100.0).round() / 100.0,
    });
    println!("{report}");
    Ok(())
}
