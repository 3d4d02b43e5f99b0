//! PostgreSQL → Kafka → curated Parquet, end to end against the local
//! services (`lablake run` as a child process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lablake_tests::{World, pg_client, pg_source_rows};

const RESULTS_DDL: &str = "CREATE TABLE results (id bigint PRIMARY KEY, value numeric(12,3), note text, \
                           resulted timestamptz, abnormal boolean, tags text[])";

const RESULTS_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("value", "value"),
    ("note", "note"),
    ("resulted", "to_char(resulted AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
    ("abnormal", "abnormal"),
    ("tags", "array_to_json(tags)"),
];

/// Waits until each tenant's curated state equals its source table.
async fn assert_lake_equals_source(w: &mut World) -> anyhow::Result<()> {
    let client = pg_client().await?;
    for t in w.tenants.clone() {
        let expected = pg_source_rows(&client, &t, "results", RESULTS_COLUMNS).await?;
        w.await_curated_state(&t, "results", "id", &expected, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// Inserts, updates and deletes across three tenants while the process is
/// killed with SIGKILL and restarted several times: the curated lake equals
/// the source, nothing lost, nothing extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_during_100k_changes_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut w = World::new_postgres(3, &[RESULTS_DDL], "").await?;
    w.start()?;
    let tenants = w.tenants.clone();
    let writer = tokio::spawn(async move {
        let c = pg_client().await?;
        let mut changes = 0usize;
        for round in 0..10i64 {
            for t in &tenants {
                let base = round * 2500;
                c.batch_execute(&format!(
                    "INSERT INTO lab_{t}.results
                       SELECT g, (g % 1000) + (g % 997) / 1000.0, 'result ' || g || ' ✓',
                              timestamptz '2026-11-27 00:00:00+00' + g * interval '1.000001 second',
                              g % 10 = 0, ARRAY['a' || g, NULL]
                       FROM generate_series({base}, {base} + 2499) g"
                ))
                .await?;
                changes += 2500;
                let n = c
                    .execute(
                        &format!(
                            "UPDATE lab_{t}.results SET value = value + 1, note = NULL
                             WHERE id >= $1 AND id < $1 + 2500 AND id % 3 = 0"
                        ),
                        &[&base],
                    )
                    .await?;
                changes += n as usize;
                let n = c
                    .execute(
                        &format!("DELETE FROM lab_{t}.results WHERE id >= $1 AND id < $1 + 2500 AND id % 7 = 0"),
                        &[&base],
                    )
                    .await?;
                changes += n as usize;
            }
        }
        anyhow::Ok(changes)
    });
    w.kill_repeatedly(4, 8, 800..3000, || writer.is_finished()).await?;
    let changes = writer.await??;
    assert!(changes >= 100_000, "only {changes} changes");
    assert_lake_equals_source(&mut w).await?;
    for t in w.tenants.clone() {
        let rows = w.curated_rows(&t, "results").await?;
        let twice = lablake_tests::duplicated_changes(&rows, "id");
        assert_eq!(twice, 0, "{twice} of {} curated rows of {t} repeat a (key, position) after the kills", rows.len());
    }
    let _ = w.stop();
    Ok(())
}

/// One transaction of 1,000,000 rows: PostgreSQL streams it (the local
/// server runs with `logical_decoding_work_mem=64kB`), the source spills it
/// past its memory budget and replays it at commit. Every row lands, and the
/// pipeline's peak RSS stays within 512 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_lands_in_bounded_memory() -> anyhow::Result<()> {
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use lablake_checkpoint::prelude::*;
    use lablake_checkpoint::{DynamoConfig, DynamoStore};

    const ROWS: i64 = 1_000_000;
    let mut w =
        World::new_postgres(1, &["CREATE TABLE big (id bigint PRIMARY KEY, payload text, n numeric)"], "").await?;
    // A broker of its own where one runs locally: a million-record backlog
    // on the broker the other tests share slowed them past their limits
    // (tansu 0.6 reads a partition's whole backlog on each fetch, ADR 0012).
    let broker = lablake_tests::broker::PrivateBroker::binary()
        .map(|_| lablake_tests::broker::PrivateBroker::start())
        .transpose()?;
    if let Some(b) = &broker {
        w.set_kafka_brokers(&b.brokers())?;
    }
    let t = w.tenants[0].clone();
    w.start()?;
    let c = pg_client().await?;
    c.batch_execute(&format!(
        "BEGIN; INSERT INTO lab_{t}.big SELECT g, repeat(md5(g::text), 4), g / 7.0 FROM generate_series(1, {ROWS}) g; COMMIT;"
    ))
    .await?;
    let store = DynamoStore::connect(&DynamoConfig {
        table: format!("lablake_test_{}", w.id),
        endpoint: Some(lablake_tests::dynamodb_endpoint()),
        region: None,
        create_table: true,
    })
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut peak_kb = 0u64;
    loop {
        w.assert_running()?;
        peak_kb = peak_kb.max(w.proc_status_kb("VmHWM:").unwrap_or(0));
        let done: u64 = store.status(Some(&t)).await?.iter().filter(|s| s.table == "big").map(|s| s.rows).sum();
        if done >= ROWS as u64 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {done} of {ROWS} rows after 600 s\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    peak_kb = peak_kb.max(w.proc_status_kb("VmHWM:").unwrap_or(0));
    // Every id exactly once in the curated files.
    let lake = w.lake()?;
    let mut seen = std::collections::HashSet::with_capacity(ROWS as usize);
    let mut total = 0usize;
    for key in lake.list(&t, &format!("{t}/curated/lab_{t}/big/")).await? {
        for batch in lablake_lake::decode_parquet(lake.get(&t, &key).await?)? {
            let ids = batch.column_by_name("id").expect("id column").as_primitive::<Int64Type>().clone();
            total += ids.len();
            seen.extend(ids.iter().flatten());
        }
    }
    assert_eq!(seen.len(), ROWS as usize, "distinct ids in the lake");
    assert_eq!(total, ROWS as usize, "no duplicates without restarts");
    assert!(peak_kb > 0, "could not read the child's peak RSS");
    eprintln!("peak RSS of lablake run: {} MB", peak_kb / 1024);
    assert!(peak_kb <= 512 * 1024, "peak RSS {} MB > 512 MB", peak_kb / 1024);
    let _ = w.stop();
    drop(broker);
    Ok(())
}

/// An UPDATE that leaves a TOASTed column alone (REPLICA IDENTITY DEFAULT:
/// PostgreSQL does not send the value): the curated row itself holds the
/// previous value, found earlier in the same batch or in an earlier file of
/// the partition. A key whose earlier changes are not in the lake (inserted
/// before the slot existed) keeps the column listed in `_unchanged`, null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_keep_their_previous_value() -> anyhow::Result<()> {
    const DDL: &str = "CREATE TABLE notes (id bigint PRIMARY KEY, body text, n int); \
                       ALTER TABLE notes ALTER COLUMN body SET STORAGE EXTERNAL; \
                       INSERT INTO notes VALUES (100, repeat('before the slot ', 300), 0)";
    // No snapshot: row 100 reaches the lake only through its update.
    let mut w = World::new_postgres(1, &[DDL], "[snapshot]\non_new_table = false").await?;
    let t = w.tenants[0].clone();
    w.start()?;
    let c = pg_client().await?;
    let cols: &[(&str, &str)] = &[("id", "id"), ("body", "body"), ("n", "n")];
    // 1. Inserts land in files of their own.
    c.batch_execute(&format!(
        "INSERT INTO lab_{t}.notes SELECT g, repeat(md5(g::text), 400), 0 FROM generate_series(1, 20) g"
    ))
    .await?;
    let mut expected = pg_source_rows(&c, &t, "notes", cols).await?;
    let before_slot = expected.remove("100").expect("row 100");
    w.await_curated_state(&t, "notes", "id", &expected, Duration::from_secs(60)).await?;
    // 2. Updates that leave the body alone: their previous values are in earlier
    //    files (ids 1-10), in the same batch (21, inserted and updated together),
    //    or nowhere in the lake (100).
    c.batch_execute(&format!(
        "UPDATE lab_{t}.notes SET n = n + 1 WHERE id <= 10 OR id = 100;
         INSERT INTO lab_{t}.notes VALUES (21, repeat('twenty-one ', 300), 0);
         UPDATE lab_{t}.notes SET n = n + 1 WHERE id <= 5 OR id = 21;
         UPDATE lab_{t}.notes SET n = n + 1, body = 'short ' || id WHERE id > 15 AND id < 21;"
    ))
    .await?;
    let mut expected = pg_source_rows(&c, &t, "notes", cols).await?;
    // Row 100's body was never in the lake: it stays unknown (null).
    expected.get_mut("100").expect("row 100").insert("body".into(), "NULL".into());
    w.await_curated_state(&t, "notes", "id", &expected, Duration::from_secs(60)).await?;
    let rows = w.curated_rows(&t, "notes").await?;
    let updates: Vec<_> = rows.iter().filter(|r| r["_op"] == "u" && r["id"] != "100" && r["n"] != "0").collect();
    // 10 + 5 + 1 updates without the body, 5 with it.
    assert_eq!(updates.len(), 21);
    for r in &updates {
        let id = &r["id"];
        assert_eq!(r["_unchanged"], "NULL", "id {id}: the value was found");
        assert_ne!(r["body"], "NULL", "id {id}: body materialized in the curated row");
    }
    let unknown: Vec<_> = rows.iter().filter(|r| r["id"] == "100").collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!((unknown[0]["body"].as_str(), unknown[0]["_unchanged"].as_str()), ("NULL", "body"));
    assert_ne!(before_slot["body"], "NULL");
    let _ = w.stop();
    Ok(())
}

/// TRUNCATE of a tenant's table empties its curated state; rows inserted
/// after it in the same and later transactions stay; other tenants are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_truncate_empties_the_curated_table() -> anyhow::Result<()> {
    const DDL: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, status text)";
    let mut w = World::new_postgres(2, &[DDL], "").await?;
    let (a, b) = (w.tenants[0].clone(), w.tenants[1].clone());
    w.start()?;
    let c = pg_client().await?;
    let cols: &[(&str, &str)] = &[("id", "id"), ("status", "status")];
    for t in [&a, &b] {
        c.batch_execute(&format!("INSERT INTO lab_{t}.orders SELECT g, 'new' FROM generate_series(1, 50) g")).await?;
    }
    let expected = pg_source_rows(&c, &a, "orders", cols).await?;
    w.await_curated_state(&a, "orders", "id", &expected, Duration::from_secs(60)).await?;
    c.batch_execute(&format!(
        "BEGIN; UPDATE lab_{a}.orders SET status = 'seen' WHERE id < 10;
         TRUNCATE lab_{a}.orders;
         INSERT INTO lab_{a}.orders VALUES (7, 'after'), (70, 'after'); COMMIT;
         INSERT INTO lab_{a}.orders VALUES (71, 'later');"
    ))
    .await?;
    for t in [&a, &b] {
        let expected = pg_source_rows(&c, t, "orders", cols).await?;
        w.await_curated_state(t, "orders", "id", &expected, Duration::from_secs(60)).await?;
    }
    // The truncate is one record per Kafka partition.
    let rows = w.curated_rows(&a, "orders").await?;
    let partitions: std::collections::BTreeSet<_> =
        rows.iter().filter(|r| r["_op"] == "t").map(|r| r["_kafka_partition"].clone()).collect();
    let all: std::collections::BTreeSet<_> = rows.iter().map(|r| r["_kafka_partition"].clone()).collect();
    assert!(partitions.len() > 1 && partitions.is_superset(&all), "truncate in {partitions:?}, rows in {all:?}");
    let _ = w.stop();
    Ok(())
}

