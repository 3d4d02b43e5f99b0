//! Live tests against MariaDB (`LABLAKE_MYSQL_URL`, default
//! `mysql://lablake:lablake@127.0.0.1:23306`, binlog ROW / FULL image /
//! FULL metadata). They fail, never skip, when the server is unreachable.
//!
//! Each test uses its own database `lab_<random>` and replica server id, so
//! the tests run in parallel on one server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lablake_model::{ColumnType, Date, DateTime, Op, Resume, SourcePosition, Value};
use lablake_mysql::{MysqlError, MysqlSource, MysqlSourceConfig};
use lablake_source::{SourceItem, Unresolved};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

fn url() -> String {
    std::env::var("LABLAKE_MYSQL_URL").unwrap_or_else(|_| "mysql://lablake:lablake@127.0.0.1:23306".into())
}

async fn admin() -> Conn {
    let url = url();
    let opts = Opts::from_url(&url).expect("LABLAKE_MYSQL_URL is not a mysql:// URL");
    let mut conn = match tokio::time::timeout(Duration::from_secs(10), Conn::new(opts)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("MariaDB at {url} is unreachable ({e}); start dev/services or set LABLAKE_MYSQL_URL"),
        Err(_) => panic!("MariaDB at {url} did not answer within 10s; start dev/services or set LABLAKE_MYSQL_URL"),
    };
    conn.query_drop("SET time_zone = '+00:00', sql_mode = ''").await.unwrap();
    conn
}

struct TestDb {
    name: String,
    tenant: String,
    conn: Conn,
}

async fn test_db() -> TestDb {
    let tenant = format!("{:016x}", rand::random::<u64>());
    let name = format!("lab_{tenant}");
    let mut conn = admin().await;
    conn.query_drop(format!("CREATE DATABASE `{name}`")).await.unwrap();
    conn.query_drop(format!("USE `{name}`")).await.unwrap();
    TestDb { name, tenant, conn }
}

impl TestDb {
    async fn exec(&mut self, sql: &str) {
        self.conn.query_drop(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn drop(mut self) {
        let _ = self.conn.query_drop(format!("DROP DATABASE `{}`", self.name)).await;
        let _ = self.conn.disconnect().await;
    }
}

fn config(db: &str, extra: &str) -> MysqlSourceConfig {
    let server_id = 100_000 + (rand::random::<u32>() % 1_000_000_000);
    let json = format!(
        r#"{{"name":"live","url":"{}","server_id":{server_id},"tenant":{{"kind":"schema","pattern":"lab_{{tenant}}"}},
            "include":["{db}.*"],"heartbeat_interval":"300ms","idle_timeout":"10s"{extra}}}"#,
        url()
    );
    serde_json::from_str(&json).unwrap()
}

async fn next(src: &mut MysqlSource) -> SourceItem {
    match tokio::time::timeout(Duration::from_secs(20), src.next()).await {
        Ok(Ok(item)) => item,
        Ok(Err(e)) => panic!("source failed: {e}"),
        Err(_) => panic!("no item within 20s"),
    }
}

/// Reads items until `changes` changes and `commits_after` commits have
/// been seen. Heartbeats and commits of transactions without a change of
/// this test's tables (other tests share the server) are dropped.
async fn collect(src: &mut MysqlSource, changes: usize, commits_after: usize) -> Vec<SourceItem> {
    let mut out = Vec::new();
    let mut seen_changes = 0;
    let mut seen_commits = 0;
    let mut since_commit = 0;
    while seen_changes < changes || seen_commits < commits_after {
        let item = next(src).await;
        match &item {
            SourceItem::Change(_) | SourceItem::Unresolved(_) => {
                seen_changes += 1;
                since_commit += 1;
            }
            SourceItem::Commit { .. } if since_commit > 0 => {
                seen_commits += 1;
                since_commit = 0;
            }
            _ => continue,
        }
        out.push(item);
    }
    out
}

