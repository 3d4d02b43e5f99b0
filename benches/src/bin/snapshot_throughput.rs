//! Snapshot throughput against a raw read of the same table, in the same
//! run, per source: PostgreSQL against `COPY … TO STDOUT` through psql,
//! MySQL/MariaDB against `SELECT *` through the mariadb/mysql client, both to
//! /dev/null. Prints one JSON report: `{source, rows, raw_s, lablake_s,
//! ratio}` where `ratio` is Lablake's rows/s divided by the raw read's (aim:
//! ≥ 0.7).
//!
//! ```text
//! eval "$(dev/services env)"; cargo build --release -p lablake-benches
//! target/release/snapshot-throughput 500000 [--source postgres|mysql] [--chunk-rows N] [--parallel N] [--read-only]
//! ```
//!
//! `--read-only` stops after the chunk reads and decodes (no envelopes, no
//! Kafka), to split the cost.
//!
//! Lablake's side is the snapshot path of the source stage through the same
//! `Snapshotter` the pipeline uses: for every chunk a low watermark, a
//! key-ordered chunk read converted to the streamed values, a high
//! watermark, then each row becomes a change event, an envelope, and a Kafka
//! record; the clock stops when Kafka acknowledged the last one. The
//! stream-side window bookkeeping (an idle table here) is not part of it.

use std::time::Instant;

use anyhow::Context;
use lablake_benches::{mysql, pg};
use lablake_bus::{BusConfig, ChangeProducer, ack_queue};
use lablake_model::{ChangeEvent, Op, SourceInfo, SourcePosition, TableId};
use lablake_mysql::{MysqlSnapshotter, MysqlSourceConfig};
use lablake_pipeline::snapshot::read_chunks;
use lablake_postgres::{PgSnapshotter, PgSourceConfig};
use lablake_source::{SnapshotTable, Snapshotter};
use lablake_tests::{kafka_brokers, mysql_url, pg_client, pg_url, rand_id};
use mysql_async::prelude::Queryable;

struct Run {
    chunk_rows: usize,
    /// Chunks read in parallel per window (one connection each).
    parallel: usize,
    read_only: bool,
    bus: BusConfig,
}

