//! The conformance suite of [`ChangeSource`], [`Snapshotter`] and
//! [`Connector`]: one set of checks every connector's live tests run against
//! a real server (`connectors/*/tests/conformance.rs`), so the MySQL and the
//! PostgreSQL source keep the same contract by construction.
//!
//! Each check is a `pub async fn` over a [`Fixture`] (the server, a tenant
//! naming, SQL in the server's dialect) and panics, like test code, with a
//! message naming what broke. [`run_all`] runs every check. Servers are
//! shared with other tests: items of other tests' transactions (commits
//! without changes of this fixture's tables, heartbeats) are skipped, never
//! counted.

#![allow(clippy::panic)]

use std::future::Future;
use std::time::Duration;

use lablake_model::{ChangeEvent, Op, SourcePosition, TableId, Value};

use crate::{ChangeSource, Connector, Resume, SnapshotTable, Snapshotter, SourceError, SourceItem};

/// How long a check waits for one expected item.
const WAIT: Duration = Duration::from_secs(30);

/// A live server and a naming of tenants for the checks.
///
/// Every tenant has its own database (MySQL) or schema (PostgreSQL) that the
/// fixture created empty; [`Fixture::connector`] captures exactly those, with
/// the schema-per-tenant rule, starting at the current end of the log (so
/// what the check writes after the call is streamed, and nothing before it).
pub trait Fixture: Send + Sync {
    type Connector: Connector;

    /// The tenants (at least two), each with its own empty database.
    fn tenants(&self) -> &[String];

    /// The database (MySQL) or schema (PostgreSQL) of `tenant`.
    fn database(&self, tenant: &str) -> String;

    /// Runs `statements` in `tenant`'s database (unqualified table names),
    /// in one transaction.
    fn execute(&self, tenant: &str, statements: &[&str]) -> impl Future<Output = ()> + Send;

    /// A connector capturing the tenants' databases from the current end of
    /// the log (MySQL: the current binlog position; PostgreSQL: a new slot).
    fn connector(&self) -> impl Future<Output = Self::Connector> + Send;

    /// `(CREATE TABLE typed …, values)`: a table `typed` whose first column
    /// is `id` (integer primary key) and whose other columns cover every
    /// column type the source supports, and the SQL literals of one row for
    /// every column after `id` (`INSERT INTO typed VALUES (<id>, <values>)`).
    fn typed_table(&self) -> (&'static str, &'static str);

    /// A database shared by tenants: a table `shared_orders (id BIGINT NOT
    /// NULL PRIMARY KEY, tenant VARCHAR(40) NOT NULL, v VARCHAR(40))` made
    /// capturable with rows moving between tenants (PostgreSQL: REPLICA
    /// IDENTITY FULL), and a connector capturing it with the tenant-column
    /// rule on `tenant`, from the current end of the log. Statements for it
    /// run with [`Fixture::execute_shared`].
    fn shared_connector(&self) -> impl Future<Output = Self::Connector> + Send;

    /// Runs `statements` in the shared database, in one transaction.
    fn execute_shared(&self, statements: &[&str]) -> impl Future<Output = ()> + Send;

    /// The shared database's name.
    fn shared_database(&self) -> String;
}

const ITEMS_DDL: &str = "CREATE TABLE items (id BIGINT NOT NULL PRIMARY KEY, v VARCHAR(40), n INT)";

/// Runs every check of the suite.
pub async fn run_all<F: Fixture>(f: &F) {
    changes_come_in_commit_order(f).await;
    a_restart_repeats_exactly_what_followed_the_resume_point(f).await;
    watermarks_arrive_in_commit_order(f).await;
    snapshot_reads_are_ordered_chunks(f).await;
    snapshot_rows_equal_streamed_rows(f).await;
    rows_moving_between_tenants_become_a_delete_and_a_create(f).await;
}

async fn start<C: Connector>(c: &C, resume: Option<Resume>) -> C::Source {
    // The server may still hold the previous stream's slot or connection
    // for a moment: retry what the source itself calls retryable.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match c.start(resume.clone()).await {
            Ok(s) => return s,
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("starting source `{}`: {e}", c.name()),
        }
    }
}

async fn snapshotter<C: Connector>(c: &C) -> C::Snapshotter {
    c.snapshotter().await.unwrap_or_else(|e| panic!("opening a snapshot reader of `{}`: {e}", c.name()))
}

