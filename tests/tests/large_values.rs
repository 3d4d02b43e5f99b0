//! Values too large for one Kafka record (`kafka.max_message_bytes`, default
//! 1,000,000 bytes): a 900 KB lab report never stops the pipeline. The change
//! is dead-lettered to its tenant's dead-letter topic (a small description:
//! table, op, position, sizes; the key as the record key), every other change
//! of the tenant and of every other tenant lands, and a restart does not meet
//! the change again. Storing such values in the object store is a later
//! step; until then the row is missing from the lake and named in the DLQ.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use lablake_tests::{Kind, World, consume_all, pg_client, pg_source_rows, source_rows};

/// 900 KiB: below MariaDB's and PostgreSQL's limits, above Kafka's default
/// once base64-encoded in the envelope (1.2 MB).
const BIG: usize = 921_600;

fn ddl(kind: Kind) -> &'static str {
    match kind {
        Kind::Mysql => {
            "CREATE TABLE reports (id INT NOT NULL PRIMARY KEY, patient VARCHAR(40) NOT NULL, pdf LONGBLOB, \
             note VARCHAR(100)) ENGINE=InnoDB"
        }
        Kind::Postgres => {
            "CREATE TABLE reports (id int PRIMARY KEY, patient varchar(40) NOT NULL, pdf bytea, note varchar(100))"
        }
    }
}

/// `INSERT` of a report whose PDF is `%PDF` repeated `times` times.
fn insert(kind: Kind, id: u32, patient: &str, times: usize) -> String {
    let pdf = match kind {
        Kind::Mysql => format!("REPEAT('%PDF', {times})"),
        Kind::Postgres => format!("convert_to(repeat('%PDF', {times}), 'UTF8')"),
    };
    format!("INSERT INTO reports VALUES ({id}, '{patient}', {pdf}, 'report {id}')")
}

/// The source's reports of `tenant`, rendered like the curated Parquet display.
async fn source_state(w: &World, tenant: &str) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    match w.kind {
        Kind::Mysql => {
            let cols = [("id", "id"), ("patient", "patient"), ("pdf", "HEX(pdf)"), ("note", "note")];
            source_rows(&w.pool, tenant, "reports", &cols).await
        }
        Kind::Postgres => {
            let cols = [("id", "id"), ("patient", "patient"), ("pdf", "upper(encode(pdf, 'hex'))"), ("note", "note")];
            pg_source_rows(&pg_client().await?, tenant, "reports", &cols).await
        }
    }
}

