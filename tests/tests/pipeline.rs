//! End to end: MariaDB binlog → Kafka (tansu) → curated Parquet (S3/moto),
//! checkpoints in DynamoDB (moto). Real services, the real `lablake` binary.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use lablake_tests::{ORDERS_DDL, World, consume_all, kafka_brokers, source_rows};
use mysql_async::prelude::Queryable;

const RESULTS_DDL: &str = "CREATE TABLE results (
    id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
    tenant_marker VARCHAR(64) NOT NULL,
    tiny TINYINT, small SMALLINT UNSIGNED, med MEDIUMINT, num INT UNSIGNED, big BIGINT,
    value_dec DECIMAL(65,30), price DECIMAL(10,2),
    f FLOAT, d DOUBLE,
    collected DATE, tm TIME(6), resulted DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, yr YEAR,
    name VARCHAR(100) CHARACTER SET utf8mb4, latin VARCHAR(50) CHARACTER SET latin1, notes TEXT,
    raw VARBINARY(16), payload BLOB,
    flag ENUM('low','normal','high','critical'), tags SET('a','b','c'), bits BIT(9),
    doc JSON
) ENGINE=InnoDB";

/// Source expressions that render like the curated Parquet display.
const RESULTS_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("tenant_marker", "tenant_marker"),
    ("tiny", "tiny"),
    ("small", "small"),
    ("med", "med"),
    ("num", "num"),
    ("big", "big"),
    ("value_dec", "value_dec"),
    ("price", "price"),
    ("f", "f"),
    ("d", "d"),
    ("collected", "collected"),
    ("tm", "CAST(TIME_TO_SEC(tm) * 1000000 AS SIGNED)"),
    ("resulted", "DATE_FORMAT(resulted, '%Y-%m-%dT%H:%i:%s.%f')"),
    ("ts", "DATE_FORMAT(ts, '%Y-%m-%dT%H:%i:%s.%f')"),
    ("yr", "yr"),
    ("name", "name"),
    ("latin", "latin"),
    ("notes", "notes"),
    ("raw", "HEX(raw)"),
    ("payload", "HEX(payload)"),
    ("flag", "flag"),
    ("tags", "tags"),
    ("bits", "LPAD(HEX(bits), 4, '0')"),
    ("doc", "doc"),
];

fn results_insert(tenant: &str, id: u64) -> String {
    format!(
        "INSERT INTO results VALUES ({id}, '{tenant}', -128, 65535, -8388608, 4294967295, -9223372036854775808,
         '-12345678901234567890123456789012345.123456789012345678901234567890', 12.5,
         0.5, 3.141592653589793,
         '2024-02-29', '-838:59:59.000001', '2024-01-02 03:04:05.123456', '2024-06-30 23:59:59.999999', 2155,
         'Ünïcødé 🧪 result {id}', 'café', 'line1\\nline2 \"quoted\"',
         X'00FF10', X'DEADBEEF00',
         'critical', 'a,c', b'100000001',
         '{{\"loinc\": \"2345-7\", \"value\": 5.4, \"flags\": [\"H\"]}}')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_lands_exactly_across_three_tenants() -> anyhow::Result<()> {
    let mut w = World::new(3, &[RESULTS_DDL], "").await?;
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    for (i, t) in w.tenants.iter().enumerate() {
        conn.query_drop(format!("USE lab_{t}")).await?;
        for id in 1..=5u64 {
            conn.query_drop(results_insert(t, id + 100 * i as u64)).await?;
        }
        // Nulls everywhere but the key.
        conn.query_drop(format!("INSERT INTO results (id, tenant_marker) VALUES ({}, '{t}')", 99 + 100 * i as u64))
            .await?;
        // Updates (several columns, to extremes) and a delete, in one transaction.
        conn.query_drop("START TRANSACTION").await?;
        conn.query_drop(format!(
            "UPDATE results SET tiny = 127, big = 9223372036854775807, num = 0, price = -0.01, f = -1.25, d = 1e-300,
             tm = '838:59:59', resulted = '1000-01-01 00:00:00', ts = '1970-01-01 00:00:01', yr = 1901,
             name = '', flag = 'low', tags = '', bits = b'0', doc = '[]', value_dec = '0.000000000000000000000000000001'
             WHERE id = {}",
            2 + 100 * i as u64
        ))
        .await?;
        conn.query_drop(format!("DELETE FROM results WHERE id = {}", 3 + 100 * i as u64)).await?;
        conn.query_drop("COMMIT").await?;
    }
    drop(conn);

    for t in w.tenants.clone() {
        let expected = source_rows(&w.pool, &t, "results", RESULTS_COLUMNS).await?;
        assert_eq!(expected.len(), 5, "source rows of {t}");
        w.await_curated_state(&t, "results", "id", &expected, Duration::from_secs(120)).await?;
    }

    // Isolation: every curated row of a tenant carries that tenant's marker,
    // and every Kafka record of a tenant topic is that tenant's.
    for t in &w.tenants {
        for row in w.curated_rows(t, "results").await? {
            assert_eq!(row["tenant_marker"], *t, "a row of another tenant under {t}/");
        }
    }
    let topics = consume_all(&w.prefix, Duration::from_secs(10))?;
    assert!(!topics.is_empty());
    for (topic, records) in &topics {
        let tenant = topic.split('.').nth(1).context("topic without tenant")?;
        for (_, payload, _) in records {
            let v: serde_json::Value = serde_json::from_slice(payload.as_deref().unwrap_or_default())?;
            assert_eq!(v["lablake"]["tenant"], *tenant, "{topic}");
            let row = if v["after"].is_null() { &v["before"] } else { &v["after"] };
            assert_eq!(row["tenant_marker"], *tenant, "{topic}");
        }
    }
    let status = w.stop()?;
    assert!(status.success(), "graceful stop failed: {status}\n{}", w.log_tail());
    Ok(())
}

const ORDERS_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("patient", "patient"),
    ("status", "status"),
    ("amount", "amount"),
    ("updated", "DATE_FORMAT(updated, '%Y-%m-%dT%H:%i:%s.%f')"),
    ("note", "note"),
];