async fn next<S: ChangeSource>(s: &mut S) -> SourceItem {
    match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Ok(item)) => item,
        Ok(Err(e)) => panic!("the source failed: {e}"),
        Err(_) => panic!("no item within {WAIT:?}"),
    }
}

/// What a check saw of its own tables: changes and the commits that ended
/// transactions with changes, in stream order; watermarks with their ids.
#[derive(Debug)]
enum Seen {
    Change(ChangeEvent),
    Commit { resume: Resume, position: SourcePosition },
    Watermark(crate::Watermark),
}

/// Reads until `pred` holds for what was seen so far; skips heartbeats,
/// commits of transactions without changes of `databases`, and changes of
/// other databases.
async fn read_until<S: ChangeSource>(s: &mut S, databases: &[String], pred: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut open = false;
    while !pred(&seen) {
        match next(s).await {
            SourceItem::Change(e) if databases.iter().any(|d| **d == *e.table.database) => {
                open = true;
                seen.push(Seen::Change(e));
            }
            SourceItem::Commit { resume, position, .. } if open => {
                open = false;
                seen.push(Seen::Commit { resume, position });
            }
            SourceItem::Watermark(w) => seen.push(Seen::Watermark(w)),
            SourceItem::Unresolved(u) if databases.iter().any(|d| u.table.starts_with(&format!("{d}."))) => {
                panic!("unresolved row of {}: {}", u.table, u.reason)
            }
            _ => {}
        }
    }
    seen
}

fn changes(seen: &[Seen]) -> Vec<&ChangeEvent> {
    seen.iter().filter_map(|s| if let Seen::Change(e) = s { Some(e) } else { None }).collect()
}

fn commits(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| matches!(s, Seen::Commit { .. })).count()
}