fn changes(items: &[SourceItem]) -> Vec<&lablake_model::ChangeEvent> {
    items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Change(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn assert_strictly_increasing(items: &[SourceItem]) {
    let mut last: Option<SourcePosition> = None;
    for i in items {
        let p = match i {
            SourceItem::Change(c) => c.source.position.clone(),
            SourceItem::Commit { position, .. } => position.clone(),
            _ => continue,
        };
        if let Some(l) = &last {
            assert!(p > *l, "position {p} does not follow {l}");
        }
        last = Some(p);
    }
}

/// Compares the parts of items that must be identical on replay.
fn replay_key(i: &SourceItem) -> String {
    match i {
        SourceItem::Change(c) => {
            format!("{:?}|{}|{:?}|{:?}|{:?}", c.op, c.source.position, c.before, c.after, c.source.gtid)
        }
        SourceItem::Commit { resume, position, .. } => format!("commit|{position}|{resume:?}"),
        SourceItem::Unresolved(Unresolved { position, reason, .. }) => format!("unresolved|{position}|{reason}"),
        other => format!("{other:?}"),
    }
}

const ALL_TYPES: &str = "CREATE TABLE t (
    id INT PRIMARY KEY,
    ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED,
    mi MEDIUMINT, miu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
    dec65 DECIMAL(65,30), f FLOAT, d DOUBLE,
    dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL DEFAULT NULL, y YEAR,
    c CHAR(10) CHARACTER SET utf8mb4, vc VARCHAR(100) CHARACTER SET utf8mb4,
    l1 VARCHAR(50) CHARACTER SET latin1, tx TEXT CHARACTER SET utf8mb4,
    bn BINARY(4), vb VARBINARY(10), bl BLOB,
    e ENUM('red','green','blue'), st SET('a','b','c','d'), b9 BIT(9), j JSON
)";

const ROW1: &str = "INSERT INTO t VALUES (1,
    -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
    -9223372036854775808, 18446744073709551615,
    '-12345678901234567890123456789012345.123456789012345678901234567890', 1.5, -2.25e300,
    '2024-02-29', '-838:59:59.000000', '9999-12-31 23:59:59.999999', '2024-01-02 03:04:05.123456', 2155,
    'héllo', '😀 emoji ünïcode', 'café€', 'a longer text', X'6162', X'00FF10', X'DEADBEEF',
    'green', 'c,a', b'100000001', '{\"b\": [1, 2.5, \"x\"], \"a\": null}')";

const ROW2: &str =
    "INSERT INTO t (id, ti, tiu, si, siu, mi, miu, i, iu, bi, biu, dec65, dt, tm, dtm, y, e, st, b9) VALUES (2,
    127, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0,
    '99999999999999999999999999999999999.999999999999999999999999999999',
    '0000-00-00', '838:59:59.999999', '0000-00-00 00:00:00', 0, '', '', b'0')";

fn row1() -> Vec<Value> {
    let ts = DateTime { date: Date { year: 2024, month: 1, day: 2 }, hour: 3, minute: 4, second: 5, micros: 123_456 };
    vec![
        Value::Int(1),
        Value::Int(-128),
        Value::UInt(255),
        Value::Int(-32768),
        Value::UInt(65535),
        Value::Int(-8_388_608),
        Value::UInt(16_777_215),
        Value::Int(-2_147_483_648),
        Value::UInt(4_294_967_295),
        Value::Int(i64::MIN),
        Value::UInt(u64::MAX),
        Value::Decimal("-12345678901234567890123456789012345.123456789012345678901234567890".into()),
        Value::Float(1.5),
        Value::Double(-2.25e300),
        Value::Date(Date { year: 2024, month: 2, day: 29 }),
        Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000),
        Value::DateTime(DateTime {
            date: Date { year: 9999, month: 12, day: 31 },
            hour: 23,
            minute: 59,
            second: 59,
            micros: 999_999,
        }),
        Value::Timestamp(ts.micros_since_epoch().unwrap()),
        Value::Year(2155),
        Value::String("héllo".into()),
        Value::String("😀 emoji ünïcode".into()),
        Value::String("café€".into()),
        Value::String("a longer text".into()),
        Value::Bytes(vec![b'a', b'b', 0, 0]),
        Value::Bytes(vec![0x00, 0xff, 0x10]),
        Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
        Value::Enum("green".into()),
        Value::Set("a,c".into()),
        Value::Bit(vec![0x01, 0x01]),
        Value::Json(r#"{"b": [1, 2.5, "x"], "a": null}"#.into()),
    ]
}