/// ≥100k changes while the pipeline is SIGKILLed at random points and
/// restarted: the curated lake, deduplicated by (key, position), equals the
/// source exactly, and no two files overlap in offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_100k_changes_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    // `version`: 1 on insert, +1 on each update, for the change-by-change oracle.
    let mut w =
        World::new(3, &[ORDERS_DDL, "ALTER TABLE orders ADD COLUMN version INT NOT NULL DEFAULT 1"], "").await?;
    w.start()?;
    let pool = w.pool.clone();
    let tenants = w.tenants.clone();
    // Writer: 3 tenants × (inserts + updates + deletes) ≈ 105k row changes.
    let writer = tokio::spawn(async move {
        let mut conn = pool.get_conn().await?;
        let mut changes = 0usize;
        for round in 0..10u32 {
            for t in &tenants {
                conn.query_drop(format!("USE lab_{t}")).await?;
                let base = round * 2500;
                let mut values = Vec::with_capacity(2500);
                for i in 0..2500u32 {
                    let id = base + i;
                    values.push(format!(
                        "({id}, 'P{id:07}', 'new', {}.{:02}, NOW(6), 'order {id} ✓')",
                        id % 1000,
                        id % 100
                    ));
                }
                for chunk in values.chunks(500) {
                    conn.query_drop(format!(
                        "INSERT INTO orders (id, patient, status, amount, updated, note) VALUES {}",
                        chunk.join(",")
                    ))
                    .await?;
                }
                changes += 2500;
                conn.query_drop(format!(
                    "UPDATE orders SET status = 'collected', amount = amount + 1, updated = NOW(6), version = version + 1 WHERE id >= {base} AND id < {} AND id % 3 = 0",
                    base + 2500
                ))
                .await?;
                changes += 834;
                conn.query_drop(format!(
                    "DELETE FROM orders WHERE id >= {base} AND id < {} AND id % 7 = 0",
                    base + 2500
                ))
                .await?;
                changes += 358;
                conn.query_drop(format!(
                    "UPDATE orders SET note = NULL, status = 'resulted', version = version + 1 WHERE id >= {base} AND id < {} AND id % 5 = 1",
                    base + 2500
                ))
                .await?;
                changes += 500;
            }
        }
        anyhow::Ok(changes)
    });
    let kills = w.kill_repeatedly(4, 8, 800..3000, || writer.is_finished()).await?;
    let changes = writer.await??;
    assert!(changes >= 100_000, "only {changes} changes");
    assert!(kills >= 4);

    let columns: Vec<(&str, &str)> = ORDERS_COLUMNS.iter().copied().chain([("version", "version")]).collect();
    for t in w.tenants.clone() {
        let expected = source_rows(&w.pool, &t, "orders", &columns).await?;
        w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
        // No two files overlap in offsets (per topic-partition).
        let lake = w.lake()?;
        let keys = lake.list(&t, &format!("{t}/curated/")).await?;
        let mut ranges: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for k in &keys {
            let name = k.rsplit('/').next().unwrap_or_default().trim_end_matches(".parquet");
            let mut parts = name.rsplitn(3, '-');
            let last_o: i64 = parts.next().context("key")?.parse()?;
            let first_o: i64 = parts.next().context("key")?.parse()?;
            let tp = parts.next().context("key")?.to_owned();
            ranges.entry(tp).or_default().push((first_o, last_o));
        }
        for (tp, mut rs) in ranges {
            rs.sort();
            for pair in rs.windows(2) {
                assert!(pair[0].1 < pair[1].0, "{tp}: files {:?} and {:?} overlap", pair[0], pair[1]);
            }
        }
        // Each change once: the curator drops what a restarted source
        // delivered again (same key and position), so no (key, position)
        // appears twice in the curated files, whatever the kills did.
        let rows = w.curated_rows(&t, "orders").await?;
        // Every change, in order, none missing: the version column's story per key.
        let wrong = lablake_tests::version_violations(&rows, "id", "version", 10);
        assert!(wrong.is_empty(), "{t}: changes missing, repeated or out of order after {kills} kills: {wrong:#?}");
        let twice = lablake_tests::duplicated_changes(&rows, "id");
        assert_eq!(
            twice,
            0,
            "{twice} of {} curated rows of {t} repeat a (key, position) after {kills} kills",
            rows.len()
        );
    }
    let _ = w.stop();
    Ok(())
}

