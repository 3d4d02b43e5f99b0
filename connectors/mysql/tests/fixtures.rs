//! Decodes every binlog file of the shared fixture folder
//! (`../shared/fixtures/mysql-binlogs`, or `$LABLAKE_FIXTURES`) through the
//! same reader and decoder the live source uses, and checks concrete values.
//!
//! Files written with `binlog_row_metadata=MINIMAL` get the information_schema
//! data the live reader would fetch, written here from the CREATE TABLE
//! statements found in the same files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use lablake_model::tenant::{TableFilter, TenantRule};
use lablake_model::{ColumnType, Op, Resume, SourcePosition, Value};
use lablake_mysql::decode::{Cell, decode_row_images};
use lablake_mysql::mysql_binlog::events::EventData;
use lablake_mysql::{
    BinlogDecoder, BinlogFileReader, CatalogColumn, CatalogTable, DecoderConfig, Flavor, MysqlError, TableInfo,
};
use lablake_source::{SourceItem, Unresolved, UnresolvedRow};

fn fixtures_dir() -> PathBuf {
    let dir = std::env::var_os("LABLAKE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/mysql-binlogs"));
    assert!(
        dir.is_dir(),
        "the MySQL binlog fixture folder is missing: {} does not exist (expected ../shared/fixtures/mysql-binlogs \
         next to the repository, or set LABLAKE_FIXTURES)",
        dir.display()
    );
    dir
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

#[derive(Default)]
struct Run {
    items: Vec<SourceItem>,
    errors: Vec<MysqlError>,
}

impl Run {
    /// The rows the decoder could not decode (sent to a dead-letter topic).
    fn unresolved(&self) -> Vec<&Unresolved> {
        self.items.iter().filter_map(|i| if let SourceItem::Unresolved(u) = i { Some(u) } else { None }).collect()
    }

    fn changes(&self) -> Vec<&lablake_model::ChangeEvent> {
        self.items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Change(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn commits(&self) -> Vec<(&Resume, &SourcePosition)> {
        self.items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Commit { resume, position, .. } => Some((resume, position)),
                _ => None,
            })
            .collect()
    }

    /// Positions of changes and commits never go backwards.
    fn assert_ordered(&self) {
        let mut last: Option<&SourcePosition> = None;
        for i in &self.items {
            let p = match i {
                SourceItem::Change(c) => &c.source.position,
                SourceItem::Commit { position, .. } => position,
                _ => continue,
            };
            if let Some(l) = last {
                assert!(p > l, "{p} after {l}");
            }
            last = Some(p);
        }
    }
}

/// `(file, pos, gtid)` of a binlog resume point.
fn binlog(r: &Resume) -> (&str, u64, Option<&str>) {
    match r {
        Resume::Binlog { file, pos, gtid } => (file, *pos, gtid.as_deref()),
        Resume::Lsn(_) => panic!("a MySQL source resumes from binlog coordinates: {r:?}"),
    }
}

fn col(name: &str, data_type: &str, column_type: &str, charset: Option<&str>) -> CatalogColumn {
    CatalogColumn {
        name: name.into(),
        data_type: data_type.into(),
        column_type: column_type.into(),
        charset: charset.map(Into::into),
        is_json: data_type == "json",
        nullable: true,
    }
}

fn catalog(columns: Vec<CatalogColumn>, pk: &[&str]) -> CatalogTable {
    CatalogTable { columns, primary_key: pk.iter().map(|s| (*s).to_owned()).collect() }
}

