//! The source contract: what a database connector promises the pipeline.
//!
//! A connector (`connectors/mysql`, `connectors/postgres`, …) implements three
//! traits of this crate and nothing of the pipeline:
//!
//! * [`ChangeSource`] — the change stream (binlog, replication slot), as
//!   [`SourceItem`]s in commit order;
//! * [`Snapshotter`] — chunked, key-ordered reads of existing rows and the
//!   watermarks that bracket them (DBLog, ADR 0006);
//! * [`Connector`] — built from the connector's configuration: starts a
//!   source from a [`Resume`] point and opens snapshot readers.
//!
//! The source stage (`lablake-pipeline`) drives any [`Connector`] the same
//! way: items to Kafka, positions saved only after Kafka acknowledged
//! everything before them, then [`ChangeSource::saved_hook`] told. Adding a
//! source kind is implementing these traits plus one configuration variant
//! (`docs/ARCHITECTURE.md`, "Adding a source").
//!
//! With the `conformance` feature, [`conformance`] is the suite every
//! connector's live tests run against a real server.

use std::future::Future;
use std::sync::Arc;

use lablake_model::position::binlog_file_seq;
use lablake_model::{ChangeEvent, SourceInfo, SourcePosition, TableId, TableSchema};
pub use lablake_model::{Chunk, Resume};

#[cfg(feature = "conformance")]
pub mod conformance;

/// One item of a change stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// A row change of a captured table, its tenant resolved.
    Change(ChangeEvent),
    /// End of a transaction: every change before it belongs to committed
    /// transactions, and a restart from `resume` delivers nothing before
    /// this point again. `position` sorts after every change of the
    /// transaction; `commit_ts_ms` is its commit time.
    Commit { resume: Resume, position: SourcePosition, commit_ts_ms: i64 },
    /// Progress without changes (a rotate, a heartbeat, an idle keep-alive),
    /// only between transactions: the saved position may advance to
    /// `resume` so an idle source does not hold its server's log.
    Heartbeat { resume: Resume },
    /// A snapshot watermark written by [`Snapshotter::watermark`], in commit
    /// order among the changes.
    Watermark(Watermark),
    /// A row of a captured table that cannot become a tenant's change
    /// (tenant not resolvable, value not decodable): the stage sends it to a
    /// dead-letter topic with the row, and the stream goes on.
    Unresolved(Unresolved),
}

/// A row that cannot become a change: the table (`database.table`), why
/// (`reason` never holds row values: it is logged), where, whose when the
/// source knows, and the row itself so it can be redriven.
#[derive(Debug, Clone, PartialEq)]
pub struct Unresolved {
    pub table: String,
    pub reason: String,
    pub position: SourcePosition,
    /// The tenant whose dead-letter topic gets it (known under the schema
    /// rule even when a value cannot be decoded); `None` → the
    /// `_unresolved` dead-letter topic.
    pub tenant: Option<Arc<str>>,
    pub row: UnresolvedRow,
}

impl Unresolved {
    /// A row change [`lablake_model::tenant::route`] found no tenant for, of
    /// `database.name` (shown as `table`), kept whole as an event of tenant
    /// `_unresolved` at `source`.
    pub fn unrouted(
        table: String,
        mut unrouted: lablake_model::tenant::Unrouted,
        (database, name, schema): (&Arc<str>, &Arc<str>, &Arc<TableSchema>),
        source: SourceInfo,
        ts_ms: i64,
    ) -> Self {
        let reason = std::mem::take(&mut unrouted.reason);
        let position = source.position.clone();
        let event = unrouted.into_event(database, name, schema, source, ts_ms);
        Unresolved { table, reason, position, tenant: None, row: UnresolvedRow::Change(Box::new(event)) }
    }
}

/// What an [`Unresolved`] keeps of its row.
#[derive(Debug, Clone, PartialEq)]
pub enum UnresolvedRow {
    /// Decoded, but no tenant owns it: the whole change as an event of the
    /// tenant `_unresolved` (the dead-letter record is its envelope).
    Change(Box<ChangeEvent>),
    /// Not decodable: the source's bytes as a JSON object whose `format`
    /// field names the connector's layout (documented by each connector),
    /// enough to decode it again with a fixed decoder.
    Raw(String),
    /// Nothing row-shaped to keep (a TRUNCATE of a table shared by tenants,
    /// a message out of its context).
    Nothing,
}

/// A snapshot watermark as the stream delivers it: its id and where the
/// snapshot rows emitted at it are positioned (right after the watermark,
/// before the next change of the log).
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub id: String,
    at: SourceInfo,
    placement: Placement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Rows follow the watermark's own row in the same binlog event.
    BinlogRows,
    /// Rows take the sequence numbers `0..` of the watermark's commit LSN.
    LsnSequence,
}

impl Watermark {
    /// A watermark that is a row of a binlog rows event (MySQL signalling
    /// table): `source` is that row's source block; the `i`-th snapshot row
    /// takes row index `source.row + 1 + i` of the same event, so it sorts
    /// after the watermark and before the next event.
    pub fn binlog(id: String, source: SourceInfo) -> Self {
        Watermark { id, at: source, placement: Placement::BinlogRows }
    }