/// A corrupt record in a tenant topic goes to that tenant's dead-letter topic
/// with the reason in headers; the records around it land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_record_goes_to_the_dead_letter_topic() -> anyhow::Result<()> {
    let mut w = World::new(1, &[ORDERS_DDL], "").await?;
    w.start()?;
    let t = w.tenants[0].clone();
    let mut conn = w.pool.get_conn().await?;
    conn.query_drop(format!("USE lab_{t}")).await?;
    conn.query_drop("INSERT INTO orders VALUES (1, 'P1', 'new', 1.00, NOW(6), 'a')").await?;
    for _ in 0..400 {
        if w.curated_state(&t, "orders", "id").await?.len() == 1 {
            break;
        }
        w.assert_running()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let topic = format!("{}.{t}.lab_{t}.orders", w.prefix);
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create()?;
    for p in 0..2 {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&topic).partition(p).key("{\"id\":0}").payload("{not json"),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    for i in 2..=20 {
        conn.query_drop(format!("INSERT INTO orders VALUES ({i}, 'P{i}', 'new', 1.00, NOW(6), 'b')")).await?;
    }
    let expected = source_rows(&w.pool, &t, "orders", ORDERS_COLUMNS).await?;
    // The rows around the corrupt record land.
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(120)).await?;
    let dlq = consume_all(&format!("{}-dlq.{t}", w.prefix), Duration::from_secs(5))?;
    let records: Vec<_> = dlq.values().flatten().collect();
    assert_eq!(records.len(), 2, "dead letters: {dlq:?}");
    for (_, payload, headers) in records {
        assert_eq!(payload.as_deref(), Some(&b"{not json"[..]));
        let h: BTreeMap<_, _> = headers.iter().cloned().collect();
        assert!(h.get("lablake.error").is_some_and(|e| !e.is_empty()), "{h:?}");
        assert_eq!(h.get("lablake.origin.topic"), Some(&topic));
    }
    let _ = w.stop();
    Ok(())
}

