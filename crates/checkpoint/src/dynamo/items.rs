//! The single-table design: keys, and how each checkpoint is encoded as an
//! item and decoded back. No I/O here.
//!
//! The crate README ("DynamoDB item layout" and "Format versions") is the
//! description of every item; change it with this file.
//!
//! * Keys: `pk` (hash) and `sk` (range), both strings. Every name inside a
//!   key with more than one component (and in the snapshot and sink keys) is
//!   escaped (`%` → `%25`, `#` → `%23`), so two different names never map to
//!   the same key; the single-name keys `lease#`, `source#`, `offsets#` and
//!   `status#` keep the name as it is (as existing deployments have them).
//!   Numbers are zero-padded decimals so they sort as strings.
//! * Every item carries `kind`, and `fmt` (N), the format it was written in
//!   ([`FORMAT`]; absent: the legacy format 0). Decoding checks `fmt` first.
//! * Values are read from attributes, never parsed back out of keys.

use std::collections::HashMap;
use std::fmt::Display;

use aws_sdk_dynamodb::types::AttributeValue;
use lablake_model::{Resume, TableId};

use super::backend;
use crate::{
    BatchCommit, BatchIntent, CheckpointError, ManifestEntry, PartitionCheckpoint, PartitionRef, SchemaVersion,
    SinkCheckpoint, SnapshotProgress, SourceCheckpoint, TableStatus,
};

pub(super) type Item = HashMap<String, AttributeValue>;

/// The format of the items this code writes, in attribute `fmt`. Items
/// without `fmt` are format 0 (written before formats existed) and are read
/// like format 1, which only added `fmt` and the source's `resume_kind`.
/// An item of a higher format is [`CheckpointError::Corrupt`]: it was written
/// by a newer Lablake, whose meaning this code does not know.
pub(super) const FORMAT: u64 = 1;

/// Sort key of a lease item.
pub(super) const LEASE_SK: &str = "lease";
/// Sort key of a tenant's generations item.
pub(super) const GENERATIONS_SK: &str = "generations";
/// Sort key of a source checkpoint item.
pub(super) const SOURCE_SK: &str = "checkpoint";

// ---- keys -----------------------------------------------------------------

/// Escapes a name used inside a composite key.
pub(super) fn esc(name: &str) -> String {
    name.replace('%', "%25").replace('#', "%23")
}

pub(super) fn lease_pk(name: &str) -> String {
    format!("lease#{name}")
}

pub(super) fn source_pk(source: &str) -> String {
    format!("source#{source}")
}

pub(super) fn partition_pk(group: &str) -> String {
    format!("offsets#{group}")
}

pub(super) fn partition_sk(topic: &str, partition: i32) -> String {
    format!("{}#{partition:010}", esc(topic))
}

/// `#g<N>` after the keys of generation `N` of a tenant's curated data
/// (ADR 0013); nothing for generation 0, whose keys are those written before
/// generations existed.
fn gen_suffix(data_gen: u32) -> String {
    if data_gen == 0 { String::new() } else { format!("#g{data_gen}") }
}

pub(super) fn manifest_pk(t: &TableId, data_gen: u32) -> String {
    format!("manifest#{}#{}#{}{}", esc(&t.tenant), esc(&t.database), esc(&t.table), gen_suffix(data_gen))
}

pub(super) fn manifest_sk(topic: &str, partition: i32, first_offset: i64) -> String {
    format!("{}#{partition:010}#{first_offset:020}", esc(topic))
}

pub(super) fn status_pk(tenant: &str, data_gen: u32) -> String {
    format!("status#{tenant}{}", gen_suffix(data_gen))
}

/// Sort key of a status row: `table == "*"` is the database aggregate.
pub(super) fn status_sk(source: &str, database: &str, table: &str) -> String {
    if table == crate::rules::ALL_TABLES {
        format!("db#{}#{}", esc(source), esc(database))
    } else {
        format!("table#{}#{}#{}", esc(source), esc(database), esc(table))
    }
}

pub(super) fn snapshot_pk(source: &str) -> String {
    format!("snapshot#{}", esc(source))
}