async fn oversized_row_is_dead_lettered_and_everything_else_flows(kind: Kind) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let extra = format!("[snapshot]\non_new_table = false\n\n[metrics]\nlisten = \"{metrics_addr}\"\n");
    let mut w = World::with_source(kind, 2, &[ddl(kind)], &extra).await?;
    let (a, b) = (w.tenants[0].clone(), w.tenants[1].clone());
    w.start()?;
    // Ordinary rows of both tenants, then in A one transaction with a 900 KB
    // report between two ordinary ones, then more rows of both.
    w.exec(&a, &[insert(kind, 1, "P1", 4).as_str(), insert(kind, 2, "P2", 4).as_str()]).await?;
    w.exec(&b, &[insert(kind, 1, "Q1", 4).as_str(), insert(kind, 2, "Q2", 4).as_str()]).await?;
    w.exec(
        &a,
        &[
            insert(kind, 3, "P3", 4).as_str(),
            insert(kind, 4, "PATIENT-OF-THE-BIG-ONE", BIG / 4).as_str(),
            insert(kind, 5, "P5", 4).as_str(),
        ],
    )
    .await?;
    w.exec(&b, &[insert(kind, 3, "Q3", 4).as_str(), insert(kind, 4, "Q4", 40).as_str()]).await?;
    w.exec(&a, &[insert(kind, 6, "P6", 4).as_str(), "UPDATE reports SET note = 'amended' WHERE id = 1"]).await?;
    w.exec(&b, &[insert(kind, 5, "Q5", 4).as_str(), "UPDATE reports SET note = 'amended' WHERE id = 2"]).await?;

    // B lands whole; A lands without exactly the oversized row.
    let expected_b = source_state(&w, &b).await?;
    assert_eq!(expected_b.len(), 5);
    w.await_curated_state(&b, "reports", "id", &expected_b, Duration::from_secs(120)).await?;
    let mut expected_a = source_state(&w, &a).await?;
    assert_eq!(expected_a.len(), 6);
    assert!(expected_a.remove("4").is_some_and(|r| r["pdf"].len() == 2 * BIG), "the big row is in the source");
    w.await_curated_state(&a, "reports", "id", &expected_a, Duration::from_secs(120)).await?;
    w.assert_running()?;

    // A's dead-letter topic holds one record naming the table and position.
    let dlq = consume_all(&format!("{}-dlq.{a}", w.prefix), Duration::from_secs(5))?;
    let records: Vec<_> = dlq.values().flatten().collect();
    assert_eq!(records.len(), 1, "dead letters of {a}: {:?}", dlq.keys());
    let (key, payload, headers) = records[0];
    let h: BTreeMap<_, _> = headers.iter().cloned().collect();
    let reason = h.get("lablake.error").context("no lablake.error header")?;
    assert!(
        reason.starts_with("record of ") && reason.ends_with("exceeds kafka.max_message_bytes (1000000)"),
        "{reason}"
    );
    assert_eq!(h.get("lablake.stage").map(String::as_str), Some("source"));
    assert_eq!(key.as_deref(), Some(&b"{\"id\":4}"[..]));
    let payload = payload.as_deref().unwrap_or_default();
    assert!(payload.len() < 4096, "the dead letter carries {} bytes", payload.len());
    let doc: serde_json::Value = serde_json::from_slice(payload)?;
    assert_eq!(doc["table"], format!("{a}/lab_{a}.reports"));
    assert_eq!(doc["topic"], format!("{}.{a}.lab_{a}.reports", w.prefix));
    assert_eq!(doc["op"], "c");
    assert_eq!(doc["limit"], 1_000_000);
    assert!(doc["bytes"].as_u64().is_some_and(|n| n > 1_000_000), "{doc}");
    assert_eq!(reason, &format!("record of {} bytes exceeds kafka.max_message_bytes (1000000)", doc["bytes"]));
    assert_eq!(doc["largest_columns"][0][0], "pdf");
    // Its position is the big row's: between its neighbours in the transaction.
    let rows = w.curated_rows(&a, "reports").await?;
    let position_of = |id: &str| rows.iter().find(|r| r["id"] == id).map(|r| r["_position"].clone());
    let position = doc["position"].as_str().context("no position")?;
    let (p3, p5) = (position_of("3").context("row 3")?, position_of("5").context("row 5")?);
    assert!(p3.as_str() < position && position < p5.as_str(), "{p3} < {position} < {p5}");
    // Nothing of B's went to a dead-letter topic.
    let dlq_b = consume_all(&format!("{}-dlq.{b}", w.prefix), Duration::from_secs(2))?;
    assert!(dlq_b.values().all(Vec::is_empty), "dead letters of {b}: {:?}", dlq_b.keys());
    // Counted, and logged by table and position, never by value.
    let m = lablake_tests::scrape_metrics(&metrics_addr).await?;
    let source = match kind {
        Kind::Mysql => "main",
        Kind::Postgres => "pg",
    };
    let line = format!("lablake_source_dead_letters_total{{source=\"{source}\"}} 1");
    assert!(m.lines().any(|l| l == line), "no `{line}` in\n{m}");
    let log = std::fs::read_to_string(&w.log_path)?;
    let warning = log.lines().find(|l| l.contains("change too large for Kafka")).context("no warning logged")?;
    assert!(warning.contains(&format!("{a}/lab_{a}.reports")) && warning.contains(position), "{warning}");
    assert!(!log.contains("PATIENT-OF-THE-BIG-ONE") && !log.contains("%PDF"), "a row value in the log");

    // A restart goes on after the dead-lettered change: it is not met again.
    let status = w.stop()?;
    assert!(status.success(), "graceful stop failed: {status}\n{}", w.log_tail());
    w.start()?;
    w.exec(&a, &[insert(kind, 7, "P7", 4).as_str()]).await?;
    w.exec(&b, &[insert(kind, 6, "Q6", 4).as_str()]).await?;
    let mut expected_a = source_state(&w, &a).await?;
    expected_a.remove("4");
    w.await_curated_state(&a, "reports", "id", &expected_a, Duration::from_secs(120)).await?;
    let expected_b = source_state(&w, &b).await?;
    w.await_curated_state(&b, "reports", "id", &expected_b, Duration::from_secs(120)).await?;
    let dlq = consume_all(&format!("{}-dlq.{a}", w.prefix), Duration::from_secs(3))?;
    assert_eq!(dlq.values().flatten().count(), 1, "the oversized change was dead-lettered again after the restart");
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_oversized_blob_is_dead_lettered_and_nothing_stalls() -> anyhow::Result<()> {
    oversized_row_is_dead_lettered_and_everything_else_flows(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_oversized_bytea_is_dead_lettered_and_nothing_stalls() -> anyhow::Result<()> {
    oversized_row_is_dead_lettered_and_everything_else_flows(Kind::Postgres).await
}