fn column(e: &ChangeEvent, name: &str) -> Value {
    let i = e.schema.column_index(name).unwrap_or_else(|| panic!("{} has no column `{name}`", e.table));
    let row = e.key_row().unwrap_or_else(|| panic!("change of {} without a row", e.table));
    row.get(i).cloned().unwrap_or(Value::Null)
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::UInt(u) => i64::try_from(*u).unwrap_or(i64::MAX),
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// One transaction's inserts, update and delete arrive as changes in
/// statement order, tenant and table resolved, followed by one commit whose
/// position sorts after them; positions strictly increase.
pub async fn changes_come_in_commit_order<F: Fixture>(f: &F) {
    let t = &f.tenants()[0];
    f.execute(t, &[ITEMS_DDL]).await;
    let c = f.connector().await;
    f.execute(
        t,
        &[
            "INSERT INTO items VALUES (1, 'a', 1)",
            "INSERT INTO items VALUES (2, 'b', 2)",
            "UPDATE items SET v = 'c' WHERE id = 1",
            "DELETE FROM items WHERE id = 2",
        ],
    )
    .await;
    let mut s = start(&c, None).await;
    let db = f.database(t);
    let seen = read_until(&mut s, std::slice::from_ref(&db), |s| commits(s) >= 1).await;
    let ch = changes(&seen);
    let ops: Vec<(Op, i64)> = ch.iter().map(|e| (e.op, int(&column(e, "id")))).collect();
    assert_eq!(ops, [(Op::Create, 1), (Op::Create, 2), (Op::Update, 1), (Op::Delete, 2)], "changes of one transaction");
    let want = TableId::new(t, &db, "items");
    assert!(ch.iter().all(|e| e.table == want), "tenant and table of every change are {want}");
    assert_eq!(column(ch[2], "v"), Value::String("c".into()), "the update's new image");
    assert!(ch.windows(2).all(|w| w[0].source.position < w[1].source.position), "positions increase");
    let Some(Seen::Commit { position, .. }) = seen.last() else { panic!("the transaction ends with a commit") };
    assert!(ch.iter().all(|e| e.source.position < *position), "the commit sorts after its changes");
}

/// Started again from the resume point of a commit, a source delivers the
/// later transactions again with the same positions, and nothing before.
pub async fn a_restart_repeats_exactly_what_followed_the_resume_point<F: Fixture>(f: &F) {
    let t = &f.tenants()[1];
    f.execute(t, &[ITEMS_DDL]).await;
    let c = f.connector().await;
    f.execute(t, &["INSERT INTO items VALUES (10, 'first', 1)"]).await;
    f.execute(t, &["INSERT INTO items VALUES (11, 'second', 2)", "INSERT INTO items VALUES (12, 'second', 3)"]).await;
    let db = vec![f.database(t)];
    let mut s = start(&c, None).await;
    let seen = read_until(&mut s, &db, |s| commits(s) >= 2).await;
    drop(s);
    let Some(Seen::Commit { resume, .. }) = seen.iter().find(|s| matches!(s, Seen::Commit { .. })) else {
        panic!("no commit after the first transaction")
    };
    let after: Vec<(i64, SourcePosition)> =
        changes(&seen).iter().skip(1).map(|e| (int(&column(e, "id")), e.source.position.clone())).collect();
    assert_eq!(after.iter().map(|a| a.0).collect::<Vec<_>>(), [11, 12]);
    let mut again = start(&c, Some(resume.clone())).await;
    let seen = read_until(&mut again, &db, |s| commits(s) >= 1).await;
    let repeated: Vec<(i64, SourcePosition)> =
        changes(&seen).iter().map(|e| (int(&column(e, "id")), e.source.position.clone())).collect();
    assert_eq!(repeated, after, "a restart from {resume} repeats exactly the later transaction, same positions");
}

/// A watermark written between two transactions arrives between their
/// changes, and the snapshot rows placed at it sort between them.
pub async fn watermarks_arrive_in_commit_order<F: Fixture>(f: &F) {
    let t = &f.tenants()[0];
    f.execute(t, &["CREATE TABLE marks (id BIGINT NOT NULL PRIMARY KEY)"]).await;
    let c = f.connector().await;
    let mut reader = snapshotter(&c).await;
    let id = format!("h:conformance{}:1", std::process::id());
    f.execute(t, &["INSERT INTO marks VALUES (20)"]).await;
    reader.watermark(&id).await.unwrap_or_else(|e| panic!("writing a watermark: {e}"));
    f.execute(t, &["INSERT INTO marks VALUES (21)"]).await;
    let db = vec![f.database(t)];
    let mut s = start(&c, None).await;
    let seen = read_until(&mut s, &db, |s| changes(s).len() >= 2).await;
    let order: Vec<String> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Change(e) => Some(format!("change {}", int(&column(e, "id")))),
            Seen::Watermark(w) if w.id == id => Some("watermark".into()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["change 20", "watermark", "change 21"], "stream order");
    let ch = changes(&seen);
    let Some(Seen::Watermark(w)) = seen.iter().find(|s| matches!(s, Seen::Watermark(w) if w.id == id)) else {
        panic!("watermark {id} not seen")
    };
    for i in [0, 1, 1000] {
        let p = w.row_source(i).position;
        assert!(ch[0].source.position < p && p < ch[1].source.position, "snapshot row {i} at the watermark: {p}");
    }
    assert!(w.row_source(0).position < w.row_source(1).position);
}

/// Snapshot reads list the table, describe it, and return key-ordered
/// chunks that continue after the last key, end short, split at boundaries
/// and respect an upper bound.
pub async fn snapshot_reads_are_ordered_chunks<F: Fixture>(f: &F) {
    let t = &f.tenants()[1];
    f.execute(t, &["CREATE TABLE chunked (id BIGINT NOT NULL PRIMARY KEY, v VARCHAR(40))"]).await;
    let values: Vec<String> = (1..=25).rev().map(|i| format!("({i}, 'row {i}')")).collect();
    f.execute(t, &[&format!("INSERT INTO chunked VALUES {}", values.join(", "))]).await;
    let c = f.connector().await;
    let mut r = snapshotter(&c).await;
    let db = f.database(t);
    let id = TableId::new(t, &db, "chunked");
    let listed = r.tables().await.unwrap_or_else(|e| panic!("listing tables: {e}"));
    assert!(listed.contains(&id), "{id} listed among {listed:?}");
    let table = r.table(&id).await.unwrap_or_else(|e| panic!("{id}: {e}")).unwrap_or_else(|| panic!("{id} exists"));
    assert!(table.keyed(), "a table with a primary key can be chunked");
    let ids = |rows: &[Vec<Value>]| rows.iter().map(|r| int(&r[0])).collect::<Vec<_>>();
    let mut after: Option<Vec<String>> = None;
    for want in [1..=10, 11..=20, 21..=25] {
        let chunk = r.read_chunk(&table, after.as_deref(), 10).await.unwrap_or_else(|e| panic!("chunk read: {e}"));
        assert_eq!(ids(&chunk.rows), want.clone().collect::<Vec<_>>(), "chunk after {after:?} (the last ends short)");
        assert_eq!(chunk.last_key, Some(vec![want.end().to_string()]));
        after = chunk.last_key;
    }
    let bounds = r.boundaries(&table, None, 10, 2).await.unwrap_or_else(|e| panic!("boundaries: {e}"));
    assert_eq!(bounds, [vec!["10".to_owned()], vec!["20".to_owned()]]);
    let upto = ["15".to_owned()];
    let range = r.read_range(&table, Some(&["10".to_owned()]), Some(&upto), 100).await;
    assert_eq!(ids(&range.unwrap_or_else(|e| panic!("range read: {e}")).rows), (11..=15).collect::<Vec<_>>());
    let gone = TableId::new(t, &db, "no_such_table");
    assert!(r.table(&gone).await.unwrap_or_else(|e| panic!("{gone}: {e}")).is_none(), "a missing table is None");
}

/// A snapshot row equals the streamed row of the same values, for every
/// column type, all-NULL rows included, under the same schema.
pub async fn snapshot_rows_equal_streamed_rows<F: Fixture>(f: &F) {
    let t = &f.tenants()[0];
    let (ddl, values) = f.typed_table();
    f.execute(t, &[ddl]).await;
    let c = f.connector().await;
    f.execute(t, &[&format!("INSERT INTO typed VALUES (1, {values})"), "INSERT INTO typed (id) VALUES (2)"]).await;
    let db = f.database(t);
    let mut s = start(&c, None).await;
    let seen = read_until(&mut s, std::slice::from_ref(&db), |s| changes(s).len() >= 2).await;
    let streamed = changes(&seen);
    let mut r = snapshotter(&c).await;
    let id = TableId::new(t, &db, "typed");
    let table = r.table(&id).await.unwrap_or_else(|e| panic!("{id}: {e}")).unwrap_or_else(|| panic!("{id} exists"));
    assert_eq!(table.schema().fingerprint(), streamed[0].schema.fingerprint(), "snapshot and stream share the schema");
    let chunk = r.read_chunk(&table, None, 10).await.unwrap_or_else(|e| panic!("chunk read: {e}"));
    assert_eq!(chunk.rows.len(), 2);
    for (read, change) in chunk.rows.iter().zip(&streamed) {
        let after = change.after.as_deref().unwrap_or_else(|| panic!("insert without a row"));
        for (i, col) in table.schema().columns.iter().enumerate() {
            assert_eq!(read.get(i), after.get(i), "column `{}` of row {}: snapshot vs stream", col.name, int(&read[0]));
        }
    }
}

/// Under the tenant-column rule, an update that moves a row to another
/// tenant is a delete of the old tenant's row (its old image) followed by a
/// create in the new tenant (its new image); neither sees the other's image.
pub async fn rows_moving_between_tenants_become_a_delete_and_a_create<F: Fixture>(f: &F) {
    let c = f.shared_connector().await;
    let (alpha, beta) = (&f.tenants()[0], &f.tenants()[1]);
    f.execute_shared(&[&format!("INSERT INTO shared_orders VALUES (1, '{alpha}', 'a')")]).await;
    f.execute_shared(&[&format!("UPDATE shared_orders SET tenant = '{beta}', v = 'b' WHERE id = 1")]).await;
    let db = vec![f.shared_database()];
    let mut s = start(&c, None).await;
    let seen = read_until(&mut s, &db, |s| changes(s).len() >= 3).await;
    let got: Vec<(String, Op, Option<Value>, Option<Value>)> = changes(&seen)
        .iter()
        .map(|e| {
            let tenant_of = |row: &Option<Vec<Value>>| {
                row.as_ref().and_then(|r| e.schema.column_index("tenant").and_then(|i| r.get(i).cloned()))
            };
            (e.table.tenant.to_string(), e.op, tenant_of(&e.before), tenant_of(&e.after))
        })
        .collect();
    let s = |t: &str| Some(Value::String(t.into()));
    assert_eq!(
        got,
        [
            (alpha.clone(), Op::Create, None, s(alpha)),
            (alpha.clone(), Op::Delete, s(alpha), None),
            (beta.clone(), Op::Create, None, s(beta)),
        ],
        "a row moving from {alpha} to {beta}"
    );
}