    /// A watermark written in a transaction committed at `commit.pos` (an
    /// LSN; PostgreSQL logical message): the `i`-th snapshot row takes
    /// position `(commit LSN, i)` and the commit's time.
    pub fn lsn(id: String, commit: SourceInfo) -> Self {
        Watermark { id, at: commit, placement: Placement::LsnSequence }
    }

    /// The source block of the `i`-th snapshot row emitted at this watermark.
    pub fn row_source(&self, i: u32) -> SourceInfo {
        match self.placement {
            Placement::BinlogRows => {
                let row = self.at.row.saturating_add(1).saturating_add(i);
                let seq = binlog_file_seq(&self.at.file).unwrap_or(0);
                SourceInfo { row, position: SourcePosition::mysql(seq, self.at.pos, row), ..self.at.clone() }
            }
            Placement::LsnSequence => {
                SourceInfo { row: 0, position: SourcePosition::postgres(self.at.pos, i), ..self.at.clone() }
            }
        }
    }
}

/// An error of a connector, with the one classification the stage needs.
pub trait SourceError: std::error::Error + Send + Sync + 'static {
    /// Whether starting again from the last saved [`Resume`] (after a
    /// backoff) may succeed: a broken connection yes; bad configuration, a
    /// lost position, an undecodable log no — those need a person.
    fn is_retryable(&self) -> bool;
}

/// What the stage calls after a position is durably saved. Sources whose
/// server keeps its log until told (a PostgreSQL slot) report the position
/// there; others do nothing.
#[derive(Clone, Default)]
pub struct SavedHook(Option<Arc<SavedFn>>);

type SavedFn = dyn Fn(&Resume) + Send + Sync;

impl SavedHook {
    /// A hook that does nothing.
    pub fn none() -> Self {
        SavedHook(None)
    }

    /// A hook calling `f` with each saved position.
    pub fn new(f: impl Fn(&Resume) + Send + Sync + 'static) -> Self {
        SavedHook(Some(Arc::new(f)))
    }

    /// Tells the source that everything up to `resume` is durably saved.
    pub fn saved(&self, resume: &Resume) {
        if let Some(f) = &self.0 {
            f(resume);
        }
    }
}

impl std::fmt::Debug for SavedHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "SavedHook(set)" } else { "SavedHook(none)" })
    }
}

/// A change stream (incremental load).
///
/// # Delivery contract
///
/// * **Order.** [`next`](Self::next) yields changes in commit order; each
///   transaction's changes are followed by one [`SourceItem::Commit`].
///   [`SourceItem::Heartbeat`] and [`SourceItem::Watermark`] come only
///   between transactions (a watermark: in the order of its own commit).
/// * **Re-delivery.** Started again from the `resume` of a `Commit` or
///   `Heartbeat` it yielded, a source delivers every later transaction again
///   exactly as before — same changes, same [`SourcePosition`]s — and
///   nothing committed before that point. So delivery is at-least-once and a
///   duplicate is recognisable by `(primary key, position)`.
/// * **When a position counts as saved.** The stage saves a `resume` only
///   after Kafka acknowledged every record before it, and calls the
///   [`saved_hook`](Self::saved_hook) with it only after the save is durable;
///   a source must not let its server discard log the stage may still need
///   before that call.
/// * **Errors.** After `next` returns an error the source is finished: the
///   stage drops it and starts a new one from the last saved `resume`
///   ([`SourceError::is_retryable`] says whether that can help).
/// * **Memory.** Bounded independently of transaction size.
pub trait ChangeSource: Send {
    type Error: SourceError;

    /// The next item; waits until one is available.
    fn next(&mut self) -> impl Future<Output = Result<SourceItem, Self::Error>> + Send;

    /// The hook the stage calls (from its checkpoint task) with every
    /// position once it is durably saved. Default: nothing to tell.
    fn saved_hook(&self) -> SavedHook {
        SavedHook::none()
    }
}

/// A table as a snapshot reader sees it now.
pub trait SnapshotTable: Send + Sync {
    /// The schema the stream's changes of this table carry (same columns,
    /// types and key), so a snapshot row equals a streamed row.
    fn schema(&self) -> &Arc<TableSchema>;
    /// Whether the table has a key to read in chunks by (a primary key, or
    /// a unique key over NOT NULL columns / a replica-identity index).
    fn keyed(&self) -> bool;
}