/// Snapshots `table` through `snap` the way the source stage does — a
/// reader task (watermarks and chunk reads) handing chunks over a channel of
/// capacity 1 to the producing side, so the next chunk is read while the
/// current one is produced; returns the rows read and the seconds until
/// Kafka acknowledged the last one.
async fn snapshot<R: Snapshotter + 'static>(mut readers: Vec<R>, id: &TableId, run: &Run) -> anyhow::Result<(i64, f64)>
where
    R::Table: 'static,
{
    let table = readers[0].table(id).await?.context("benchmark table layout")?;
    let schema = table.schema().clone();
    let mut producer = ChangeProducer::new(&run.bus)?;
    let (acks, mut acked) = ack_queue::<()>(run.bus.max_in_flight);
    let waiter = tokio::spawn(async move {
        let mut n = 0u64;
        while acked.next().await?.is_some() {
            n += 1;
        }
        anyhow::Ok(n)
    });
    let name: std::sync::Arc<str> = "bench".into();
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Vec<Vec<lablake_model::Value>>)>(1);
    let chunk_rows = run.chunk_rows;
    let reader = tokio::spawn(async move {
        let (mut last, mut chunk_no) = (None, 0u64);
        loop {
            chunk_no += 1;
            readers[0].watermark(&format!("l:bench:{chunk_no}")).await?;
            let (chunk, done) = read_chunks(&mut readers, &table, last.as_deref(), chunk_rows).await?;
            if tx.send((chunk_no, chunk.rows)).await.is_err() {
                break;
            }
            readers[0].watermark(&format!("h:bench:{chunk_no}")).await?;
            if done {
                break;
            }
            last = chunk.last_key;
        }
        anyhow::Ok(())
    });
    let mut read = 0i64;
    while let Some((chunk_no, rows)) = rx.recv().await {
        read += rows.len() as i64;
        if run.read_only {
            continue;
        }
        for (i, row) in rows.into_iter().enumerate() {
            let event = ChangeEvent {
                table: id.clone(),
                op: Op::Read,
                schema: schema.clone(),
                before: None,
                after: Some(row),
                source: SourceInfo {
                    connector: "bench".into(),
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
            let sent = producer.send(&event).await?;
            acks.delivery(sent.topic, sent.delivery).await?;
        }
        acks.marker(()).await?;
    }
    reader.await??;
    drop(acks);
    waiter.await??;
    Ok((read, started.elapsed().as_secs_f64()))
}

/// Runs `cmd` with stdout to /dev/null twice (the first warms the caches) and
/// times the second.
fn raw_read(cmd: &mut dyn FnMut() -> std::process::Command) -> anyhow::Result<f64> {
    let mut once = || -> anyhow::Result<f64> {
        let started = Instant::now();
        let status = cmd().stdout(std::process::Stdio::null()).status().context("running the raw reader")?;
        anyhow::ensure!(status.success(), "raw read failed: {status}");
        Ok(started.elapsed().as_secs_f64())
    };
    once()?;
    once()
}

async fn postgres(rows: i64, run: &Run, id: &str) -> anyhow::Result<(f64, i64, f64)> {
    let schema = format!("lab_s{id}");
    let c = pg_client().await?;
    c.batch_execute(&format!("CREATE SCHEMA {schema}; {}", pg::results_ddl(&schema))).await?;
    pg::insert_results(&c, &schema, rows, 100_000).await?;
    c.batch_execute(&format!("VACUUM ANALYZE {schema}.results")).await?;
    let psql = std::env::var("LABLAKE_PG_BIN")
        .map(|b| format!("{b}/psql"))
        .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/psql".into());
    let raw_s = raw_read(&mut || {
        let mut c = std::process::Command::new(&psql);
        c.args([&pg_url(), "-q", "-c", &format!("COPY {schema}.results TO STDOUT")]);
        c
    })?;
    let cfg: PgSourceConfig = serde_json::from_value(serde_json::json!({
        "name": "bench", "url": pg_url(), "slot": "unused", "publication": "unused",
        "tenant": { "kind": "schema", "pattern": "lab_{tenant}" },
    }))?;
    let mut readers = Vec::new();
    for _ in 0..run.parallel {
        readers.push(PgSnapshotter::connect(&cfg).await?);
    }
    let table = readers[0].tables().await?.into_iter().find(|t| *t.database == *schema).context("table not listed")?;
    let (read, ours_s) = snapshot(readers, &table, run).await?;
    c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
    Ok((raw_s, read, ours_s))
}

async fn mysql(rows: i64, run: &Run, id: &str) -> anyhow::Result<(f64, i64, f64)> {
    let db = format!("lab_s{id}");
    let pool = mysql_async::Pool::new(mysql_url().as_str());
    let mut c = pool.get_conn().await?;
    c.query_drop(format!("CREATE DATABASE {db}")).await?;
    c.query_drop(format!("USE {db}")).await?;
    c.query_drop(mysql::RESULTS_DDL).await?;
    let rows_u = u64::try_from(rows)?;
    let mut done = 0u64;
    while done < rows_u {
        let n = 5_000.min(rows_u - done);
        c.query_drop(mysql::insert_results(done..done + n)).await?;
        done += n;
    }
    c.query_drop("ANALYZE TABLE results").await?;
    let opts = mysql_async::Opts::from_url(&mysql_url())?;
    let client = if std::path::Path::new("/usr/bin/mariadb").exists() { "mariadb" } else { "mysql" };
    let raw_s = raw_read(&mut || {
        let mut c = std::process::Command::new(client);
        c.args(["--protocol=TCP", "-h", opts.ip_or_hostname(), "-P", &opts.tcp_port().to_string()])
            .args(["-u", opts.user().unwrap_or("root"), "--quick", "--batch", "--skip-column-names"])
            .args(["-e", &format!("SELECT * FROM {db}.results")]);
        if let Some(p) = opts.pass() {
            c.env("MYSQL_PWD", p);
        }
        c
    })?;
    let cfg: MysqlSourceConfig = serde_json::from_value(serde_json::json!({
        "name": "bench", "url": mysql_url(), "server_id": 4_000_000_000u32,
        "tenant": { "kind": "schema", "pattern": "lab_{tenant}" },
    }))?;
    let mut readers = Vec::new();
    for _ in 0..run.parallel {
        readers.push(MysqlSnapshotter::connect(&cfg).await?);
    }
    let table = readers[0].tables().await?.into_iter().find(|t| *t.database == *db).context("table not listed")?;
    let (read, ours_s) = snapshot(readers, &table, run).await?;
    c.query_drop(format!("DROP DATABASE {db}")).await?;
    Ok((raw_s, read, ours_s))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rows: i64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(500_000);
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let chunk_rows: usize = flag("--chunk-rows").map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let source = flag("--source").unwrap_or_else(|| "postgres".into());
    let read_only = args.iter().any(|a| a == "--read-only");
    let id = rand_id(8);
    let mut bus = BusConfig::new(kafka_brokers());
    bus.topic_prefix = format!("snap{id}");
    let parallel: usize = flag("--parallel").map(|s| s.parse()).transpose()?.unwrap_or(1).max(1);
    let run = Run { chunk_rows, parallel, read_only, bus };
    let (raw_s, read, ours_s) = match source.as_str() {
        "postgres" => postgres(rows, &run, &id).await?,
        "mysql" => mysql(rows, &run, &id).await?,
        other => anyhow::bail!("--source must be postgres or mysql, got `{other}`"),
    };
    anyhow::ensure!(read == rows, "snapshot read {read} rows, table has {rows}");
    let report = serde_json::json!({
        "source": source,
        "rows": rows,
        "chunk_rows": chunk_rows,
        "parallel_chunks": parallel,
        "path": if read_only { "chunk reads + decode" } else { "chunk reads + decode + envelope + Kafka acked" },
        "raw": if source == "postgres" { "psql COPY TO STDOUT" } else { "mariadb --quick SELECT *" },
        "raw_s": (raw_s * 100.0).round() / 100.0,
        "lablake_s": (ours_s * 100.0).round() / 100.0,
        "raw_rows_per_s": (rows as f64 / raw_s).round(),
        "lablake_rows_per_s": (rows as f64 / ours_s).round(),
        "ratio": ((raw_s / ours_s) * 100.0).round() / 100.0,
    });
    println!("{report}");
    Ok(())
}
