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