/// A source's snapshot reader: the connector half of the watermark method
/// (ADR 0006). Each reader has its own connection; several may read chunks
/// of one table in parallel.
///
/// # Delivery contract
///
/// * [`watermark`](Self::watermark)`(id)` returns after a marker carrying
///   `id` is committed to the source's change log; the source's stream
///   yields it as [`SourceItem::Watermark`] in commit order.
/// * [`read_range`](Self::read_range)`(t, after, upto, n)` returns at most
///   `n` rows with chunk keys greater than `after` (and at most `upto`), in
///   key order, each row exactly as the stream would carry it, and the last
///   row's key as text; fewer than `n` rows means the range ended. The
///   caller brackets reads with a low and a high watermark and drops rows
///   whose keys changed in between, so a read needs no lock and no
///   consistent snapshot of its own.
/// * Progress is the caller's: it saves the last delivered key only after
///   Kafka acknowledged the chunk, and resumes with `after` = that key.
pub trait Snapshotter: Send {
    type Table: SnapshotTable;
    type Error: SourceError;

    /// Every captured table with a resolvable tenant (tables shared by
    /// tenants through a tenant column are listed for none).
    fn tables(&mut self) -> impl Future<Output = Result<Vec<TableId>, Self::Error>> + Send;

    /// The table's layout as it is now; `None` when it no longer exists.
    fn table(&mut self, id: &TableId) -> impl Future<Output = Result<Option<Self::Table>, Self::Error>> + Send;

    /// The server's row estimate (for progress; may be 0 when unknown).
    fn estimate(&mut self, t: &Self::Table) -> impl Future<Output = Result<u64, Self::Error>> + Send;

    /// Commits a watermark carrying `id` to the change log.
    fn watermark(&mut self, id: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// At most `limit` rows after `after` and up to `upto` (inclusive), in key order.
    fn read_range(
        &mut self,
        t: &Self::Table,
        after: Option<&[String]>,
        upto: Option<&[String]>,
        limit: usize,
    ) -> impl Future<Output = Result<Chunk, Self::Error>> + Send;

    /// At most `limit` rows after `after`, in key order.
    fn read_chunk(
        &mut self,
        t: &Self::Table,
        after: Option<&[String]>,
        limit: usize,
    ) -> impl Future<Output = Result<Chunk, Self::Error>> + Send {
        self.read_range(t, after, None, limit)
    }

    /// Up to `count` keys splitting the rows after `after` into ranges of
    /// `step` rows (the `step`-th key, the `2·step`-th, …), for parallel reads.
    fn boundaries(
        &mut self,
        t: &Self::Table,
        after: Option<&[String]>,
        step: usize,
        count: usize,
    ) -> impl Future<Output = Result<Vec<Vec<String>>, Self::Error>> + Send;
}

/// A source kind, built from its configuration: the one thing the pipeline
/// needs to run it.
pub trait Connector: Clone + Send + Sync + 'static {
    type Source: ChangeSource;
    type Snapshotter: Snapshotter;

    /// The configured source name (checkpoints and leases are keyed by it).
    fn name(&self) -> &str;

    /// Connects and starts the change stream at `resume` (the last saved
    /// position) or, without one, where the configuration says. Called only
    /// by the holder of the source's lease: another reader still attached
    /// upstream (a superseded instance, e.g. a paused process holding a
    /// PostgreSQL slot) may be ended to take its place.
    fn start(
        &self,
        resume: Option<Resume>,
    ) -> impl Future<Output = Result<Self::Source, <Self::Source as ChangeSource>::Error>> + Send;

    /// Opens a snapshot reader on its own connection.
    fn snapshotter(
        &self,
    ) -> impl Future<Output = Result<Self::Snapshotter, <Self::Snapshotter as Snapshotter>::Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pos: u64, row: u32, position: SourcePosition) -> SourceInfo {
        SourceInfo {
            connector: "x".into(),
            name: "s".into(),
            server_id: 1,
            file: "binlog.000003".into(),
            pos,
            row,
            gtid: None,
            ts_ms: 7,
            position,
        }
    }

    #[test]
    fn binlog_watermark_rows_follow_the_watermark_row_in_its_event() {
        let w = Watermark::binlog("h:n:1".into(), at(900, 2, SourcePosition::mysql(3, 900, 2)));
        let first = w.row_source(0);
        assert_eq!((first.row, first.position.clone()), (3, SourcePosition::mysql(3, 900, 3)));
        assert!(first.position > SourcePosition::mysql(3, 900, 2));
        assert!(w.row_source(10).position < SourcePosition::mysql(3, 901, 0));
    }

    #[test]
    fn lsn_watermark_rows_take_the_commit_lsn_sequence() {
        let w = Watermark::lsn("h:n:1".into(), at(0x500, 0, SourcePosition::postgres(0x500, 0)));
        assert_eq!(w.row_source(4).position, SourcePosition::postgres(0x500, 4));
        assert_eq!((w.row_source(4).pos, w.row_source(4).ts_ms), (0x500, 7));
    }

    #[test]
    fn saved_hooks_call_their_function() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook = SavedHook::new(move |r| s.lock().map(|mut v| v.push(r.clone())).unwrap_or(()));
        hook.saved(&Resume::Lsn(5));
        SavedHook::none().saved(&Resume::Lsn(6));
        assert_eq!(*seen.lock().unwrap_or_else(|e| e.into_inner()), vec![Resume::Lsn(5)]);
    }
}