pub(super) fn sink_pk(sink: &str, data_gen: u32) -> String {
    format!("sink#{}{}", esc(sink), gen_suffix(data_gen))
}

/// The item of a tenant's generations (ADR 0013).
pub(super) fn generations_pk(tenant: &str) -> String {
    format!("generations#{}", esc(tenant))
}

/// Sort key of the per-table items of a source or sink (snapshot progress,
/// sink checkpoint): `<tenant>#<database>#<table>`.
pub(super) fn table_sk(t: &TableId) -> String {
    format!("{}#{}#{}", esc(&t.tenant), esc(&t.database), esc(&t.table))
}

pub(super) fn schema_pk(t: &TableId) -> String {
    format!("schema#{}#{}#{}", esc(&t.tenant), esc(&t.database), esc(&t.table))
}

pub(super) fn schema_sk(version: u32) -> String {
    format!("v{version:010}")
}

// ---- attributes -----------------------------------------------------------

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn corrupt(what: &str, attr: &str) -> CheckpointError {
    CheckpointError::Corrupt(format!("{what} (attribute `{attr}`)"))
}

/// `what` has a format newer than this code reads (`found`, if known).
pub(super) fn newer_format(what: &str, found: Option<u64>) -> CheckpointError {
    let found = found.map_or_else(|| format!("above {FORMAT}"), |f| f.to_string());
    CheckpointError::Corrupt(format!(
        "{what} was written by a newer Lablake (item format {found}; this version reads formats up to {FORMAT})"
    ))
}

pub(super) fn get_s(item: &Item, attr: &str, what: &str) -> Result<String, CheckpointError> {
    opt_s(item, attr, what)?.ok_or_else(|| corrupt(what, attr))
}

pub(super) fn opt_s(item: &Item, attr: &str, what: &str) -> Result<Option<String>, CheckpointError> {
    match item.get(attr) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
        Some(_) => Err(corrupt(what, attr)),
    }
}

pub(super) fn get_n<T: std::str::FromStr>(item: &Item, attr: &str, what: &str) -> Result<T, CheckpointError> {
    match item.get(attr) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(what, attr)),
        _ => Err(corrupt(what, attr)),
    }
}

/// The format of `item` (0: legacy, no `fmt`), if this code reads it.
pub(super) fn check_format(item: &Item, what: &str) -> Result<u64, CheckpointError> {
    match item.get("fmt") {
        None => Ok(0),
        Some(AttributeValue::N(v)) => match v.parse::<u64>() {
            Ok(f) if f <= FORMAT => Ok(f),
            Ok(f) => Err(newer_format(what, Some(f))),
            Err(_) => Err(corrupt(what, "fmt")),
        },
        Some(_) => Err(corrupt(what, "fmt")),
    }
}

/// A new item with its keys, `kind` and `fmt`.
fn new_item(pk: String, sk: String, kind: &str) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(pk));
    item.insert("sk".into(), s(sk));
    item.insert("kind".into(), s(kind));
    item.insert("fmt".into(), n(FORMAT));
    item
}

/// The value of attribute `attr` of `item`, decoded from JSON.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    item: &Item,
    attr: &str,
    what: &str,
) -> Result<T, CheckpointError> {
    check_format(item, what)?;
    let json = get_s(item, attr, what)?;
    serde_json::from_str(&json).map_err(|_| corrupt(what, attr))
}

// ---- items ------------------------------------------------------------------

/// A tenant's generations item (ADR 0013): the record as JSON in
/// `generations`, its `version` (what every save is conditional on), and the
/// id of the write.
pub(super) fn generations_item(g: &crate::Generations, version: u64, write_id: &str) -> Result<Item, CheckpointError> {
    let json = serde_json::to_string(g).map_err(|e| backend("encoding generations", e))?;
    let mut item = new_item(generations_pk(&g.tenant), GENERATIONS_SK.into(), "generations");
    item.insert("generations".into(), s(json));
    item.insert("version".into(), n(version));
    item.insert("active".into(), n(g.active));
    item.insert(super::WRITE_ID.into(), s(write_id));
    Ok(item)
}