const TYPES_DDL: &str = "CREATE TYPE flag AS ENUM ('N', 'H', 'L'); CREATE DOMAIN code AS varchar(16);
    CREATE TABLE types (id bigint PRIMARY KEY, small smallint, i int, ok boolean, f4 real, f8 double precision,
        dec numeric(18,6), num numeric, txt text, vc varchar(20), bp char(4), bin bytea, d date, tm time, ttz timetz,
        ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb, arr int[], tarr text[], fl flag,
        cd code)";

/// Source expressions printing each column as the curated Parquet displays it.
const TYPES_COLUMNS: &[(&str, &str)] = &[
    ("id", "id"),
    ("small", "small"),
    ("i", "i"),
    ("ok", "ok"),
    // Arrow prints infinities as `inf`.
    ("f4", "CASE WHEN f4 = '-Infinity' THEN '-inf' WHEN f4 = 'Infinity' THEN 'inf' ELSE f4::text END"),
    ("f8", "CASE WHEN f8 = '-Infinity' THEN '-inf' WHEN f8 = 'Infinity' THEN 'inf' ELSE f8::text END"),
    ("dec", "dec"),
    ("num", "num"),
    ("txt", "txt"),
    ("vc", "vc"),
    // char(n) keeps its padding (a cast to text would trim it).
    ("bp", "CASE WHEN bp IS NULL THEN NULL ELSE format('%s', bp) END"),
    ("bin", "upper(encode(bin, 'hex'))"),
    ("d", "d"),
    ("tm", "(extract(epoch FROM tm) * 1000000)::bigint"),
    ("ttz", "ttz"),
    ("ts", "to_char(ts, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
    ("tstz", "to_char(tstz AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US')"),
    ("iv", "iv"),
    ("u", "u"),
    ("j", "j"),
    ("jb", "jb"),
    ("arr", "array_to_json(arr)"),
    ("tarr", "array_to_json(tarr)"),
    ("fl", "fl"),
    ("cd", "cd"),
];

/// Every PostgreSQL type of issue 3, through Kafka into curated Parquet, on
/// three tenants: the curated state equals the source, value for value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_type_lands_exactly_across_three_tenants() -> anyhow::Result<()> {
    let mut w = World::new_postgres(3, &[TYPES_DDL], "").await?;
    w.start()?;
    let c = pg_client().await?;
    for (n, t) in w.tenants.iter().enumerate() {
        c.batch_execute(&format!(
            "SET search_path = lab_{t};
             INSERT INTO types VALUES
              ({n}, -32768, 2147483647, true, 1.5, -2.25e-300, '-123456789012.123456', 'NaN', 'héllo \"x\" ✓',
               'vc', 'ab', '\\x00ff10', '2026-11-27', '23:59:59.999999', '12:34:56.000001+05:30',
               '2026-11-27 10:11:12.345678', '2026-11-27 10:11:12.345678+02', '1 year 2 mons 3 days 04:05:06.000007',
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"k\": [1, 2]}}', '{{\"b\": 1, \"a\": 2}}',
               '{{{{1,NULL}},{{3,4}}}}', '{{\"x,y\",NULL}}', 'H', 'code-{n}'),
              ({n} + 10, 0, -1, false, '-Infinity', 'NaN', '0.000001', '-0.5', '', NULL, NULL, '\\x', '0001-01-01',
               '00:00:00', '00:00:00-03:30', '1970-01-01 00:00:00', '2000-01-01 00:00:00+00', '-1 days -00:00:01.5',
               '00000000-0000-0000-0000-000000000000', '[]', '[]', '{{}}', '{{}}', 'L', NULL),
              ({n} + 20, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
               NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             UPDATE types SET num = '12345678901234567890123456789012345678901234567890.5', txt = 'updated'
              WHERE id = {n};
             DELETE FROM types WHERE id = {n} + 20;
             RESET search_path;"
        ))
        .await?;
    }
    c.batch_execute("SET intervalstyle = iso_8601").await?;
    for t in w.tenants.clone() {
        let expected = pg_source_rows(&c, &t, "types", TYPES_COLUMNS).await?;
        assert_eq!(expected.len(), 2);
        w.await_curated_state(&t, "types", "id", &expected, Duration::from_secs(60)).await?;
    }
    let _ = w.stop();
    Ok(())
}