/// A second curator of the same group and shard takes the lease over; the
/// first one is fenced at its next write and exits with an error, without
/// overwriting a file or a checkpoint, and the lake still ends up exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_curator_is_fenced_and_stops() -> anyhow::Result<()> {
    let mut w = World::new(1, &[ORDERS_DDL], "").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    conn.query_drop(format!("USE lab_{t}")).await?;
    conn.query_drop("INSERT INTO orders VALUES (1, 'P1', 'new', 1.00, NOW(6), 'a')").await?;
    for _ in 0..200 {
        if w.curated_state(&t, "orders", "id").await?.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The newcomer takes the lease (a higher generation).
    let mut newer = w.spawn(&["curate"])?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 2..=200 {
        conn.query_drop(format!("INSERT INTO orders VALUES ({i}, 'P{i}', 'new', 2.00, NOW(6), 'b')")).await?;
    }
    // The old process (source + stale curator) must stop with a fencing error.
    let mut fenced = false;
    for _ in 0..200 {
        if w.assert_running().is_err() {
            fenced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(fenced, "the stale curator kept running:\n{}", w.log_tail());
    let log = std::fs::read_to_string(&w.log_path)?;
    assert!(log.contains("fenced"), "no fencing error in the log:\n{}", w.log_tail());
    // The source (in the stopped process) is restarted alone; the newer curator finishes the job.
    w.kill(); // reaps the exited process
    let mut source = w.spawn(&["source"])?;
    let expected = source_rows(&w.pool, &t, "orders", ORDERS_COLUMNS).await?;
    let landed = w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(90)).await;
    let _ = source.kill();
    let _ = newer.kill();
    let _ = (source.wait(), newer.wait());
    landed.context("the lake after the takeover")?;
    Ok(())
}

/// TRUNCATE TABLE (a statement in the binlog, no row events) empties the
/// tenant's curated table on every partition; rows written after it stay,
/// other tenants are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_truncate_empties_the_curated_table() -> anyhow::Result<()> {
    let mut w = World::new(2, &[ORDERS_DDL], "").await?;
    let (a, b) = (w.tenants[0].clone(), w.tenants[1].clone());
    w.start()?;
    let mut conn = w.pool.get_conn().await?;
    for t in [&a, &b] {
        conn.query_drop(format!("USE lab_{t}")).await?;
        for i in 1..=40 {
            conn.query_drop(format!("INSERT INTO orders VALUES ({i}, 'P{i}', 'new', 1.00, NOW(6), NULL)")).await?;
        }
    }
    let expected = source_rows(&w.pool, &a, "orders", ORDERS_COLUMNS).await?;
    w.await_curated_state(&a, "orders", "id", &expected, Duration::from_secs(60)).await?;
    conn.query_drop(format!("USE lab_{a}")).await?;
    conn.query_drop("UPDATE orders SET status = 'collected' WHERE id < 5").await?;
    conn.query_drop("TRUNCATE TABLE orders").await?;
    conn.query_drop("INSERT INTO orders VALUES (3, 'P3', 'new', 3.00, NOW(6), 'after')").await?;
    for t in [&a, &b] {
        let expected = source_rows(&w.pool, t, "orders", ORDERS_COLUMNS).await?;
        w.await_curated_state(t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    }
    let rows = w.curated_rows(&a, "orders").await?;
    let truncated: BTreeSet<_> =
        rows.iter().filter(|r| r["_op"] == "t").map(|r| r["_kafka_partition"].clone()).collect();
    let all: BTreeSet<_> = rows.iter().map(|r| r["_kafka_partition"].clone()).collect();
    assert!(truncated.len() > 1 && truncated.is_superset(&all), "truncate in {truncated:?}, rows in {all:?}");
    let _ = w.stop();
    Ok(())
}

/// A backlog is curated in few, large batches. With `max_age = 2s`, changes
/// committed over 12 s while `lablake` was down land in at most two new files
/// per partition once it is back: a batch ages by how long it has been open,
/// not by its records' commit times. (Aged by record time, as before, the
/// backlog became one batch per 2 s of source time — six per partition here —
/// and catching up after an outage was bounded by one commit per slice: the
/// recovery bench never caught up after a 30 s silent source link.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_curated_in_few_large_batches() -> anyhow::Result<()> {
    let mut w = World::new(1, &[ORDERS_DDL], "").await?;
    let config = std::fs::read_to_string(&w.config_path)?.replace("max_age = \"30s\"", "max_age = \"2s\"");
    std::fs::write(&w.config_path, config)?;
    let t = w.tenants[0].clone();
    async fn files(w: &World, t: &str) -> anyhow::Result<usize> {
        Ok(w.lake()?.list(t, &format!("{t}/curated/lab_{t}/orders/")).await?.len())
    }
    w.start()?;
    w.exec(&t, &["INSERT INTO orders VALUES (0, 'P0', 'new', 1.00, NOW(6), NULL)"]).await?;
    let expected = source_rows(&w.pool, &t, "orders", ORDERS_COLUMNS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    w.stop()?;
    let before = files(&w, &t).await?;
    // 24 transactions 500 ms apart: 12 s of source time, read back at once.
    for i in 1..=24u64 {
        let values: Vec<String> =
            (0..10).map(|j| format!("({}, 'P{i}', 'new', 1.00, NOW(6), NULL)", i * 10 + j)).collect();
        w.exec(&t, &[&format!("INSERT INTO orders VALUES {}", values.join(", "))]).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    w.start()?;
    let expected = source_rows(&w.pool, &t, "orders", ORDERS_COLUMNS).await?;
    w.await_curated_state(&t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    let new = files(&w, &t).await? - before;
    // Two partitions; one split each (an idle flush while the source reconnects) is allowed.
    assert!(new <= 4, "the 12 s backlog became {new} curated files (at most 4 expected)");
    let _ = w.stop();
    Ok(())
}
