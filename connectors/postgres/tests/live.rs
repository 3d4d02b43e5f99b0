//! Live tests against PostgreSQL (`LABLAKE_PG_URL`, default
//! `postgres://postgres@127.0.0.1:25432/postgres`, `wal_level=logical`,
//! `logical_decoding_work_mem=64kB` so large transactions are streamed).
//! They fail, never skip, when the server is unreachable.
//!
//! Each test uses its own schemas, slot and publication, dropped at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lablake_model::{ColumnType, Date, DateTime, Op, Resume, Value};
use lablake_postgres::{PgError, PgSource, PgSourceConfig};
use lablake_source::{SourceItem, Unresolved};
use serde_json::json;
use tokio_postgres::{Client, NoTls};

fn url() -> String {
    std::env::var("LABLAKE_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:25432/postgres".into())
}

async fn admin() -> Client {
    let url = url();
    let (c, conn) = match tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(&url, NoTls)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("PostgreSQL at {url} is unreachable ({e}); start dev/services or set LABLAKE_PG_URL"),
        Err(_) => panic!("PostgreSQL at {url} did not answer within 10s"),
    };
    tokio::spawn(conn);
    c
}

struct Fixture {
    admin: Client,
    id: String,
    tenants: Vec<String>,
}

impl Fixture {
    async fn new(tenants: usize) -> Fixture {
        let id = format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff);
        let admin = admin().await;
        let tenants: Vec<String> = (0..tenants).map(|i| format!("t{id}{i}")).collect();
        for t in &tenants {
            admin
                .batch_execute(&format!(
                    "CREATE SCHEMA lab_{t};
                     CREATE TYPE lab_{t}.flag AS ENUM ('N', 'H', 'L');
                     CREATE DOMAIN lab_{t}.code AS varchar(16);
                     CREATE TABLE lab_{t}.results (
                        id bigint PRIMARY KEY, small smallint, i int, ok boolean, f4 real, f8 double precision,
                        dec numeric(18,6), num numeric, txt text, vc varchar(20), bp char(4), bin bytea, d date,
                        tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, j json,
                        jb jsonb, arr int[], tarr text[], fl lab_{t}.flag, code lab_{t}.code)"
                ))
                .await
                .unwrap();
        }
        Fixture { admin, id, tenants }
    }

    fn config(&self, extra: serde_json::Value) -> PgSourceConfig {
        self.config_with_url(&url(), extra)
    }

    /// The test's source configuration; `extra` (a JSON object) adds or replaces keys.
    fn config_with_url(&self, url: &str, extra: serde_json::Value) -> PgSourceConfig {
        let mut cfg = json!({
            "name": "pg-test", "url": url, "slot": format!("lablake_t{}", self.id),
            "publication": format!("lablake_t{}", self.id),
            "tenant": { "kind": "schema", "pattern": "lab_{tenant}" },
            "include": [format!("lab_t{}*.*", self.id)],
            "heartbeat_interval": "200ms", "status_interval": "100ms", "spill_memory_bytes": 65536,
        });
        if let (Some(c), serde_json::Value::Object(e)) = (cfg.as_object_mut(), extra) {
            c.extend(e);
        }
        serde_json::from_value(cfg).unwrap()
    }

    async fn confirmed_flush(&self) -> u64 {
        let row = self
            .admin
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&format!("lablake_t{}", self.id)],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) as u64
    }

    async fn current_lsn(&self) -> u64 {
        let row = self.admin.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[]).await.unwrap();
        row.get::<_, i64>(0) as u64
    }

    async fn cleanup(self) {
        let slot = format!("lablake_t{}", self.id);
        for _ in 0..50 {
            let r = self.admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await;
            match r {
                Ok(_) => break,
                Err(e) if e.to_string().contains("does not exist") => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let _ = self.admin.batch_execute(&format!("DROP PUBLICATION IF EXISTS lablake_t{}", self.id)).await;
        for t in &self.tenants {
            let _ = self.admin.batch_execute(&format!("DROP SCHEMA lab_{t} CASCADE")).await;
        }
    }
}

/// Reads items until `n` changes and the commit after the last were seen.
async fn read_changes(src: &mut PgSource, n: usize) -> (Vec<lablake_model::ChangeEvent>, u64) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let item = tokio::time::timeout_at(deadline, src.next())
            .await
            .unwrap_or_else(|_| panic!("timed out with {} of {n} changes", out.len()))
            .unwrap();
        match item {
            SourceItem::Change(e) => out.push(e),
            SourceItem::Commit { resume: Resume::Lsn(lsn), .. } if out.len() >= n => return (out, lsn),
            SourceItem::Unresolved(Unresolved { table, reason, .. }) => panic!("unresolved row of {table}: {reason}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_is_exact_across_three_tenants() {
    let fx = Fixture::new(3).await;
    let mut src = PgSource::start(&fx.config(json!({})), None).await.unwrap();
    for (i, t) in fx.tenants.iter().enumerate() {
        fx.admin
            .batch_execute(&format!(
                "INSERT INTO lab_{t}.results VALUES ({i}, -32768, 2147483647, true, 1.5, -2.25e-300,
                 '-123456789012.123456', 'NaN', 'héllo \"x\"', 'vc', 'ab', '\\x00ff10', '2026-11-27',
                 '23:59:59.999999', '12:34:56.000001+05:30', '2026-11-27 10:11:12.345678',
                 '2026-11-27 10:11:12.345678+02', '1 year 2 mons 3 days 04:05:06.000007',
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{\"k\": [1, 2]}}', '{{\"b\": 1, \"a\": 2}}',
                 '{{{{1,NULL}},{{3,4}}}}', '{{\"x,y\",NULL}}', 'H', 'code-{i}');
                 UPDATE lab_{t}.results SET txt = 'updated', num = 12.5 WHERE id = {i};
                 INSERT INTO lab_{t}.results (id) VALUES ({i} + 100);
                 DELETE FROM lab_{t}.results WHERE id = {i} + 100;"
            ))
            .await
            .unwrap();
    }
    let mut changes = Vec::new();
    for _ in 0..3 {
        // Each tenant's batch is one transaction: 4 changes.
        let (mut c, _) = read_changes(&mut src, 4).await;
        changes.append(&mut c);
    }
    assert_eq!(changes.len(), 12);
    for (i, t) in fx.tenants.iter().enumerate() {
        let mine: Vec<_> = changes.iter().filter(|c| &*c.table.tenant == t.as_str()).collect();
        assert_eq!(mine.len(), 4, "tenant {t}");
        assert!(mine.iter().all(|c| *c.table.database == *format!("lab_{t}") && &*c.table.table == "results"));
        assert_eq!(mine.iter().map(|c| c.op).collect::<Vec<_>>(), vec![Op::Create, Op::Update, Op::Create, Op::Delete]);
        let schema = &mine[0].schema;
        let ty = |name: &str| schema.columns[schema.column_index(name).unwrap()].ty.clone();
        assert_eq!(ty("dec"), ColumnType::Decimal { precision: 18, scale: 6 });
        assert_eq!(ty("num"), ColumnType::Numeric);
        assert_eq!(ty("fl"), ColumnType::Enum);
        assert_eq!(ty("code"), ColumnType::String, "domain over varchar");
        assert_eq!(ty("arr"), ColumnType::Array);
        assert_eq!(schema.primary_key, vec![0]);
        let row = mine[0].after.as_ref().unwrap();
        let v = |name: &str| row[schema.column_index(name).unwrap()].clone();
        assert_eq!(v("id"), Value::Int(i as i64));
        assert_eq!(v("small"), Value::Int(-32768));
        assert_eq!(v("i"), Value::Int(2_147_483_647));
        assert_eq!(v("ok"), Value::Bool(true));
        assert_eq!(v("f4"), Value::Float(1.5));
        assert_eq!(v("f8"), Value::Double(-2.25e-300));
        assert_eq!(v("dec"), Value::Decimal("-123456789012.123456".into()));
        assert_eq!(v("num"), Value::Decimal("NaN".into()));
        assert_eq!(v("txt"), Value::String("héllo \"x\"".into()));
        assert_eq!(v("vc"), Value::String("vc".into()));
        assert_eq!(v("bp"), Value::String("ab  ".into()), "char(n) keeps its padding");
        assert_eq!(v("bin"), Value::Bytes(vec![0, 0xff, 0x10]));
        assert_eq!(v("d"), Value::Date(Date { year: 2026, month: 11, day: 27 }));
        assert_eq!(v("tm"), Value::Time(86_399_999_999));
        assert_eq!(v("ttz"), Value::String("12:34:56.000001+05:30".into()));
        assert_eq!(
            v("ts"),
            Value::DateTime(DateTime {
                date: Date { year: 2026, month: 11, day: 27 },
                hour: 10,
                minute: 11,
                second: 12,
                micros: 345_678
            })
        );
        let tstz = fx
            .admin
            .query_one(
                "SELECT (extract(epoch FROM timestamptz '2026-11-27 10:11:12.345678+02') * 1000000)::bigint",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(v("tstz"), Value::Timestamp(tstz));
        assert_eq!(v("iv"), Value::String("P1Y2M3DT4H5M6.000007S".into()));
        assert_eq!(v("u"), Value::String("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()));
        assert_eq!(v("j"), Value::Json("{\"k\": [1, 2]}".into()));
        assert_eq!(v("jb"), Value::Json("{\"a\": 2, \"b\": 1}".into()));
        assert_eq!(v("arr"), Value::Json("[[1,null],[3,4]]".into()));
        assert_eq!(v("tarr"), Value::Json("[\"x,y\",null]".into()));
        assert_eq!(v("fl"), Value::Enum("H".into()));
        assert_eq!(v("code"), Value::String(format!("code-{i}")));
        // The update: DEFAULT identity sends no old row; unchanged TOAST-able
        // but small values are sent in full.
        let upd = &mine[1];
        assert!(upd.before.is_none());
        let after = upd.after.as_ref().unwrap();
        assert_eq!(after[schema.column_index("txt").unwrap()], Value::String("updated".into()));
        assert_eq!(after[schema.column_index("num").unwrap()], Value::Decimal("12.5".into()));
        // The delete carries the key.
        let del = &mine[3];
        assert_eq!(del.before.as_ref().unwrap()[0], Value::Int(i as i64 + 100));
        // Positions increase within the transaction.
        assert!(mine.windows(2).all(|w| w[0].source.position.as_str() < w[1].source.position.as_str()));
    }
    src.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_only_advances_with_acks_and_unacked_changes_come_again() {
    let fx = Fixture::new(1).await;
    let t = fx.tenants[0].clone();
    let cfg = fx.config(json!({}));
    let mut src = PgSource::start(&cfg, None).await.unwrap();
    let start = fx.confirmed_flush().await;
    fx.admin.batch_execute(&format!("INSERT INTO lab_{t}.results (id) VALUES (1), (2)")).await.unwrap();
    let (first, lsn) = read_changes(&mut src, 2).await;
    assert_eq!(first.len(), 2);
    // Not acked: after several status intervals the slot has not moved past it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(fx.confirmed_flush().await < lsn, "the slot advanced without an ack");
    src.close().await;
    // A restart from the slot delivers the same changes again.
    let mut src = PgSource::start(&cfg, None).await.unwrap();
    let (again, lsn2) = read_changes(&mut src, 2).await;
    assert_eq!(
        again.iter().map(|e| e.after.clone()).collect::<Vec<_>>(),
        first.iter().map(|e| e.after.clone()).collect::<Vec<_>>()
    );
    assert_eq!(lsn, lsn2);
    src.ack(lsn2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.confirmed_flush().await < lsn2 {
        assert!(tokio::time::Instant::now() < deadline, "the slot did not advance to the acked LSN");
        // The source reports progress while it is being read (heartbeats keep it busy).
        let _ = tokio::time::timeout(Duration::from_millis(300), src.next()).await;
    }
    assert!(fx.confirmed_flush().await > start);
    src.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_advance_an_idle_slot_while_the_server_is_busy() {
    let fx = Fixture::new(1).await;
    fx.admin.batch_execute(&format!("CREATE TABLE public.busy_{} (x int)", fx.id)).await.unwrap();
    let mut src = PgSource::start(&fx.config(json!({})), None).await.unwrap();
    let start = fx.confirmed_flush().await;
    // Other tables are busy; the captured ones are idle.
    for _ in 0..20 {
        fx.admin
            .batch_execute(&format!("INSERT INTO public.busy_{} SELECT generate_series(1, 500)", fx.id))
            .await
            .unwrap();
    }
    let busy_until = fx.current_lsn().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat past the busy writes");
        match tokio::time::timeout_at(deadline, src.next()).await.unwrap().unwrap() {
            SourceItem::Heartbeat { resume: Resume::Lsn(lsn) } => {
                src.ack(lsn);
                if lsn > busy_until {
                    break;
                }
            }
            SourceItem::Change(e) => panic!("change of an unselected table: {}", e.table.table),
            _ => {}
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.confirmed_flush().await <= busy_until {
        assert!(tokio::time::Instant::now() < deadline, "confirmed_flush_lsn did not pass the busy writes");
        if let Ok(Ok(SourceItem::Heartbeat { resume: Resume::Lsn(lsn) })) =
            tokio::time::timeout(Duration::from_millis(300), src.next()).await
        {
            src.ack(lsn);
        }
    }
    assert!(fx.confirmed_flush().await > start);
    src.close().await;
    let _ = fx.admin.batch_execute(&format!("DROP TABLE public.busy_{}", fx.id)).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_are_streamed_spilled_and_aborts_dropped() {
    let fx = Fixture::new(1).await;
    let t = fx.tenants[0].clone();
    let spill = std::env::temp_dir().join(format!("lablake-pg-live-spill-{}", fx.id));
    let mut src = PgSource::start(&fx.config(json!({ "spill_dir": spill })), None).await.unwrap();
    // Rolled back: streamed (over logical_decoding_work_mem) then aborted.
    fx.admin
        .batch_execute(&format!(
            "BEGIN; INSERT INTO lab_{t}.results (id, txt) SELECT g, repeat('x', 200) FROM generate_series(1000000, 1020000) g; ROLLBACK;"
        ))
        .await
        .unwrap();
    // Committed, with an aborted savepoint in the middle.
    fx.admin
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO lab_{t}.results (id, txt) SELECT g, repeat('y', 200) FROM generate_series(1, 20000) g;
             SAVEPOINT s; INSERT INTO lab_{t}.results (id) SELECT g FROM generate_series(50001, 55000) g; ROLLBACK TO s;
             INSERT INTO lab_{t}.results (id) VALUES (20001);
             COMMIT;"
        ))
        .await
        .unwrap();
    let (changes, _) = read_changes(&mut src, 20_001).await;
    let ids: Vec<i64> = changes
        .iter()
        .map(|e| match e.after.as_ref().unwrap()[0] {
            Value::Int(v) => v,
            _ => panic!(),
        })
        .collect();
    assert_eq!(ids, (1..=20_001).collect::<Vec<i64>>(), "exactly the committed rows, in order");
    assert!(std::fs::read_dir(&spill).map(|d| d.count()).unwrap_or(0) == 0, "spill files are removed");
    src.close().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_reported_not_recreated_when_resuming() {
    let fx = Fixture::new(1).await;
    let cfg = fx.config(json!({}));
    let src = PgSource::start(&cfg, None).await.unwrap();
    let lsn = fx.confirmed_flush().await;
    src.close().await;
    let slot = format!("lablake_t{}", fx.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.admin.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slot still active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = PgSource::start(&cfg, Some(lsn)).await.err().expect("must fail");
    assert!(matches!(err, PgError::PositionLost { .. }), "{err}");
    assert!(err.to_string().contains(&slot) && err.to_string().contains("snapshot"), "{err}");
    fx.cleanup().await;
}

/// A slot moved past the checkpoint by something else (here
/// `pg_replication_slot_advance`) would silently skip the changes in
/// between: it is reported instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_advanced_past_the_checkpoint_is_reported() {
    let fx = Fixture::new(1).await;
    let t = fx.tenants[0].clone();
    let cfg = fx.config(json!({}));
    let src = PgSource::start(&cfg, None).await.unwrap();
    let checkpoint = fx.confirmed_flush().await;
    src.close().await;
    fx.admin.batch_execute(&format!("INSERT INTO lab_{t}.results (id) VALUES (1)")).await.unwrap();
    let slot = format!("lablake_t{}", fx.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.admin.execute("SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())", &[&slot]).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "slot still active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fx.confirmed_flush().await > checkpoint);
    let err = PgSource::start(&cfg, Some(checkpoint)).await.err().expect("must fail");
    assert!(matches!(err, PgError::PositionLost { .. }), "{err}");
    assert!(err.to_string().contains("advanced") && err.to_string().contains("snapshot"), "{err}");
    // Resuming from the slot's own position is fine.
    let src = PgSource::start(&cfg, Some(fx.confirmed_flush().await)).await.unwrap();
    src.close().await;
    fx.cleanup().await;
}

/// TLS (every verifying mode) with SCRAM-SHA-256, on both connections, against
/// the local server's test CA (`LABLAKE_PG_TLS_URL`, `LABLAKE_PG_TLS_CA` from
/// `dev/services env`; the user may only connect over TLS with SCRAM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_scram_streams_and_unknown_cas_are_refused() {
    let (Ok(tls_url), Ok(ca)) = (std::env::var("LABLAKE_PG_TLS_URL"), std::env::var("LABLAKE_PG_TLS_CA")) else {
        eprintln!("TLS NOT TESTED: LABLAKE_PG_TLS_URL / LABLAKE_PG_TLS_CA are not set (dev/services env sets them)");
        return;
    };
    let fx = Fixture::new(1).await;
    let t = fx.tenants[0].clone();
    for (i, mode) in ["verify-full", "verify-ca", "require"].into_iter().enumerate() {
        let extra = json!({ "tls": { "mode": mode, "ca_file": ca } });
        let mut src =
            PgSource::start(&fx.config_with_url(&tls_url, extra), None).await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        fx.admin.batch_execute(&format!("INSERT INTO lab_{t}.results (id) VALUES ({i})")).await.unwrap();
        let (changes, lsn) = read_changes(&mut src, 1).await;
        assert_eq!(changes[0].after.as_ref().unwrap()[0], Value::Int(i as i64), "{mode}");
        src.ack(lsn);
        src.close().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Without the test CA (Mozilla roots only) the server is not trusted.
    let err = PgSource::start(&fx.config_with_url(&tls_url, json!({ "tls": { "mode": "verify-full" } })), None)
        .await
        .err()
        .expect("an unknown CA must be refused");
    assert!(matches!(err, PgError::Connection { .. }), "{err}");
    // Without TLS the server refuses this user; the error says so and carries no password.
    let err = PgSource::start(&fx.config_with_url(&tls_url, json!({})), None).await.err().expect("must fail");
    let text = err.to_string();
    assert!(text.contains("no encryption") || text.contains("pg_hba"), "{text}");
    assert!(!text.contains(":lablake@"), "the password leaked: {text}");
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_using_index_and_none() {
    let fx = Fixture::new(1).await;
    let t = fx.tenants[0].clone();
    fx.admin
        .batch_execute(&format!(
            "CREATE TABLE lab_{t}.full_t (id bigint PRIMARY KEY, body text, n int);
             ALTER TABLE lab_{t}.full_t ALTER COLUMN body SET STORAGE EXTERNAL, REPLICA IDENTITY FULL;
             CREATE TABLE lab_{t}.idx_t (a int NOT NULL, b int NOT NULL, v text);
             CREATE UNIQUE INDEX idx_t_ab ON lab_{t}.idx_t (a, b);
             ALTER TABLE lab_{t}.idx_t REPLICA IDENTITY USING INDEX idx_t_ab;
             CREATE TABLE lab_{t}.nokey (v text);"
        ))
        .await
        .unwrap();
    let mut src = PgSource::start(&fx.config(json!({})), None).await.unwrap();
    fx.admin
        .batch_execute(&format!(
            "INSERT INTO lab_{t}.full_t VALUES (1, repeat(md5('x'), 400), 0);
             UPDATE lab_{t}.full_t SET n = 1;
             INSERT INTO lab_{t}.idx_t VALUES (1, 2, 'v');
             DELETE FROM lab_{t}.idx_t;
             INSERT INTO lab_{t}.nokey VALUES ('k');"
        ))
        .await
        .unwrap();
    let (ch, _) = read_changes(&mut src, 5).await;
    let big = Value::String("9dd4e461268c8034f5c8564e155c67a6".repeat(400));
    // FULL: the update carries the whole old row; the unchanged TOASTed body comes from it.
    let upd = &ch[1];
    assert_eq!(upd.op, Op::Update);
    assert_eq!(upd.before.as_ref().unwrap()[1], big);
    assert_eq!(upd.after.as_ref().unwrap()[1], big);
    assert_eq!(upd.after.as_ref().unwrap()[2], Value::Int(1));
    // USING INDEX without a primary key: the index columns are the key.
    let del = &ch[3];
    assert_eq!(del.schema.primary_key, vec![0, 1]);
    assert_eq!(del.before.as_ref().unwrap()[..2], [Value::Int(1), Value::Int(2)]);
    // No key at all: every column is the key (and a warning names the table).
    assert_eq!(ch[4].schema.primary_key, vec![0]);
    assert_eq!(ch[4].schema.columns.len(), 1);
    src.close().await;
    fx.cleanup().await;
}

/// A fixture with one schema `lab_t<id>s` holding tables shared by tenants
/// (dropped by `cleanup`), and the source configuration of the tenant-column
/// rule over `tenant_id`.
async fn shared_fixture() -> (Fixture, String, PgSourceConfig) {
    let mut fx = Fixture::new(0).await;
    let schema = format!("lab_t{}s", fx.id);
    fx.admin.batch_execute(&format!("CREATE SCHEMA {schema}")).await.unwrap();
    fx.tenants.push(format!("t{}s", fx.id));
    let cfg = fx.config(json!({ "tenant": { "kind": "column", "column": "tenant_id" } }));
    (fx, schema, cfg)
}

/// `op tenant [before] [after]` of a change, images as `id,tenant,v`.
fn routed(e: &lablake_model::ChangeEvent) -> String {
    let img = |r: &Option<Vec<Value>>| match r.as_deref() {
        None => "-".to_owned(),
        Some(row) => row
            .iter()
            .map(|v| match v {
                Value::Int(i) => i.to_string(),
                Value::String(s) => s.clone(),
                Value::Null => "null".into(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(","),
    };
    format!("{} {} [{}] [{}]", e.op.code(), e.table.tenant, img(&e.before), img(&e.after))
}

/// Under the tenant-column rule an UPDATE that changes the tenant is a
/// delete (old image) in the old tenant and a create (new image) in the new
/// one, with REPLICA IDENTITY FULL (old row 'O' on every update) and with a
/// primary key that contains the tenant column (old key 'K' when it changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_moving_between_tenants_leave_the_old_tenant() {
    let (fx, schema, cfg) = shared_fixture().await;
    let (alpha, beta) = (format!("alpha_{}", fx.id), format!("beta_{}", fx.id));
    fx.admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.full_t (id bigint PRIMARY KEY, tenant_id text NOT NULL, v text);
             ALTER TABLE {schema}.full_t REPLICA IDENTITY FULL;
             CREATE TABLE {schema}.keyed (id bigint, tenant_id text, v text, PRIMARY KEY (tenant_id, id));"
        ))
        .await
        .unwrap();
    let mut src = PgSource::start(&cfg, None).await.expect("identities cover the tenant column");
    for table in ["full_t", "keyed"] {
        fx.admin
            .batch_execute(&format!(
                "INSERT INTO {schema}.{table} VALUES (1, '{alpha}', 'a'), (2, '{beta}', 'b');
                 UPDATE {schema}.{table} SET tenant_id = '{beta}', v = 'moved' WHERE id = 1;
                 UPDATE {schema}.{table} SET v = 'again' WHERE id = 1;"
            ))
            .await
            .unwrap();
        let (changes, _) = read_changes(&mut src, 5).await;
        assert!(changes.iter().all(|e| &*e.table.table == table && *e.table.database == *schema));
        let got: Vec<String> = changes.iter().map(routed).collect();
        let want: Vec<String> = if table == "full_t" {
            vec![
                format!("c {alpha} [-] [1,{alpha},a]"),
                format!("c {beta} [-] [2,{beta},b]"),
                format!("d {alpha} [1,{alpha},a] [-]"),
                format!("c {beta} [-] [1,{beta},moved]"),
                format!("u {beta} [1,{beta},moved] [1,{beta},again]"),
            ]
        } else {
            // Default identity: the old key only, and only when it changed.
            vec![
                format!("c {alpha} [-] [1,{alpha},a]"),
                format!("c {beta} [-] [2,{beta},b]"),
                format!("d {alpha} [1,{alpha},null] [-]"),
                format!("c {beta} [-] [1,{beta},moved]"),
                format!("u {beta} [-] [1,{beta},again]"),
            ]
        };
        assert_eq!(got, want, "{table}");
        // Both halves of the move carry the update's position.
        assert_eq!(changes[2].source.position, changes[3].source.position);
    }
    src.close().await;
    fx.cleanup().await;
}

/// A shared table whose replica identity does not contain the tenant
/// column would hide moves: the source refuses to start, and a running
/// source stops at the first Relation message of such a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_column_outside_the_replica_identity_is_refused() {
    let (fx, schema, cfg) = shared_fixture().await;
    fx.admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.ok_t (id bigint PRIMARY KEY, tenant_id text);
             ALTER TABLE {schema}.ok_t REPLICA IDENTITY FULL;
             CREATE TABLE {schema}.no_tenant (id bigint PRIMARY KEY);"
        ))
        .await
        .unwrap();
    let mut src = PgSource::start(&cfg, None).await.expect("start");
    // Created while the source runs: refused when its first change arrives.
    fx.admin
        .batch_execute(&format!(
            "CREATE TABLE {schema}.pk_only (id bigint PRIMARY KEY, tenant_id text, v text);
             INSERT INTO {schema}.pk_only VALUES (1, 'alpha_{}', 'secret-value');",
            fx.id
        ))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let err = loop {
        match tokio::time::timeout_at(deadline, src.next()).await.expect("no error within 60s") {
            Ok(SourceItem::Change(e)) => panic!("a change of {} passed", e.table.table),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let check = |err: &PgError| {
        let text = err.to_string();
        assert!(matches!(err, PgError::ServerConfig { .. }) && !err.is_retryable(), "{text}");
        assert!(text.contains(&format!("ALTER TABLE {schema}.pk_only REPLICA IDENTITY FULL")), "{text}");
        assert!(text.contains("`tenant_id`") && !text.contains("secret-value"), "{text}");
    };
    check(&err);
    src.close().await;
    // And it does not start again until the table is fixed.
    let err = PgSource::start(&cfg, None).await.err().expect("must refuse to start");
    check(&err);
    fx.admin.batch_execute(&format!("ALTER TABLE {schema}.pk_only REPLICA IDENTITY FULL")).await.unwrap();
    let src = PgSource::start(&cfg, None).await.expect("starts once the identity is FULL");
    src.close().await;
    fx.cleanup().await;
}