/// The source checkpoint item. The resume point keeps the attributes of
/// format 0 (`file`, `pos`, `gtid`), so it reads the same everywhere, plus
/// `resume_kind`: `binlog`, or `lsn` with the LSN in `pos` and `file` empty.
pub(super) fn source_item(source: &str, generation: u64, cp: &SourceCheckpoint, now: i64) -> Item {
    let mut item = new_item(source_pk(source), SOURCE_SK.into(), "source");
    item.insert("source".into(), s(source));
    match &cp.resume {
        Resume::Binlog { file, pos, gtid } => {
            item.insert("resume_kind".into(), s("binlog"));
            item.insert("file".into(), s(file));
            item.insert("pos".into(), n(pos));
            if let Some(gtid) = gtid {
                item.insert("gtid".into(), s(gtid));
            }
        }
        Resume::Lsn(lsn) => {
            item.insert("resume_kind".into(), s("lsn"));
            item.insert("file".into(), s(""));
            item.insert("pos".into(), n(lsn));
        }
    }
    item.insert("position".into(), s(&cp.position));
    item.insert("commit_ts_ms".into(), n(cp.commit_ts_ms));
    item.insert("generation".into(), n(generation));
    item.insert("updated_at_ms".into(), n(now));
    item
}

/// Decodes a source checkpoint item. Without `resume_kind` (format 0, when
/// PostgreSQL sources wrote an empty `file` and the LSN as `pos`), an empty
/// `file` is an LSN and anything else binlog coordinates.
pub(super) fn parse_source(item: &Item, what: &str) -> Result<SourceCheckpoint, CheckpointError> {
    check_format(item, what)?;
    let file = get_s(item, "file", what)?;
    let pos: u64 = get_n(item, "pos", what)?;
    let binlog = |file: String| -> Result<Resume, CheckpointError> {
        Ok(Resume::Binlog { file, pos, gtid: opt_s(item, "gtid", what)? })
    };
    let resume = match opt_s(item, "resume_kind", what)?.as_deref() {
        Some("binlog") => binlog(file)?,
        Some("lsn") => Resume::Lsn(pos),
        Some(_) => return Err(corrupt(what, "resume_kind")),
        None if file.is_empty() => Resume::Lsn(pos),
        None => binlog(file)?,
    };
    Ok(SourceCheckpoint {
        resume,
        position: get_s(item, "position", what)?,
        commit_ts_ms: get_n(item, "commit_ts_ms", what)?,
    })
}

pub(super) fn partition_item(p: &PartitionRef, cp: &PartitionCheckpoint, now: i64) -> Item {
    let mut item = new_item(partition_pk(&p.group), partition_sk(&p.topic, p.partition), "partition");
    item.insert("group".into(), s(&p.group));
    item.insert("topic".into(), s(&p.topic));
    item.insert("partition".into(), n(p.partition));
    item.insert("next_offset".into(), n(cp.next_offset));
    item.insert("generation".into(), n(cp.generation));
    item.insert("version".into(), n(cp.version));
    if let Some(pending) = &cp.pending {
        item.insert("pending_first".into(), n(pending.first_offset));
        item.insert("pending_last".into(), n(pending.last_offset));
        item.insert("pending_key".into(), s(&pending.object_key));
    }
    if let Some(hw) = &cp.high_water {
        // JSON (a few keys at most): {"position": …, "keys": [hex, …]}.
        item.insert("high_water".into(), s(serde_json::to_string(hw).unwrap_or_default()));
    }
    item.insert("updated_at_ms".into(), n(now));
    item
}

pub(super) fn parse_partition(item: &Item, what: &str) -> Result<PartitionCheckpoint, CheckpointError> {
    check_format(item, what)?;
    let pending = match opt_s(item, "pending_key", what)? {
        Some(object_key) => Some(BatchIntent {
            first_offset: get_n(item, "pending_first", what)?,
            last_offset: get_n(item, "pending_last", what)?,
            object_key,
        }),
        None => None,
    };
    let high_water = match opt_s(item, "high_water", what)? {
        Some(json) => {
            Some(serde_json::from_str(&json).map_err(|_| CheckpointError::Corrupt(format!("{what}: high_water")))?)
        }
        None => None,
    };
    Ok(PartitionCheckpoint {
        next_offset: get_n(item, "next_offset", what)?,
        pending,
        generation: get_n(item, "generation", what)?,
        version: get_n(item, "version", what)?,
        high_water,
    })
}