fn row2() -> Vec<Value> {
    let mut v = vec![Value::Null; 30];
    v[0] = Value::Int(2);
    v[1] = Value::Int(127);
    v[2] = Value::UInt(0);
    v[3] = Value::Int(32767);
    v[4] = Value::UInt(0);
    v[5] = Value::Int(8_388_607);
    v[6] = Value::UInt(0);
    v[7] = Value::Int(2_147_483_647);
    v[8] = Value::UInt(0);
    v[9] = Value::Int(i64::MAX);
    v[10] = Value::UInt(0);
    v[11] = Value::Decimal("99999999999999999999999999999999999.999999999999999999999999999999".into());
    v[14] = Value::Date(Date { year: 0, month: 0, day: 0 });
    v[15] = Value::Time((838 * 3600 + 59 * 60 + 59) * 1_000_000 + 999_999);
    v[16] = Value::DateTime(DateTime {
        date: Date { year: 0, month: 0, day: 0 },
        hour: 0,
        minute: 0,
        second: 0,
        micros: 0,
    });
    v[18] = Value::Year(0);
    v[26] = Value::Enum(String::new());
    v[27] = Value::Set(String::new());
    v[28] = Value::Bit(vec![0, 0]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_insert_update_delete_and_resume() {
    let mut db = test_db().await;
    db.exec(ALL_TYPES).await;
    let mut src = MysqlSource::start(config(&db.name, ""), None).await.expect("start");

    db.exec(ROW1).await;
    db.exec(ROW2).await;
    db.exec("UPDATE t SET vc = 'updated', iu = 0 WHERE id = 1").await;
    db.exec("DELETE FROM t WHERE id = 2").await;
    db.exec("BEGIN").await;
    db.exec("INSERT INTO t (id, vc) VALUES (3, 'three')").await;
    db.exec("INSERT INTO t (id, vc) VALUES (4, 'four')").await;
    db.exec("COMMIT").await;

    let items = collect(&mut src, 6, 5).await;
    assert_strictly_increasing(&items);
    // Shape: change, commit, change, commit, change, commit, change, commit, change, change, commit.
    let shape: Vec<&str> = items
        .iter()
        .map(|i| match i {
            SourceItem::Change(c) => c.op.code(),
            SourceItem::Commit { .. } => "commit",
            _ => "other",
        })
        .collect();
    assert_eq!(shape, vec!["c", "commit", "c", "commit", "u", "commit", "d", "commit", "c", "c", "commit"]);
    let ch = changes(&items);
    for c in &ch {
        assert_eq!(&*c.table.tenant, db.tenant);
        assert_eq!(&*c.table.database, db.name);
        assert_eq!(&*c.table.table, "t");
        assert_eq!(&*c.source.connector, "mysql");
        assert_eq!(&*c.source.name, "live");
        assert!(c.source.gtid.as_deref().is_some_and(|g| g.split('-').count() == 3), "{:?}", c.source.gtid);
        assert!(c.ts_ms >= c.source.ts_ms);
    }
    // Types from FULL metadata (+ information_schema for MariaDB JSON).
    let schema = &ch[0].schema;
    assert_eq!(schema.primary_key, vec![0]);
    let ty = |name: &str| schema.columns[schema.column_index(name).unwrap()].ty.clone();
    assert_eq!(ty("tiu"), ColumnType::Int { bytes: 1, unsigned: true });
    assert_eq!(ty("mi"), ColumnType::Int { bytes: 3, unsigned: false });
    assert_eq!(ty("biu"), ColumnType::Int { bytes: 8, unsigned: true });
    assert_eq!(ty("dec65"), ColumnType::Decimal { precision: 65, scale: 30 });
    assert_eq!(ty("ts"), ColumnType::Timestamp);
    assert_eq!(ty("bn"), ColumnType::Bytes);
    assert_eq!(ty("l1"), ColumnType::String);
    assert_eq!(ty("b9"), ColumnType::Bit { bits: 9 });
    assert_eq!(ty("j"), ColumnType::Json);

    assert_eq!(ch[0].op, Op::Create);
    assert!(ch[0].before.is_none());
    let got = ch[0].after.as_deref().unwrap();
    for (i, (g, w)) in got.iter().zip(row1()).enumerate() {
        assert_eq!(*g, w, "column {}", schema.columns[i].name);
    }
    assert_eq!(got.len(), 30);
    let got = ch[1].after.as_deref().unwrap();
    for (i, (g, w)) in got.iter().zip(row2()).enumerate() {
        assert_eq!(*g, w, "column {}", schema.columns[i].name);
    }
    assert_eq!(ch[2].op, Op::Update);
    assert_eq!(ch[2].before.as_deref().unwrap(), &row1()[..]);
    let mut updated = row1();
    updated[8] = Value::UInt(0);
    updated[20] = Value::String("updated".into());
    assert_eq!(ch[2].after.as_deref().unwrap(), &updated[..]);
    assert_eq!(ch[3].op, Op::Delete);
    assert_eq!(ch[3].before.as_deref().unwrap(), &row2()[..]);
    assert!(ch[3].after.is_none());
    assert_eq!(ch[4].after.as_deref().unwrap()[20], Value::String("three".into()));
    assert_eq!(ch[4].source.gtid, ch[5].source.gtid, "one transaction, one GTID");
    assert!(ch[4].source.position < ch[5].source.position);

    // Restart from the commit after the first insert: exactly the following
    // transactions come again, with the same positions and values.
    let first_commit = items
        .iter()
        .find_map(|i| match i {
            SourceItem::Commit { resume, .. } => Some(resume.clone()),
            _ => None,
        })
        .unwrap();
    let Resume::Binlog { gtid: first_gtid, .. } = &first_commit else { panic!("{first_commit:?}") };
    assert!(first_gtid.is_some());
    let expected: Vec<String> = items.iter().skip(2).map(replay_key).collect();
    let mut again = MysqlSource::start(config(&db.name, ""), Some(first_commit.clone())).await.expect("restart");
    let replay = collect(&mut again, 5, 4).await;
    assert_eq!(replay.iter().map(replay_key).collect::<Vec<_>>(), expected);

    // The same by MariaDB GTID alone.
    let by_gtid = Resume::Binlog { file: String::new(), pos: 0, gtid: first_gtid.clone() };
    let mut again = MysqlSource::start(config(&db.name, ""), Some(by_gtid)).await.expect("restart by gtid");
    let replay = collect(&mut again, 5, 4).await;
    assert_eq!(replay.iter().map(replay_key).collect::<Vec<_>>(), expected);
    again.close().await.unwrap();
    src.close().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtid_start_from_config() {
    let mut db = test_db().await;
    db.exec("CREATE TABLE g (id INT PRIMARY KEY, v VARCHAR(10))").await;
    db.exec("INSERT INTO g VALUES (1, 'one')").await;
    let gtid: String = db.conn.query_first("SELECT @@gtid_binlog_pos").await.unwrap().unwrap();
    db.exec("INSERT INTO g VALUES (2, 'two')").await;
    db.exec("UPDATE g SET v = 'TWO' WHERE id = 2").await;
    let mut src =
        MysqlSource::start(config(&db.name, &format!(r#","start":{{"gtid":"{gtid}"}}"#)), None).await.expect("start");
    let items = collect(&mut src, 2, 2).await;
    let ch = changes(&items);
    assert_eq!(ch.len(), 2);
    assert_eq!(ch[0].op, Op::Create);
    assert_eq!(ch[0].after.as_deref().unwrap(), &[Value::Int(2), Value::String("two".into())]);
    assert_eq!(ch[1].op, Op::Update);
    assert_eq!(ch[1].after.as_deref().unwrap(), &[Value::Int(2), Value::String("TWO".into())]);
    // Commit GTID positions move forward in the domain.
    let gtids: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Commit { resume: Resume::Binlog { gtid, .. }, .. } => gtid.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(gtids.len(), 2);
    assert_ne!(gtids[0], gtids[1]);
    assert_eq!(Some(gtids[1].as_str()), ch[1].source.gtid.as_deref());
    src.close().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_source_heartbeats_and_earliest_start() {
    let db = test_db().await;
    let mut src = MysqlSource::start(config(&db.name, ""), None).await.expect("start");
    // Nothing happens in this database: heartbeats still arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut heartbeat = None;
    while heartbeat.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no heartbeat on an idle source");
        if let SourceItem::Heartbeat { resume } = next(&mut src).await {
            heartbeat = Some(resume);
        }
    }
    let hb = heartbeat.unwrap();
    let Resume::Binlog { file, pos, .. } = &hb else { panic!("{hb:?}") };
    assert!(!file.is_empty() && *pos >= 4);
    // A heartbeat's resume point is a valid restart position.
    let mut again = MysqlSource::start(config(&db.name, ""), Some(hb)).await.expect("restart from heartbeat");
    let _ = next(&mut again).await;
    // `earliest` starts at the first binlog file the server has.
    let mut earliest = MysqlSource::start(config(&db.name, r#","start":"earliest""#), None).await.expect("earliest");
    let _ = next(&mut earliest).await;
    src.close().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_column_rule_and_unresolved_rows() {
    let mut db = test_db().await;
    db.exec("CREATE TABLE shared (id INT PRIMARY KEY, tenant_id VARCHAR(20), v INT)").await;
    let extra = r#","tenant":{"kind":"column","column":"tenant_id"}"#;
    let json = format!(
        r#"{{"name":"live","url":"{}","server_id":{},"include":["{}.*"],"heartbeat_interval":"300ms"{extra}}}"#,
        url(),
        200_000 + rand::random::<u32>() % 1_000_000_000,
        db.name
    );
    let cfg: MysqlSourceConfig = serde_json::from_str(&json).unwrap();
    let mut src = MysqlSource::start(cfg, None).await.expect("start");
    db.exec("INSERT INTO shared VALUES (1, 'acme', 1)").await;
    db.exec("INSERT INTO shared VALUES (2, NULL, 2)").await;
    db.exec("INSERT INTO shared VALUES (3, 'Bad Name', 3)").await;
    db.exec("UPDATE shared SET tenant_id = 'globex' WHERE id = 1").await;
    let items = collect(&mut src, 5, 4).await;
    let kinds: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Change(c) => Some(format!("{}:{}", c.op.code(), c.table.tenant)),
            SourceItem::Unresolved(Unresolved { table, .. }) => Some(format!("unresolved:{table}")),
            _ => None,
        })
        .collect();
    let t = format!("{}.shared", db.name);
    assert_eq!(
        kinds,
        vec![
            "c:acme".to_owned(),
            format!("unresolved:{t}"),
            format!("unresolved:{t}"),
            "d:acme".to_owned(),
            "c:globex".to_owned()
        ]
    );
    // The row moving between tenants: the old tenant only sees the old image.
    let ch = changes(&items);
    assert!(ch[1].after.is_none() && ch[1].before.as_deref().unwrap()[1] == Value::String("acme".into()));
    assert!(ch[2].before.is_none() && ch[2].after.as_deref().unwrap()[1] == Value::String("globex".into()));
    for i in &items {
        if let SourceItem::Unresolved(Unresolved { reason, .. }) = i {
            assert!(!reason.contains("Bad Name"), "reasons never carry values: {reason}");
        }
    }
    src.close().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_errors_are_classified() {
    let db = test_db().await;
    // The server's own id is refused.
    let mut conn = admin().await;
    let own: u32 = conn.query_first("SELECT @@server_id").await.unwrap().unwrap();
    let mut cfg = config(&db.name, "");
    cfg.server_id = own;
    match MysqlSource::start(cfg, None).await {
        Err(MysqlError::Config { key, .. }) => assert_eq!(key, "server_id"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started with the server's own server_id"),
    }
    // A purged / unknown binlog file is PositionLost, not retryable.
    let gone = Resume::Binlog { file: "binlog.999999".into(), pos: 4, gtid: None };
    match MysqlSource::start(config(&db.name, ""), Some(gone)).await {
        Ok(mut src) => match tokio::time::timeout(Duration::from_secs(10), src.next()).await {
            Ok(Err(e)) => {
                assert!(matches!(e, MysqlError::PositionLost { .. }), "{e}");
                assert!(!e.is_retryable());
            }
            other => panic!("expected PositionLost, got {other:?}"),
        },
        Err(e) => assert!(matches!(e, MysqlError::PositionLost { .. }), "{e}"),
    }
    // Nothing listens on port 1: a retryable connection error.
    let mut bad = config(&db.name, "");
    bad.url = "mysql://lablake:secret-pw@127.0.0.1:1".to_owned().into();
    let err = MysqlSource::start(bad, None).await.err().expect("connect must fail");
    assert!(err.is_retryable(), "{err}");
    assert!(!err.to_string().contains("secret-pw"));
    let _ = conn.disconnect().await;
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_refreshes_schema_and_json_detection() {
    let mut db = test_db().await;
    db.exec("CREATE TABLE x (id INT PRIMARY KEY, doc LONGTEXT CHARACTER SET utf8mb4)").await;
    let mut src = MysqlSource::start(config(&db.name, ""), None).await.expect("start");
    // information_schema describes the table as it is now, so each step is
    // read before the next DDL runs (see the README's limitations).
    db.exec(r#"INSERT INTO x VALUES (1, '{"k": 1}')"#).await;
    let mut items = collect(&mut src, 1, 1).await;
    // Same table map afterwards; only information_schema changes.
    db.exec("ALTER TABLE x ADD CONSTRAINT doc_is_json CHECK (json_valid(doc))").await;
    db.exec(r#"INSERT INTO x VALUES (2, '{"k": 2}')"#).await;
    items.extend(collect(&mut src, 1, 1).await);
    db.exec("ALTER TABLE x ADD COLUMN extra BIGINT UNSIGNED NULL").await;
    db.exec(r#"INSERT INTO x VALUES (3, '[3]', 18446744073709551615)"#).await;
    items.extend(collect(&mut src, 1, 1).await);
    let ch = changes(&items);
    assert_eq!(ch[0].after.as_deref().unwrap()[1], Value::String(r#"{"k": 1}"#.into()));
    assert_eq!(ch[0].schema.columns[1].ty, ColumnType::String);
    assert_eq!(ch[1].after.as_deref().unwrap()[1], Value::Json(r#"{"k": 2}"#.into()));
    assert_eq!(ch[1].schema.columns[1].ty, ColumnType::Json);
    assert_eq!(ch[2].schema.columns.len(), 3);
    assert_eq!(ch[2].after.as_deref().unwrap(), &[Value::Int(3), Value::Json("[3]".into()), Value::UInt(u64::MAX)]);
    assert_ne!(ch[0].schema.fingerprint(), ch[2].schema.fingerprint());
    src.close().await.unwrap();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_16_mib_and_binlog_rotation() {
    let mut db = test_db().await;
    db.exec("CREATE TABLE big (id INT PRIMARY KEY, a LONGBLOB, b LONGBLOB)").await;
    let mut src = MysqlSource::start(config(&db.name, ""), None).await.expect("start");
    db.exec("INSERT INTO big VALUES (1, REPEAT('a', 9000000), NULL)").await;
    // The row grows to 18 MB; the update event (before + after image) is
    // about 27 MB: one binlog event split over several 16 MiB packets.
    db.exec("UPDATE big SET b = REPEAT('b', 9000000) WHERE id = 1").await;
    db.exec("FLUSH BINARY LOGS").await;
    db.exec("INSERT INTO big VALUES (2, 'small', 'small')").await;
    let mut items = Vec::new();
    let mut heartbeat_files = Vec::new();
    while changes(&items).len() < 3 {
        match next(&mut src).await {
            SourceItem::Heartbeat { resume: Resume::Binlog { file, .. } } => heartbeat_files.push(file),
            item @ SourceItem::Change(_) => items.push(item),
            _ => {}
        }
    }
    let ch = changes(&items);
    let upd = ch[1];
    assert_eq!(upd.op, Op::Update);
    match &upd.after.as_deref().unwrap()[2] {
        Value::Bytes(b) => assert!(b.len() == 9_000_000 && b.iter().all(|x| *x == b'b')),
        other => panic!("unexpected {:?}", std::mem::discriminant(other)),
    }
    assert_eq!(upd.before.as_deref().unwrap()[2], Value::Null);
    // After the rotation: a heartbeat names the new file and positions keep increasing.
    assert!(ch[2].source.file != ch[1].source.file);
    assert!(ch[2].source.position > ch[1].source.position);
    assert!(heartbeat_files.iter().any(|f| **f == *ch[2].source.file), "{heartbeat_files:?}");
    src.close().await.unwrap();
    db.drop().await;
}

/// TLS against a server started with `--ssl-ca/--ssl-cert/--ssl-key`:
/// `dev/services` starts MariaDB so and exports its CA as `LABLAKE_MYSQL_TLS_CA`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes() {
    // `dev/services env` always sets it; a stack without a test CA (e.g. docker/) says so here.
    let Ok(ca) = std::env::var("LABLAKE_MYSQL_TLS_CA") else {
        eprintln!("LABLAKE_MYSQL_TLS_CA is not set: TLS modes NOT tested (dev/services provides a test CA)");
        return;
    };
    let db = test_db().await;
    for tls in [
        r#","tls":{"mode":"required"}"#.to_owned(),
        format!(r#","tls":{{"mode":"verify-ca","ca_file":"{ca}"}}"#),
        format!(r#","tls":{{"mode":"verify-identity","ca_file":"{ca}"}}"#),
    ] {
        let mut src = MysqlSource::start(config(&db.name, &tls), None).await.unwrap_or_else(|e| panic!("{tls}: {e}"));
        let _ = next(&mut src).await;
        src.close().await.unwrap();
    }
    // Without the CA file only the built-in roots are trusted: the test CA is refused.
    let wrong = r#","tls":{"mode":"verify-identity"}"#;
    let err = MysqlSource::start(config(&db.name, wrong), None).await.err().expect("self-signed CA must be refused");
    assert!(matches!(&err, MysqlError::Config { key, .. } if key == "tls"), "{err}");
    assert!(!err.is_retryable());
    db.drop().await;
}
