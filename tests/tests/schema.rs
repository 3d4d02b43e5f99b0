//! Schema sync end to end, on both sources: ADD, DROP, RENAME COLUMN and a
//! type widening while streaming. Every row lands with the columns its
//! table had when it was written, old files stay readable, each curated file
//! names its schema version, and the schema history says what changed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lablake_tests::{World, pg_client};
use mysql_async::prelude::Queryable;

/// The statements of the scenario, in order; `{}` is the table.
struct Dialect {
    ddl: &'static str,
    steps: [&'static str; 10],
}

const MYSQL: Dialect = Dialect {
    ddl: "CREATE TABLE orders (id INT NOT NULL PRIMARY KEY, a VARCHAR(20), n INT, m SMALLINT) ENGINE=InnoDB",
    steps: [
        "INSERT INTO {} VALUES (1, 'one', 10, 100)",
        "ALTER TABLE {} ADD COLUMN extra VARCHAR(10)",
        "INSERT INTO {} VALUES (2, 'two', 20, 200, 'e2')",
        "ALTER TABLE {} DROP COLUMN n",
        "INSERT INTO {} VALUES (3, 'three', 300, 'e3')",
        "ALTER TABLE {} RENAME COLUMN a TO b",
        "INSERT INTO {} VALUES (4, 'four', 400, 'e4')",
        "ALTER TABLE {} MODIFY m INT",
        "INSERT INTO {} VALUES (5, 'five', 100000, 'e5')",
        "UPDATE {} SET b = 'uno' WHERE id = 1",
    ],
};

const POSTGRES: Dialect = Dialect {
    ddl: "CREATE TABLE orders (id int PRIMARY KEY, a text, n int, m smallint)",
    steps: [
        "INSERT INTO {} VALUES (1, 'one', 10, 100)",
        "ALTER TABLE {} ADD COLUMN extra text",
        "INSERT INTO {} VALUES (2, 'two', 20, 200, 'e2')",
        "ALTER TABLE {} DROP COLUMN n",
        "INSERT INTO {} VALUES (3, 'three', 300, 'e3')",
        "ALTER TABLE {} RENAME COLUMN a TO b",
        "INSERT INTO {} VALUES (4, 'four', 400, 'e4')",
        "ALTER TABLE {} ALTER COLUMN m TYPE int",
        "INSERT INTO {} VALUES (5, 'five', 100000, 'e5')",
        "UPDATE {} SET b = 'uno' WHERE id = 1",
    ],
};

/// The key and operation a step's DML writes: `INSERT … VALUES (id, …` is
/// `(id, "c")`, `UPDATE … WHERE id = n` is `(n, "u")`; DDL writes none.
fn written(sql: &str) -> Option<(String, &'static str)> {
    if let Some((_, rest)) = sql.split_once("VALUES (") {
        return Some((rest.split(',').next()?.trim().to_owned(), "c"));
    }
    let (_, id) = sql.strip_prefix("UPDATE ")?.split_once("WHERE id = ")?;
    Some((id.trim().to_owned(), "u"))
}

/// Column names of a curated row without the metadata columns.
fn columns(row: &BTreeMap<String, String>) -> Vec<&str> {
    row.keys().filter(|k| !k.starts_with('_')).map(String::as_str).collect()
}

async fn scenario(mut w: World, d: &Dialect, postgres: bool) -> anyhow::Result<()> {
    let t = w.tenants[0].clone();
    let table = format!("lab_{t}.orders");
    w.start()?;
    let pg = if postgres { Some(pg_client().await?) } else { None };
    let mut my = w.pool.get_conn().await?;
    for step in d.steps {
        let sql = step.replace("{}", &table);
        match &pg {
            Some(c) => c.batch_execute(&sql).await?,
            None => my.query_drop(sql.as_str()).await?,
        }
        // Each row reaches the lake before the next DDL: the test is about
        // rows and schemas interleaving, not about a reader that lags behind
        // an ALTER (MariaDB without binlog_row_metadata=FULL names columns
        // from information_schema as it is when the reader gets there).
        if let Some((id, op)) = written(&sql) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !w.curated_rows(&t, "orders").await?.iter().any(|r| r["id"] == id && r["_op"] == op) {
                assert!(Instant::now() < deadline, "row {id} ({op}) not curated:\n{}", w.log_tail());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = w.curated_rows(&t, "orders").await?;
        if rows.iter().any(|r| r["id"] == "1" && r["_op"] == "u") && rows.iter().any(|r| r["id"] == "5") {
            break rows;
        }
        assert!(Instant::now() < deadline, "rows not curated:\n{}", w.log_tail());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let streamed = |id: &str, op: &str| {
        rows.iter().find(|r| r["id"] == id && r["_op"] == op).unwrap_or_else(|| panic!("row {id} {op}: {rows:?}"))
    };
    let r1 = streamed("1", "c");
    assert_eq!(columns(r1), ["a", "id", "m", "n"]);
    assert_eq!((r1["a"].as_str(), r1["n"].as_str(), r1["m"].as_str()), ("one", "10", "100"));
    let r2 = streamed("2", "c");
    assert_eq!(columns(r2), ["a", "extra", "id", "m", "n"]);
    assert_eq!(r2["extra"], "e2");
    let r3 = streamed("3", "c");
    assert_eq!(columns(r3), ["a", "extra", "id", "m"], "dropped column gone from new rows");
    let r4 = streamed("4", "c");
    assert_eq!(columns(r4), ["b", "extra", "id", "m"]);
    assert_eq!(r4["b"], "four");
    let r5 = streamed("5", "c");
    assert_eq!(r5["m"], "100000", "widened column holds a value the old type could not");
    let u1 = streamed("1", "u");
    assert_eq!((u1["b"].as_str(), u1["m"].as_str(), u1["extra"].as_str()), ("uno", "100", "NULL"));

    // Every curated file names its schema version; versions only grow along the stream.
    let lake = w.lake()?;
    let mut versions = Vec::new();
    for key in lake.list(&t, &format!("{t}/curated/lab_{t}/orders/")).await? {
        for batch in lablake_lake::decode_parquet(lake.get(&t, &key).await?)? {
            let v = batch.schema().metadata().get("lablake.schema_version").cloned();
            let v: u32 = v.ok_or_else(|| anyhow::anyhow!("{key} has no schema version"))?.parse()?;
            let ids: Vec<String> = lablake_tests::batch_rows(&batch)?.into_iter().map(|r| r["id"].clone()).collect();
            versions.push((ids, v));
        }
    }
    let version_of = |id: &str| versions.iter().find(|(ids, _)| ids.iter().any(|i| i == id)).map(|(_, v)| *v);
    let seen: Vec<Option<u32>> = ["1", "2", "3", "4", "5"].iter().map(|id| version_of(id)).collect();
    assert!(seen.windows(2).all(|p| p[0] < p[1]), "one version per shape, increasing: {seen:?}");

    // The history names what changed (snapshots may register the first shape).
    let out = w.run_cli(&["schema", "--tenant", &t, "--table", &format!("lab_{t}.orders")])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for change in
        ["new table", "added column extra", "dropped column n", "renamed column a to b", "column m: int16 -> int32"]
    {
        assert!(stdout.contains(change), "`{change}` missing from the history:\n{stdout}");
    }
    let _ = w.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_add_drop_rename_and_widen_columns_while_streaming() -> anyhow::Result<()> {
    let w = World::new(1, &[MYSQL.ddl], "").await?;
    scenario(w, &MYSQL, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_add_drop_rename_and_widen_columns_while_streaming() -> anyhow::Result<()> {
    let w = World::new_postgres(1, &[POSTGRES.ddl], "").await?;
    scenario(w, &POSTGRES, true).await
}