/// The manifest entry of a committed batch of `p`.
pub(super) fn manifest_item(p: &PartitionRef, commit: &BatchCommit, generation: u64, data_gen: u32, now: i64) -> Item {
    let (t, intent) = (&commit.table, &commit.intent);
    let mut item =
        new_item(manifest_pk(t, data_gen), manifest_sk(&p.topic, p.partition, intent.first_offset), "manifest");
    item.insert("tenant".into(), s(&*t.tenant));
    item.insert("database".into(), s(&*t.database));
    item.insert("table".into(), s(&*t.table));
    item.insert("source".into(), s(&commit.source));
    item.insert("topic".into(), s(&p.topic));
    item.insert("partition".into(), n(p.partition));
    item.insert("first_offset".into(), n(intent.first_offset));
    item.insert("last_offset".into(), n(intent.last_offset));
    item.insert("object_key".into(), s(&intent.object_key));
    item.insert("rows".into(), n(commit.rows));
    item.insert("bytes".into(), n(commit.bytes));
    item.insert("generation".into(), n(generation));
    item.insert("committed_at_ms".into(), n(now));
    item
}

pub(super) fn parse_manifest(item: &Item, what: &str) -> Result<ManifestEntry, CheckpointError> {
    check_format(item, what)?;
    Ok(ManifestEntry {
        topic: get_s(item, "topic", what)?,
        partition: get_n(item, "partition", what)?,
        first_offset: get_n(item, "first_offset", what)?,
        last_offset: get_n(item, "last_offset", what)?,
        object_key: get_s(item, "object_key", what)?,
        rows: get_n(item, "rows", what)?,
        bytes: get_n(item, "bytes", what)?,
    })
}

/// A status row (written by `UpdateItem`, see `DynamoStore::status_update`).
pub(super) fn parse_status(item: &Item, what: &str) -> Result<TableStatus, CheckpointError> {
    check_format(item, what)?;
    Ok(TableStatus {
        tenant: get_s(item, "tenant", what)?,
        source: get_s(item, "source", what)?,
        database: get_s(item, "database", what)?,
        table: get_s(item, "table", what)?,
        rows: get_n(item, "rows", what)?,
        files: get_n(item, "files", what)?,
        dead_lettered: get_n(item, "dead_lettered", what)?,
        max_commit_ts_ms: get_n(item, "max_commit_ts_ms", what)?,
        max_position: get_s(item, "max_position", what)?,
        updated_at_ms: get_n(item, "updated_at_ms", what)?,
    })
}

/// Snapshot progress: the JSON in `progress`, the request number also in
/// `request` (N) for conditions.
pub(super) fn snapshot_item(source: &str, p: &SnapshotProgress, now: i64) -> Result<Item, CheckpointError> {
    let json = serde_json::to_string(p).map_err(|e| backend("encoding snapshot progress", e))?;
    let mut item = new_item(snapshot_pk(source), table_sk(&p.table), "snapshot");
    item.insert("source".into(), s(source));
    item.insert("request".into(), n(p.request));
    item.insert("state".into(), s(p.state.as_str()));
    item.insert("progress".into(), s(json));
    item.insert("updated_at_ms".into(), n(now));
    Ok(item)
}

/// A sink checkpoint: the JSON in `checkpoint`.
pub(super) fn sink_item(
    sink: &str,
    generation: u64,
    data_gen: u32,
    cp: &SinkCheckpoint,
    now: i64,
) -> Result<Item, CheckpointError> {
    let json = serde_json::to_string(cp).map_err(|e| backend("encoding a sink checkpoint", e))?;
    let mut item = new_item(sink_pk(sink, data_gen), table_sk(&cp.table), "sink");
    item.insert("checkpoint".into(), s(json));
    item.insert("generation".into(), n(generation));
    item.insert("updated_at_ms".into(), n(now));
    Ok(item)
}

