//! Rows a source cannot turn into a tenant's change go to a dead-letter
//! topic with the reason and the row, and the stream goes on:
//! - MariaDB rows logged with `binlog_row_image = MINIMAL` (a session that
//!   changed it) cannot be completed: each goes to its tenant's dead-letter
//!   topic with the binlog events' bytes, the other rows and tenants flow;
//! - rows whose tenant column names no tenant (NULL) go to `_unresolved` as
//!   their whole change envelope, on both sources.

use std::collections::BTreeMap;
use std::time::Duration;

use lablake_tests::{Kind, World, consume_all, curated_state};
use mysql_async::prelude::Queryable;

const DDL: &str = "CREATE TABLE tasks (id BIGINT NOT NULL PRIMARY KEY, state VARCHAR(20), note TEXT)";
const COLS: &[&str] = &["id", "state", "note"];

fn headers(h: &[(String, String)]) -> BTreeMap<String, String> {
    h.iter().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_rows_that_cannot_be_decoded_go_to_their_tenants_dead_letters() -> anyhow::Result<()> {
    let mut w = World::new(2, &[DDL], "").await?;
    let (a, b) = (w.tenants[0].clone(), w.tenants[1].clone());
    w.start()?;
    for t in [&a, &b] {
        let rows: Vec<String> = (1..=50).map(|i| format!("({i}, 'open', 'n{i}')")).collect();
        w.exec(t, &[&format!("INSERT INTO tasks VALUES {}", rows.join(", "))]).await?;
    }
    // The new tables' snapshots are done and every insert is curated, so the
    // update below reaches the lake only through the binlog.
    for t in [&a, &b] {
        let expected = w.source_state(t, "tasks", COLS).await?;
        w.await_curated_state(t, "tasks", "id", &expected, Duration::from_secs(120)).await?;
    }
    // One session logs MINIMAL row images: before = key only, after = the
    // changed column only. Such updates cannot become full changes.
    let mut c = w.pool.get_conn().await?;
    c.query_drop(format!("USE lab_{a}")).await?;
    c.query_drop("SET SESSION binlog_row_image = 'MINIMAL'").await?;
    c.query_drop("UPDATE tasks SET state = 'done' WHERE id <= 3").await?;
    c.query_drop("SET SESSION binlog_row_image = 'FULL'").await?;
    drop(c);
    // Everything after it flows, in both tenants.
    for t in [&a, &b] {
        w.exec(t, &["UPDATE tasks SET note = 'later' WHERE id > 40", "INSERT INTO tasks VALUES (99, 'open', 'x')"])
            .await?;
    }
    let expected_b = w.source_state(&b, "tasks", COLS).await?;
    w.await_curated_state(&b, "tasks", "id", &expected_b, Duration::from_secs(120)).await?;
    // Tenant a: the three lost updates are the only difference.
    let mut expected_a = w.source_state(&a, "tasks", COLS).await?;
    for id in 1..=3 {
        expected_a.get_mut(&id.to_string()).expect("row").insert("state".into(), "open".into());
    }
    w.await_curated_state(&a, "tasks", "id", &expected_a, Duration::from_secs(120)).await?;

    let dlq = consume_all(&format!("{}-dlq.{a}", w.prefix), Duration::from_secs(5))?;
    let records: Vec<_> = dlq.values().flatten().collect();
    assert_eq!(records.len(), 3, "one dead letter per undecodable row: {:?}", dlq.keys());
    let mut rows = Vec::new();
    for (_, payload, h) in records {
        let h = headers(h);
        assert_eq!(h.get("lablake.stage").map(String::as_str), Some("source"), "{h:?}");
        assert_eq!(h.get("lablake.payload").map(String::as_str), Some("raw"), "{h:?}");
        let reason = h.get("lablake.error").cloned().unwrap_or_default();
        assert!(reason.contains("binlog_row_image must be FULL"), "{reason}");
        let raw: serde_json::Value = serde_json::from_slice(payload.as_deref().unwrap_or_default())?;
        assert_eq!(raw["format"], "mysql-rows-event/1");
        assert_eq!(raw["table"], format!("lab_{a}.tasks"));
        assert!(raw["binlog_file"].as_str().is_some_and(|f| !f.is_empty()) && raw["binlog_pos"].as_u64() > Some(0));
        assert!(raw["rows_event"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(raw["table_map"].as_str().is_some_and(|r| !r.is_empty()));
        rows.push(raw["row_index"].as_u64().unwrap_or(u64::MAX));
    }
    rows.sort_unstable();
    assert_eq!(rows, vec![0, 1, 2]);
    let dlq_b = consume_all(&format!("{}-dlq.{b}", w.prefix), Duration::from_secs(2))?;
    assert!(dlq_b.values().all(Vec::is_empty), "no dead letters of {b}");
    let log = std::fs::read_to_string(&w.log_path)?;
    assert!(!log.contains("stage failed"), "the stream went on without a restart:\n{}", w.log_tail());
    w.assert_running()?;
    let _ = w.stop();
    Ok(())
}

/// A row whose tenant column is NULL goes to `_unresolved` as its envelope:
/// the whole change, ready to redrive once the tenant is set.
async fn unroutable_rows_keep_their_change(kind: Kind) -> anyhow::Result<()> {
    let ddl = "CREATE TABLE memos (id BIGINT NOT NULL PRIMARY KEY, tenant_id VARCHAR(40), body TEXT)";
    // PostgreSQL: the old row carries the tenant column only with REPLICA IDENTITY FULL.
    let identity = "ALTER TABLE memos REPLICA IDENTITY FULL";
    let ddl: &[&str] = if kind == Kind::Mysql { &[ddl] } else { &[ddl, identity] };
    let mut w = World::with_shared_database(kind, 1, ddl, "tenant_id").await?;
    let t = w.tenants[0].clone();
    let db = w.shared_database();
    w.start()?;
    w.exec_in(&db, &[&format!("INSERT INTO memos VALUES (1, '{t}', 'kept')")]).await?;
    w.exec_in(&db, &["INSERT INTO memos VALUES (2, NULL, 'no tenant')"]).await?;
    w.exec_in(&db, &[&format!("INSERT INTO memos VALUES (3, '{t}', 'after')")]).await?;
    let cols = ["id", "tenant_id", "body"];
    let expected = w.source_state_in(&db, "memos", &cols).await?;
    let expected: BTreeMap<_, _> = expected.into_iter().filter(|(id, _)| id != "2").collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        w.assert_running()?;
        let mut got = curated_state(w.curated_rows_in(&t, &db, "memos").await?, "id");
        for r in got.values_mut() {
            r.retain(|c, _| cols.contains(&c.as_str()));
        }
        if got == expected {
            break;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "curated {got:?}\nsource {expected:?}\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let dlq = consume_all(&format!("{}-dlq._unresolved", w.prefix), Duration::from_secs(5))?;
    let records: Vec<_> = dlq.values().flatten().collect();
    assert_eq!(records.len(), 1, "{:?}", dlq.keys());
    let (key, payload, h) = records[0];
    let h = headers(h);
    assert_eq!(h.get("lablake.payload").map(String::as_str), Some("envelope"), "{h:?}");
    assert_eq!(h.get("lablake.error").map(String::as_str), Some("tenant column is NULL"));
    assert!(key.is_some(), "keyed like the change");
    let env: serde_json::Value = serde_json::from_slice(payload.as_deref().unwrap_or_default())?;
    assert_eq!(env["op"], "c", "{env}");
    assert_eq!(env["after"]["body"], "no tenant", "{env}");
    assert_eq!(env["source"]["table"], "memos", "{env}");
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_unroutable_rows_keep_their_change() -> anyhow::Result<()> {
    unroutable_rows_keep_their_change(Kind::Mysql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unroutable_rows_keep_their_change() -> anyhow::Result<()> {
    unroutable_rows_keep_their_change(Kind::Postgres).await
}

/// `lablake redrive --tenant T` sends what the curator dead-lettered back to
/// its origin partition, once. The dead letter is written here as an earlier
/// `lablake` would have (stage `curate`, origin headers, the original key and
/// value): a valid change at a position below the partition's high-water
/// mark, which the curator must still take because it was never curated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_sends_curator_dead_letters_back_once() -> anyhow::Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    let mut w = World::new(1, &[DDL], "").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let rows: Vec<String> = (1..=30).map(|i| format!("({i}, 'open', 'n{i}')")).collect();
    w.exec(&t, &[&format!("INSERT INTO tasks VALUES {}", rows.join(", "))]).await?;
    w.exec(&t, &["UPDATE tasks SET state = 'done' WHERE id > 20"]).await?;
    let expected = w.source_state(&t, "tasks", COLS).await?;
    w.await_curated_state(&t, "tasks", "id", &expected, Duration::from_secs(120)).await?;

    // The first change of the topic, made into a change of id 100 that was never curated.
    let topic = format!("{}.{t}.lab_{t}.tasks", w.prefix);
    let (partition, value) = {
        use rdkafka::Message;
        use rdkafka::consumer::Consumer;
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", lablake_tests::kafka_brokers())
            .set("group.id", format!("{topic}-first"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..2 {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let m = c.poll(Duration::from_secs(10)).ok_or_else(|| anyhow::anyhow!("no record in {topic}"))??;
        (m.partition(), m.payload().unwrap_or_default().to_vec())
    };
    let mut env: serde_json::Value = serde_json::from_slice(&value)?;
    env["after"]["id"] = 100.into();
    env["after"]["note"] = "redriven".into();
    let dlq = format!("{}-dlq.{t}", w.prefix);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", lablake_tests::kafka_brokers()).create()?;
    let new_topic = rdkafka::admin::NewTopic::new(&dlq, 1, rdkafka::admin::TopicReplication::Fixed(1));
    admin.create_topics([&new_topic], &rdkafka::admin::AdminOptions::new()).await?;
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", lablake_tests::kafka_brokers()).create()?;
    let (p, reason) = (partition.to_string(), "record does not decode: an older decoder".to_owned());
    let headers = OwnedHeaders::new()
        .insert(Header { key: "lablake.error", value: Some(&reason) })
        .insert(Header { key: "lablake.stage", value: Some("curate") })
        .insert(Header { key: "lablake.origin.topic", value: Some(&topic) })
        .insert(Header { key: "lablake.origin.partition", value: Some(&p) })
        .insert(Header { key: "lablake.origin.offset", value: Some("0") });
    let payload = env.to_string();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&dlq).key("{\"id\":100}").payload(&payload).headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    // A source dead letter beside it is counted, not sent.
    let headers = OwnedHeaders::new()
        .insert(Header { key: "lablake.error", value: Some("row cannot be decoded") })
        .insert(Header { key: "lablake.stage", value: Some("source") })
        .insert(Header { key: "lablake.payload", value: Some("raw") });
    producer
        .send(
            rdkafka::producer::FutureRecord::<(), _>::to(&dlq).payload("{}").headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;

    let out = w.run_cli(&["redrive", "--tenant", &t, "--quiet-secs", "3"])?;
    anyhow::ensure!(out.status.success(), "redrive failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["read"], 2, "{report}");
    assert_eq!(report["redriven"][&topic], 1, "{report}");
    assert_eq!(report["left"]["source:raw"], 1, "{report}");

    let mut expected = expected;
    let mut row = expected["1"].clone();
    row.insert("id".into(), "100".into());
    row.insert("note".into(), "redriven".into());
    expected.insert("100".into(), row);
    w.await_curated_state(&t, "tasks", "id", &expected, Duration::from_secs(120)).await?;

    // Once: a second redrive finds nothing new.
    let out = w.run_cli(&["redrive", "--tenant", &t, "--quiet-secs", "3"])?;
    anyhow::ensure!(out.status.success(), "second redrive failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["read"], 0, "{report}");
    let rows = w.curated_rows(&t, "tasks").await?;
    assert_eq!(lablake_tests::duplicated_changes(&rows, "id"), 0);
    let _ = w.stop();
    Ok(())
}
