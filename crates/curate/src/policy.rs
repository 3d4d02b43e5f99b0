use std::time::{Duration, Instant};

use serde::Deserialize;

/// When a curated batch closes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPolicy {
    /// Close after this many rows.
    #[serde(default = "default_rows")]
    pub max_rows: usize,
    /// Close after this many bytes of (approximate, in-memory) row data.
    #[serde(default = "default_bytes")]
    pub max_bytes: usize,
    /// Close when the batch's first record was read this long ago
    /// (wall-clock), e.g. `"60s"`: the longest a change waits in the curator.
    /// A backlog (after an outage, a restart, a replay) is worked off in
    /// batches as large as `max_rows`/`max_bytes` allow, not in slices of
    /// `max_age` of source time, so the curator catches up instead of paying
    /// a commit per slice.
    #[serde(default = "default_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Close when no record arrived for this long (wall-clock), so quiet
    /// tables still land, e.g. `"2s"`.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_flush: Duration,
}

fn default_rows() -> usize {
    100_000
}
fn default_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_age() -> Duration {
    Duration::from_secs(60)
}
fn default_idle() -> Duration {
    Duration::from_secs(2)
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_rows: default_rows(),
            max_bytes: default_bytes(),
            max_age: default_age(),
            idle_flush: default_idle(),
        }
    }
}

/// Why a batch closed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Rows,
    Bytes,
    Age,
    Idle,
    Schema,
    /// Rebuilding a batch whose intent was recorded before a restart.
    Replay,
    Shutdown,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Rows => "rows",
            CloseReason::Bytes => "bytes",
            CloseReason::Age => "age",
            CloseReason::Idle => "idle",
            CloseReason::Schema => "schema",
            CloseReason::Replay => "replay",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Size/age accounting of one open batch of one partition.
#[derive(Debug, Clone)]
pub struct OpenBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: usize,
    pub bytes: usize,
    /// Commit time of the batch's first row (names its day in the object key).
    pub first_commit_ms: Option<i64>,
    /// When the batch's first record was read (wall-clock).
    pub opened: Option<Instant>,
    pub last_seen: Instant,
}

impl OpenBatch {
    pub fn new(first_offset: i64) -> Self {
        OpenBatch {
            first_offset,
            last_offset: first_offset - 1,
            rows: 0,
            bytes: 0,
            first_commit_ms: None,
            opened: None,
            last_seen: Instant::now(),
        }
    }

    /// Whether the batch is old enough to close: its first record was read
    /// `max_age` ago or longer (wall-clock, whatever the records' commit
    /// times).
    pub fn too_old(&self, policy: &BatchPolicy) -> bool {
        self.opened.is_some_and(|at| at.elapsed() >= policy.max_age)
    }

    /// Accounts for a record at `offset` (a row when `row_bytes` is `Some`,
    /// a dead-lettered record otherwise).
    pub fn add(&mut self, offset: i64, row: Option<(usize, i64)>) {
        self.last_offset = offset;
        self.last_seen = Instant::now();
        self.opened.get_or_insert(self.last_seen);
        if let Some((bytes, commit_ms)) = row {
            self.rows += 1;
            self.bytes += bytes;
            self.first_commit_ms.get_or_insert(commit_ms);
        }
    }

    /// Whether the batch is full after the last `add`.
    pub fn full(&self, policy: &BatchPolicy) -> Option<CloseReason> {
        if self.rows >= policy.max_rows {
            Some(CloseReason::Rows)
        } else if self.bytes >= policy.max_bytes {
            Some(CloseReason::Bytes)
        } else {
            None
        }
    }

    /// Whether the batch has been idle for the policy's idle flush.
    pub fn idle(&self, policy: &BatchPolicy) -> bool {
        self.last_offset >= self.first_offset && self.last_seen.elapsed() >= policy.idle_flush
    }

    pub fn is_empty(&self) -> bool {
        self.last_offset < self.first_offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_on_rows_bytes_and_age() {
        let p = BatchPolicy {
            max_rows: 3,
            max_bytes: 1000,
            max_age: Duration::from_secs(10),
            idle_flush: Duration::from_secs(1),
        };
        let mut b = OpenBatch::new(5);
        assert!(b.is_empty());
        b.add(5, Some((10, 1_000)));
        b.add(6, None);
        assert_eq!(b.full(&p), None);
        // Record times far apart (a backlog read at once) do not age a batch.
        b.add(7, Some((10, 1_000_000)));
        assert!(!b.too_old(&p));
        b.opened = Instant::now().checked_sub(Duration::from_secs(10));
        assert!(b.too_old(&p));
        assert!(!OpenBatch::new(0).too_old(&p), "an empty batch never ages");
        b.add(8, Some((10, 3_000)));
        assert_eq!(b.full(&p), Some(CloseReason::Rows));
        assert_eq!((b.first_offset, b.last_offset, b.rows), (5, 8, 3));
        let mut big = OpenBatch::new(0);
        big.add(0, Some((5000, 0)));
        assert_eq!(big.full(&p), Some(CloseReason::Bytes));
    }
}