/// A schema history entry: the JSON in `entry`.
pub(super) fn schema_item(table: &TableId, entry: &SchemaVersion) -> Result<Item, CheckpointError> {
    let json = serde_json::to_string(entry).map_err(|e| backend("encoding a schema version", e))?;
    let mut item = new_item(schema_pk(table), schema_sk(entry.version), "schema");
    item.insert("fingerprint".into(), s(&entry.fingerprint));
    item.insert("entry".into(), s(json));
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_and_do_not_collide() {
        assert_eq!(partition_sk("acme.changes", 3), "acme.changes#0000000003");
        assert_eq!(manifest_sk("t", 1, 42), "t#0000000001#00000000000000000042");
        assert!(manifest_sk("t", 1, 9) < manifest_sk("t", 1, 10));
        assert!(manifest_sk("t", 9, 100) < manifest_sk("t", 10, 0));
        let a = TableId::new("x", "a#b", "c");
        let b = TableId::new("x", "a", "b#c");
        assert_ne!(manifest_pk(&a, 0), manifest_pk(&b, 0));
        assert_ne!(manifest_pk(&a, 0), manifest_pk(&a, 1));
        assert_ne!(table_sk(&a), table_sk(&b));
        assert_eq!(esc("50%#"), "50%25%23");
        assert_eq!(status_sk("s", "d", "*"), "db#s#d");
        assert_eq!(status_sk("s#1", "d", "t"), "table#s%231#d#t");
        assert_eq!(schema_sk(7), "v0000000007");
    }

    fn checkpoint(resume: Resume) -> SourceCheckpoint {
        SourceCheckpoint { resume, position: "p1".into(), commit_ts_ms: -5 }
    }

    #[test]
    fn source_items_round_trip_both_resume_kinds() {
        for resume in [
            Resume::Binlog { file: "binlog.000007".into(), pos: 1234, gtid: Some("0-1-42".into()) },
            Resume::Binlog { file: "binlog.000008".into(), pos: u64::MAX, gtid: None },
            // GTID only: an empty file is still binlog when `resume_kind` says so.
            Resume::Binlog { file: String::new(), pos: 0, gtid: Some("0-1-42".into()) },
            Resume::Lsn(0),
            Resume::Lsn(u64::MAX),
        ] {
            let cp = checkpoint(resume);
            let item = source_item("src", 3, &cp, 9);
            assert_eq!(item.get("fmt"), Some(&n(FORMAT)));
            assert_eq!(parse_source(&item, "source checkpoint").expect("parse"), cp);
        }
        // An LSN keeps the format-0 attributes: empty `file`, the LSN in `pos`.
        let item = source_item("src", 3, &checkpoint(Resume::Lsn(77)), 9);
        assert_eq!((item.get("file"), item.get("pos"), item.get("gtid")), (Some(&s("")), Some(&n(77)), None));
    }

    /// An item as the previous version wrote it: no `fmt`, no `resume_kind`.
    fn legacy_source(file: &str, pos: u64, gtid: Option<&str>) -> Item {
        let mut item = Item::new();
        for (k, v) in [
            ("pk", s("source#src")),
            ("sk", s("checkpoint")),
            ("kind", s("source")),
            ("source", s("src")),
            ("file", s(file)),
            ("pos", n(pos)),
            ("position", s("p1")),
            ("commit_ts_ms", n(-5)),
            ("generation", n(2)),
            ("updated_at_ms", n(1)),
        ] {
            item.insert(k.into(), v);
        }
        if let Some(g) = gtid {
            item.insert("gtid".into(), s(g));
        }
        item
    }

    #[test]
    fn legacy_source_items_read_as_lsn_when_file_is_empty() {
        assert_eq!(parse_source(&legacy_source("", 4242, None), "w").expect("pg"), checkpoint(Resume::Lsn(4242)));
        let gtid = Some("0-1-9".to_owned());
        assert_eq!(
            parse_source(&legacy_source("binlog.000003", 154, Some("0-1-9")), "w").expect("mysql"),
            checkpoint(Resume::Binlog { file: "binlog.000003".into(), pos: 154, gtid })
        );
        let mut odd = legacy_source("binlog.000003", 154, None);
        odd.insert("resume_kind".into(), s("scn"));
        assert!(matches!(parse_source(&odd, "w"), Err(CheckpointError::Corrupt(m)) if m.contains("resume_kind")));
    }

    #[test]
    fn newer_formats_are_refused_and_legacy_is_read() {
        let mut item = legacy_source("", 1, None);
        assert_eq!(check_format(&item, "w").expect("legacy"), 0);
        item.insert("fmt".into(), n(FORMAT));
        assert_eq!(check_format(&item, "w").expect("current"), FORMAT);
        item.insert("fmt".into(), n(FORMAT + 1));
        match parse_source(&item, "source checkpoint `src`") {
            Err(CheckpointError::Corrupt(m)) => {
                assert!(m.contains("source checkpoint `src`") && m.contains("newer Lablake"), "{m}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        for garbage in [n("1.5"), n("-1"), s("1")] {
            item.insert("fmt".into(), garbage);
            assert!(matches!(check_format(&item, "w"), Err(CheckpointError::Corrupt(m)) if m.contains("`fmt`")));
        }
    }

    #[test]
    fn every_decoder_checks_the_format() {
        let p = PartitionRef::new("g", "t", 0);
        let cp = PartitionCheckpoint { next_offset: 1, pending: None, generation: 1, version: 1, high_water: None };
        let newer = |mut item: Item| {
            item.insert("fmt".into(), n(FORMAT + 1));
            item
        };
        let table = TableId::new("t", "d", "x");
        let commit = BatchCommit {
            intent: BatchIntent { first_offset: 0, last_offset: 0, object_key: "k".into() },
            table: table.clone(),
            source: "s".into(),
            rows: 1,
            bytes: 1,
            dead_lettered: 0,
            max_commit_ts_ms: 0,
            max_position: String::new(),
            high_water: None,
        };
        let snapshot = snapshot_item("s", &SnapshotProgress::requested(&table, 1, 0), 0).expect("snapshot");
        let sink = sink_item("k", 1, 0, &SinkCheckpoint::new(&table), 0).expect("sink");
        assert_eq!(parse_partition(&partition_item(&p, &cp, 0), "w").expect("partition"), cp);
        assert!(parse_json::<SnapshotProgress>(&snapshot, "progress", "w").is_ok());
        assert!(parse_json::<SinkCheckpoint>(&sink, "checkpoint", "w").is_ok());
        let corrupt =
            |r: Result<(), CheckpointError>| matches!(r, Err(CheckpointError::Corrupt(m)) if m.contains("newer"));
        assert!(corrupt(parse_partition(&newer(partition_item(&p, &cp, 0)), "w").map(|_| ())));
        assert!(corrupt(parse_manifest(&newer(manifest_item(&p, &commit, 1, 0, 0)), "w").map(|_| ())));
        assert!(corrupt(parse_json::<SnapshotProgress>(&newer(snapshot), "progress", "w").map(|_| ())));
        assert!(corrupt(parse_json::<SinkCheckpoint>(&newer(sink), "checkpoint", "w").map(|_| ())));
        let mut status = Item::new();
        status.insert("fmt".into(), n(FORMAT + 1));
        assert!(corrupt(parse_status(&status, "w").map(|_| ())));
    }

    #[test]
    fn legacy_json_items_read() {
        // A sink item as the previous version wrote it (no `fmt`).
        let mut item = Item::new();
        item.insert("kind".into(), s("sink"));
        item.insert(
            "checkpoint".into(),
            s(r#"{"table":{"tenant":"t","database":"d","table":"x"},"next":{"a#0":5},"files":1,"rows":5,"max_commit_ts_ms":3,"updated_ms":4}"#),
        );
        let cp: SinkCheckpoint = parse_json(&item, "checkpoint", "w").expect("legacy sink");
        assert!(cp.has_loaded("a", 0, 4) && cp.table == TableId::new("t", "d", "x"));
    }
}