fn decoder(name: &str, exclude: &[&str]) -> BinlogDecoder {
    let cfg = DecoderConfig {
        source_name: "fixture".into(),
        tenant: TenantRule::schema_pattern("{tenant}").unwrap(),
        filter: TableFilter::new(&[], &exclude.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap(),
        signal: None,
    };
    // Files without a numeric extension are read as if named `fixture.000001`.
    let file = if lablake_model::position::binlog_file_seq(name).is_some() { name } else { "fixture.000001" };
    BinlogDecoder::new(cfg, file, None).unwrap()
}

/// Reads a fixture through `BinlogFileReader` + `BinlogDecoder`; decoding
/// errors are collected and the next event is processed, as a tool would.
fn run_with(name: &str, catalogs: &[(&str, &str, CatalogTable)], exclude: &[&str]) -> Run {
    let data = read(name);
    let mut dec = decoder(name, exclude);
    let mut out = Run::default();
    let reader = match BinlogFileReader::new(name, &data) {
        Ok(r) => r,
        Err(e) => {
            out.errors.push(e);
            return out;
        }
    };
    for ev in reader {
        match ev {
            Ok((_, ev)) => {
                // As the live reader does: answer information_schema requests
                // (here from the fixture's known CREATE TABLE statements).
                if let Ok(Some(req)) = dec.catalog_request(&ev)
                    && let Some((_, _, c)) = catalogs.iter().find(|(d, t, _)| *d == req.database && *t == req.table)
                {
                    dec.put_catalog(&req.database, &req.table, c.clone());
                }
                if let Err(e) = dec.push(&ev) {
                    out.errors.push(e);
                }
                while let Some(i) = dec.pop() {
                    out.items.push(i);
                }
            }
            Err(e) => out.errors.push(e),
        }
    }
    if std::env::var_os("FIXTURE_DEBUG").is_some() {
        println!("===== {name}");
        for i in &out.items {
            println!("  {i:?}");
        }
        for e in &out.errors {
            println!("  ERROR {e}");
        }
    }
    out
}

fn run(name: &str) -> Run {
    run_with(name, &[], &[])
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn json(v: &str) -> Value {
    Value::Json(v.into())
}

const DIGITS_100: &str =
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";
const DIGITS_300: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456780123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456780123456789012345678901234567890123456789";

#[test]
fn every_fixture_is_read_without_panicking() {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".md") && !n.starts_with("LICENSE"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "expected the full fixture set, found {names:?}");
    for name in &names {
        let r = run(name);
        r.assert_ordered();
        // Every error names where it happened and never carries row values.
        for e in &r.errors {
            assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn json_binary_to_canonical_text() {
    let t = catalog(
        vec![
            col("id", "int", "int", None),
            col("json_col", "json", "json", None),
            col("name", "varchar", "varchar(100)", Some("utf8mb4")),
            col("age", "int", "int", None),
        ],
        &["id"],
    );
    let r = run_with("json.binlog.000001", &[("mysql", "t", t)], &[]);
    let ch = r.changes();
    let inserts: Vec<_> = ch.iter().filter(|c| c.op == Op::Create).collect();
    assert_eq!(inserts.len(), 6);
    assert_eq!(
        inserts[0].after.as_deref().unwrap(),
        &[Value::Int(1), json(r#"{"age":24,"data":"xxxxxxxxxx","name":"Joe"}"#), s("Joe"), Value::Int(24)]
    );
    assert_eq!(inserts[0].schema.columns[1].ty, ColumnType::Json);
    assert_eq!(&*inserts[0].table.tenant, "mysql");
    assert_eq!(inserts[0].source.position, SourcePosition::mysql(1, 1164, 0));
    assert_eq!(inserts[5].after.as_deref().unwrap()[1], json(r#"{"age":40,"data":"zzzzzzzzzz","name":"Pete"}"#));
    // Full-image update of six rows: the JSON document changes as a whole.
    let updates: Vec<_> = ch.iter().filter(|c| c.op == Op::Update).collect();
    assert_eq!(updates.len(), 6);
    assert_eq!(updates[0].before.as_deref().unwrap()[1], json(r#"{"age":24,"data":"xxxxxxxxxx","name":"Joe"}"#));
    assert_eq!(updates[0].after.as_deref().unwrap()[1], json(r#"{"age":25,"data":"xxxxxxxxxx","name":"Joe"}"#));
    assert_eq!(updates[5].source.position, SourcePosition::mysql(1, 3496, 5));
    // The PARTIAL_UPDATE_ROWS event was written with binlog_row_image=MINIMAL:
    // the before image holds only `id`, so the JSON diff cannot be applied.
    // Each of its six rows goes to the dead-letter topic; the stream goes on.
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let unresolved = r.unresolved();
    assert_eq!(unresolved.len(), 6);
    for (i, u) in unresolved.iter().enumerate() {
        assert_eq!(u.table, "mysql.t");
        assert!(u.reason.contains("json_col") && u.reason.contains("binlog_row_image must be FULL"), "{}", u.reason);
        let UnresolvedRow::Raw(raw) = &u.row else { panic!("{:?}", u.row) };
        let raw: serde_json::Value = serde_json::from_str(raw).unwrap();
        assert_eq!(raw["row_index"], i);
    }
    // One position per row, in order.
    let positions: Vec<&str> = unresolved.iter().map(|u| u.position.as_str()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(r.commits().len(), 8);
    r.assert_ordered();
}

#[test]
fn json_opaque_scalars_render_like_mysql() {
    let r = run("json-opaque.binlog");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let got: Vec<Value> = r.changes().iter().map(|c| c.after.as_deref().unwrap()[0].clone()).collect();
    assert_eq!(
        got,
        vec![
            json(r#"{"a":"base64:type15:VQ=="}"#),
            json(r#"{"b":"2012-03-18"}"#),
            json(r#"{"c":"2012-03-18 11:30:45.000000"}"#),
            json(r#"{"c":"87:31:46.654321"}"#),
            json(r#"{"d":123.456}"#),
            json(r#"{"e":9.00}"#),
            json(r#"{"e":[0,1,true,false]}"#),
            json(r#"{"e":null}"#),
        ]
    );
}

#[test]
fn enum_and_set_labels() {
    let r = run("mysql-enum-string-set.000001");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ch = r.changes();
    assert_eq!(ch.len(), 3);
    let first =
        [s(DIGITS_100), s(DIGITS_300), Value::Enum("var1".into()), Value::Set("one,three".into()), s("0123456789")];
    let second =
        [s("field1"), s("field_2"), Value::Enum("variant2".into()), Value::Set("two,four".into()), s(DIGITS_300)];
    assert_eq!(ch[0].op, Op::Create);
    assert_eq!(ch[0].after.as_deref().unwrap(), &first[..]);
    assert_eq!(ch[1].op, Op::Update);
    assert_eq!(ch[1].before.as_deref().unwrap(), &first[..]);
    assert_eq!(ch[1].after.as_deref().unwrap(), &second[..]);
    assert_eq!(ch[2].op, Op::Delete);
    assert_eq!(ch[2].before.as_deref().unwrap(), &second[..]);
    assert!(ch[2].after.is_none());
    let types: Vec<_> = ch[0].schema.columns.iter().map(|c| c.ty.clone()).collect();
    assert_eq!(
        types,
        vec![ColumnType::String, ColumnType::String, ColumnType::Enum, ColumnType::Set, ColumnType::String]
    );
    // No primary key: every column is the key.
    assert_eq!(ch[0].schema.primary_key, vec![0, 1, 2, 3, 4]);
    assert_eq!(ch[0].source.gtid.as_deref(), Some("93e95066-a2f4-11ec-9b69-9657f0ae95e2:3"));
}

#[test]
fn bit_columns_are_big_endian_bytes() {
    let r = run("mysql_type_bit.000001");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ch = r.changes();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].after.as_deref().unwrap(), &[Value::Bit(vec![0b100]), s("foo"), Value::Bit(vec![0b0010_0000])]);
    assert_eq!(ch[0].schema.columns[0].ty, ColumnType::Bit { bits: 3 });
    assert_eq!(ch[0].schema.columns[2].ty, ColumnType::Bit { bits: 8 });
}

#[test]
fn transaction_payload_is_decompressed_and_decoded() {
    // binlog_transaction_compression=ON (zstd), table map with minimal metadata.
    let t = catalog(vec![col("c1", "int", "int", None)], &[]);
    let r = run_with("transaction_compression.000001", &[("test", "tb1", t)], &[]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ch = r.changes();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].after.as_deref().unwrap(), &[Value::Int(1)]);
    assert_eq!((&*ch[0].table.database, &*ch[0].table.table), ("test", "tb1"));
    // Events inside the payload carry no positions: they take the payload's
    // end position and a running row index; the commit sorts after them.
    assert_eq!(ch[0].source.position, SourcePosition::mysql(1, 431, 0));
    let commits = r.commits();
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0].0, &Resume::Binlog { file: "transaction_compression.000001".into(), pos: 431, gtid: None });
    assert_eq!(commits[0].1, &SourcePosition::mysql(1, 431, 1));
    // The rotate at the end lets the checkpoint move to the next file.
    assert!(matches!(
        r.items.last(),
        Some(SourceItem::Heartbeat { resume: Resume::Binlog { file, pos: 4, .. } }) if file == "binlog.000043"
    ));
}

#[test]
fn gtid_is_attached_to_commits_and_changes() {
    let r = run("binlog_transaction_with_GTID.000001");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let uuid = "006c2cf2-b1ea-11e4-9057-8c705a3d3e78";
    let commits: Vec<_> = r.commits().into_iter().map(|(r, _)| (binlog(r).1, binlog(r).2.map(str::to_owned))).collect();
    // CREATE TABLE (standalone DDL), BEGIN/INSERT/COMMIT (statement based), DROP TABLE.
    assert_eq!(
        commits,
        vec![(297, Some(format!("{uuid}:1"))), (603, Some(format!("{uuid}:2"))), (766, Some(format!("{uuid}:3"))),]
    );
    // Row changes carry the GTID of their transaction (MySQL 8 file).
    let r = run("binlog-invisible-columns.000001");
    let ch = r.changes();
    assert_eq!(ch.len(), 3);
    assert_eq!(ch[0].source.gtid.as_deref(), Some("97c7af02-4c50-11ec-acd8-681842034964:3"));
    assert_eq!(ch[2].source.gtid.as_deref(), Some("97c7af02-4c50-11ec-acd8-681842034964:5"));
    // Invisible columns are ordinary columns of the image.
    assert_eq!(
        ch[0].after.as_deref().unwrap(),
        &[Value::UInt(1), Value::UInt(2), Value::Int(-3), s("4"), Value::Bytes(vec![5]), Value::UInt(6_000_000_000)]
    );
    // Commit time from the GTID event (microseconds) rather than the header (seconds).
    assert_eq!(ch[0].source.ts_ms, 1_637_667_166_684);
}

#[test]
fn partial_row_images_go_to_the_dead_letter_topic_with_their_bytes() {
    // 5.1 binlogs: no optional metadata, binlog_row_image=MINIMAL.
    let ba = || {
        catalog(vec![col("a", "int", "int", None), col("b", "int", "int", None), col("c", "int", "int", None)], &["a"])
    };
    for name in ["update-partial-row.binlog", "write-partial-row.binlog"] {
        let r = run_with(name, &[("test", "ba", ba())], &["mysql.*"]);
        let ch = r.changes();
        assert_eq!(ch.len(), 4, "{name}");
        assert_eq!(ch[1].after.as_deref().unwrap(), &[Value::Int(1), Value::Int(1), Value::Int(1)]);
        // The rows that cannot be completed do not stop the stream: each is an
        // unresolved item carrying the events' bytes to decode it again.
        assert!(r.errors.is_empty(), "{name}: {:?}", r.errors);
        let unresolved = r.unresolved();
        assert_eq!(unresolved.len(), 2, "{name}");
        for u in unresolved {
            assert_eq!(u.table, "test.ba");
            assert!(u.reason.contains("`b`") || u.reason.contains(" b"), "{}", u.reason);
            assert!(u.reason.contains("binlog_row_image must be FULL"), "{}", u.reason);
            let UnresolvedRow::Raw(raw) = &u.row else { panic!("{:?}", u.row) };
            let raw: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(raw["format"], "mysql-rows-event/1");
            assert_eq!(raw["table"], "test.ba");
            assert_eq!(raw["columns"].as_array().map(Vec::len), Some(3));
            // The rows event's bytes are there and parse again as the rows event.
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let rows = b64.decode(raw["rows_event"].as_str().unwrap()).unwrap();
            let table_map = b64.decode(raw["table_map"].as_str().unwrap()).unwrap();
            assert!(!rows.is_empty() && !table_map.is_empty());
        }
    }
    // The full-image variant decodes its inserts and its update; its delete
    // still logs only the key.
    let r = run_with("update-full-row.binlog", &[("test", "ba", ba())], &["mysql.*"]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.unresolved().len(), 1);
    let ops: Vec<Op> = r.changes().iter().map(|c| c.op).collect();
    assert_eq!(ops, vec![Op::Create, Op::Create, Op::Create, Op::Create, Op::Update]);
    let upd = r.changes()[4];
    assert_eq!(upd.before.as_deref().unwrap(), &[Value::Int(4), Value::Int(4), Value::Int(4)]);
    assert_eq!(upd.after.as_deref().unwrap(), &[Value::Int(4), Value::Int(4), Value::Int(40)]);
    assert_eq!(binlog(r.commits()[0].0).0, "fixture.000001");
}

#[test]
fn negative_time() {
    let t = catalog(vec![col("t", "time", "time", None)], &[]);
    let r = run_with("time_issue.000001", &[("noria", "t", t)], &[]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ch = r.changes();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].after.as_deref().unwrap(), &[Value::Time(-(507 * 3600 + 48 * 60 + 27) * 1_000_000)]);
    assert_eq!(ch[0].schema.columns[0].ty, ColumnType::Time);
}

#[test]
fn minimal_metadata_needs_information_schema() {
    // Without information_schema data: a clear error naming the table.
    let r = run("minimal_row_metadata.000001");
    assert!(r.changes().is_empty());
    assert_eq!(r.errors.len(), 1);
    match &r.errors[0] {
        MysqlError::MissingMetadata { table, reason } => {
            assert_eq!(table, "noria.t1");
            assert!(reason.contains("column names"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The live reader asks for exactly this table.
    let data = read("minimal_row_metadata.000001");
    let mut dec = decoder("minimal_row_metadata.000001", &[]);
    let mut requests = Vec::new();
    let mut tme = None;
    let mut images = Vec::new();
    let t1 = catalog(
        vec![
            col("id", "int", "int", None),
            col("b", "blob", "blob", None),
            col("c", "char", "char(2)", Some("utf8mb4")),
            col("d", "int", "int", None),
            col("e", "int", "int unsigned", None),
        ],
        &["id"],
    );
    for ev in BinlogFileReader::new("minimal_row_metadata.000001", &data).unwrap() {
        let (_, ev) = ev.unwrap();
        if let Some(req) = dec.catalog_request(&ev).unwrap() {
            requests.push(req);
        }
        assert!(dec.push(&ev).is_err() == (ev.header().event_type_raw() == 30));
        match ev.read_data().unwrap() {
            Some(EventData::TableMapEvent(t)) => tme = Some(t.into_owned()),
            Some(EventData::RowsEvent(rows)) => {
                // Signedness and charsets are in MINIMAL metadata; names come
                // from information_schema. The image lacks two columns
                // (binlog_row_image=MINIMAL), which the low-level API shows.
                let info = TableInfo::from_table_map(tme.as_ref().unwrap(), Some(&t1), Flavor::MySql).unwrap();
                assert_eq!(info.schema.columns[4].ty, ColumnType::Int { bytes: 4, unsigned: true });
                assert_eq!(info.schema.columns[1].ty, ColumnType::Bytes);
                images = decode_row_images(&info, &rows).unwrap();
            }
            _ => {}
        }
    }
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].database.as_str(), requests[0].table.as_str(), requests[0].required),
        ("noria", "t1", true)
    );
    assert_eq!(images.len(), 1);
    assert_eq!(
        images[0].after.as_deref().unwrap(),
        &[
            Cell::Value(Value::Int(1)),
            Cell::Absent,
            Cell::Value(s("a")),
            Cell::Absent,
            Cell::Value(Value::UInt(3_230_202_323))
        ]
    );
}

#[test]
fn truncated_file_is_an_error_not_a_panic() {
    let r = run("binlog_truncated_event.000001");
    assert!(r.items.is_empty());
    assert_eq!(r.errors.len(), 1);
    assert!(matches!(&r.errors[0], MysqlError::Protocol { reason, .. } if reason.contains("truncated")));
    // Every prefix of every fixture: errors at the cut, never a panic.
    for name in ["mariadb-bin.000001", "json.binlog.000001", "transaction_compression.000001", "vector.binlog"] {
        let data = read(name);
        for cut in (0..data.len()).step_by(3) {
            let mut dec = decoder(name, &[]);
            if let Ok(reader) = BinlogFileReader::new(name, &data[..cut]) {
                for ev in reader {
                    match ev {
                        Ok((_, ev)) => {
                            let _ = dec.push(&ev);
                        }
                        Err(e) => assert!(matches!(e, MysqlError::Protocol { .. })),
                    }
                }
            }
        }
    }
}

/// Event boundaries of a binlog file and whether each event's trailing CRC32 is valid.
fn events(data: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    let mut pos = 4;
    while pos + 19 <= data.len() {
        let size = u32::from_le_bytes([data[pos + 9], data[pos + 10], data[pos + 11], data[pos + 12]]) as usize;
        if size < 23 || pos + size > data.len() {
            break;
        }
        let body = &data[pos..pos + size - 4];
        let crc = &data[pos + size - 4..pos + size];
        let ok = crc32(body) == u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        out.push((pos, size, ok));
        pos += size;
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for b in bytes {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    c ^ 0xffff_ffff
}

#[test]
fn corrupted_bytes_never_panic() {
    // Deterministic byte mutations of every fixture. Checksums are fixed up
    // after mutating so the garbage reaches the event and value parsers.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let iters: usize = std::env::var("FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    for e in std::fs::read_dir(fixtures_dir()).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") || name.starts_with("LICENSE") {
            continue;
        }
        let data = read(&name);
        let bounds = events(&data);
        if bounds.is_empty() {
            continue;
        }
        for _ in 0..iters {
            let mut m = data.clone();
            let (start, size, checksummed) = bounds[(next() as usize) % bounds.len()];
            for _ in 0..1 + next() % 3 {
                let off = (next() as usize) % size;
                if (9..13).contains(&off) {
                    continue; // keep event boundaries
                }
                m[start + off] = next() as u8;
            }
            if checksummed && bounds.iter().filter(|b| b.2).count() > 0 {
                for (p, sz, ok) in &bounds {
                    if *ok {
                        let crc = crc32(&m[*p..p + sz - 4]).to_le_bytes();
                        m[p + sz - 4..p + sz].copy_from_slice(&crc);
                    }
                }
            }
            let mut dec = decoder(&name, &[]);
            if let Ok(reader) = BinlogFileReader::new(&name, &m) {
                for ev in reader.flatten() {
                    let _ = dec.catalog_request(&ev.1);
                    let _ = dec.push(&ev.1);
                    while dec.pop().is_some() {}
                }
            }
        }
    }
}

#[test]
fn mariadb_full_metadata_and_gtids() {
    let r = run("mariadb-bin.000001");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ch = r.changes();
    assert_eq!(ch.len(), 2);
    assert_eq!(
        ch[0].after.as_deref().unwrap(),
        &[
            Value::Int(62),
            s("foo"),
            Value::Enum("JSON".into()),
            Value::Bytes(br#"{"foo":1}"#.to_vec()),
            Value::Timestamp(1_650_493_084_000_000),
        ]
    );
    let names: Vec<_> = ch[0].schema.columns.iter().map(|c| (c.name.as_str(), c.ty.clone(), c.nullable)).collect();
    assert_eq!(
        names,
        vec![
            ("id", ColumnType::Int { bytes: 4, unsigned: false }, false),
            ("topic", ColumnType::String, false),
            ("event_type", ColumnType::Enum, true),
            ("event", ColumnType::Bytes, false),
            ("created", ColumnType::Timestamp, false),
        ]
    );
    assert_eq!(ch[0].schema.primary_key, vec![0]);
    assert_eq!(ch[0].source.gtid.as_deref(), Some("0-1-1"));
    assert_eq!(ch[0].source.position, SourcePosition::mysql(1, 671, 0));
    assert_eq!(ch[0].source.ts_ms, 1_650_493_084_000);
    assert_eq!(&*ch[0].table.tenant, "toddy_test");
    assert_eq!(ch[1].after.as_deref().unwrap()[0], Value::Int(63));
    assert_eq!(ch[1].source.gtid.as_deref(), Some("0-1-2"));
    let commits = r.commits();
    assert_eq!(
        commits[0].0,
        &Resume::Binlog { file: "mariadb-bin.000001".into(), pos: 702, gtid: Some("0-1-1".into()) }
    );
    assert_eq!(
        commits[1].0,
        &Resume::Binlog { file: "mariadb-bin.000001".into(), pos: 1074, gtid: Some("0-1-2".into()) }
    );
    r.assert_ordered();
}

#[test]
fn mariadb_json_columns_come_from_information_schema() {
    // `event` is a LONGBLOB here; were it LONGTEXT with json_valid, the
    // catalog marks it JSON and the decoder emits Value::Json.
    let t = catalog(
        vec![
            col("id", "int", "int(11)", None),
            col("topic", "varchar", "varchar(255)", Some("utf8mb4")),
            col("event_type", "enum", "enum('BLOB','JSON','PROTOBUF')", Some("utf8mb4")),
            CatalogColumn { is_json: true, ..col("event", "longblob", "longblob", None) },
            col("created", "timestamp", "timestamp", None),
        ],
        &["id"],
    );
    let r = run_with("mariadb-bin.000001", &[("toddy_test", "outbox", t)], &[]);
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // Binary charset wins: bytes are never reinterpreted as JSON text.
    assert_eq!(r.changes()[0].after.as_deref().unwrap()[3], Value::Bytes(br#"{"foo":1}"#.to_vec()));
}

#[test]
fn vector_text_and_statement_files() {
    let r = run("vector.binlog");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let ch = r.changes();
    // VECTOR columns are raw float32 bytes; the TEXT column next to them keeps its charset.
    assert_eq!(
        ch[3].after.as_deref().unwrap(),
        &[
            Value::UInt(2),
            Value::Bytes(vec![174, 71, 129, 63, 174, 71, 129, 191]),
            s("bar"),
            Value::Bytes(vec![0, 0, 40, 66, 0, 0, 44, 66, 0, 0, 48, 66, 0, 0, 52, 66]),
        ]
    );
    assert_eq!(ch[3].schema.columns[2].ty, ColumnType::String);
    // Statement-based and relay-log files: transaction boundaries only.
    let r = run("binlog_transaction.000001");
    assert!(r.changes().is_empty());
    assert_eq!(r.commits().len(), 9);
    let r = run("binlog_savepoint.000001");
    assert_eq!(r.commits().len(), 1);
    assert_eq!(r.commits()[0].0, &Resume::Binlog { file: "master-bin.000003".into(), pos: 868, gtid: None });
    let r = run("rpl_cross_version_default_utf8mb4_collation.000001");
    assert!(r.errors.is_empty());
    assert_eq!(r.commits().len(), 5);
}
