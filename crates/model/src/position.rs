//! Source positions that sort as strings.
//!
//! A position is kept both structured (in [`crate::SourceInfo`]) and as a
//! fixed-width sort key, so DynamoDB sort keys, Parquet columns and Snowflake
//! MERGE guards can compare positions with plain string comparison.

use std::fmt;

/// A totally ordered position of one row change within its source.
///
/// Ordering is lexicographic on the sort key. Two changes of the same primary
/// key never share a position, so `(primary key, position)` identifies a change
/// and is what downstream de-duplication uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourcePosition(String);

impl SourcePosition {
    /// A MySQL/MariaDB binlog position: file sequence number (the numeric
    /// extension of `binlog.000042`), end offset of the rows event, and the row
    /// index within the event.
    pub fn mysql(file_seq: u64, event_end: u64, row: u32) -> Self {
        // Built per row on the hot path: fixed-width digits without `fmt`.
        // Wider values than the field (not reachable: binlog sequence numbers
        // stop at 999999) fall back to `format!`, which keeps every digit.
        if file_seq >= 10_000_000_000 {
            return SourcePosition(format!("{file_seq:010}:{event_end:020}:{row:010}"));
        }
        let mut buf = [b':'; 42];
        put_digits(&mut buf[0..10], file_seq);
        put_digits(&mut buf[11..31], event_end);
        put_digits(&mut buf[32..42], u64::from(row));
        SourcePosition(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A PostgreSQL position: the commit LSN of the transaction and the
    /// change's sequence number within it, as `{lsn:016X}:{seq:010}`
    /// (fixed-width upper-case hex sorts like the LSN).
    pub fn postgres(commit_lsn: u64, seq: u32) -> Self {
        // Built per row: fixed-width digits without `fmt`, as `mysql`.
        let mut buf = [b':'; 27];
        for (i, slot) in buf[..16].iter_mut().enumerate() {
            *slot = b"0123456789ABCDEF"[((commit_lsn >> (60 - 4 * i)) & 0xf) as usize];
        }
        put_digits(&mut buf[17..27], u64::from(seq));
        SourcePosition(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A position from its sort key (as read back from Kafka or DynamoDB).
    pub fn from_sort_key(key: impl Into<String>) -> Self {
        SourcePosition(key.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Writes `v` as zero-padded decimal filling `out` (the caller guarantees it fits).
fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a source resumes reading after a restart: a point at a transaction
/// boundary of its change log from which nothing committed later is lost.
/// What a restart from it may deliver again is the connector's delivery
/// contract (see `lablake-source`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resume {
    /// MySQL/MariaDB: the binlog coordinates just after a committed
    /// transaction (or of a rotate/heartbeat between transactions), and the
    /// GTID state there. For MariaDB `gtid` is the GTID position
    /// (`domain-server-seq` per domain) usable as `@slave_connect_state`; for
    /// MySQL the GTID of that last transaction (kept for audit). An empty
    /// `file` resumes from `gtid` alone.
    Binlog { file: String, pos: u64, gtid: Option<String> },
    /// PostgreSQL: the end LSN of a committed transaction or of a heartbeat,
    /// which may be reported to the slot as flushed once saved.
    Lsn(u64),
}

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resume::Binlog { file, pos, gtid: Some(g) } if !file.is_empty() => write!(f, "{file}:{pos} (gtid {g})"),
            Resume::Binlog { file, pos, .. } if !file.is_empty() => write!(f, "{file}:{pos}"),
            Resume::Binlog { gtid, .. } => write!(f, "gtid {}", gtid.as_deref().unwrap_or("?")),
            Resume::Lsn(lsn) => write!(f, "{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
        }
    }
}

/// The numeric sequence of a binlog file name (`mysql-bin.000123` → 123).
pub fn binlog_file_seq(file: &str) -> Option<u64> {
    file.rsplit_once('.').and_then(|(_, ext)| ext.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_positions_match_the_documented_format() {
        for (f, p, r) in
            [(0, 0, 0), (1, 4, 0), (999_999, u64::MAX, u32::MAX), (9_999_999_999, 123, 7), (u64::MAX, 1, 1)]
        {
            assert_eq!(SourcePosition::mysql(f, p, r).as_str(), format!("{f:010}:{p:020}:{r:010}"));
        }
    }

    #[test]
    fn postgres_positions_sort_by_lsn_then_sequence() {
        let a = SourcePosition::postgres(0x9_FFFF_FFFF, 7);
        let b = SourcePosition::postgres(0xA_0000_0000, 0);
        let c = SourcePosition::postgres(0xA_0000_0000, 1);
        assert!(a.as_str() < b.as_str() && b.as_str() < c.as_str());
        assert_eq!(b.as_str(), "0000000A00000000:0000000000");
        for (l, q) in [(0, 0), (u64::MAX, u32::MAX), (0x0123_4567_89AB_CDEF, 42)] {
            assert_eq!(SourcePosition::postgres(l, q).as_str(), format!("{l:016X}:{q:010}"));
        }
    }

    #[test]
    fn resume_points_print_as_their_sources_do() {
        let b = Resume::Binlog { file: "binlog.000002".into(), pos: 154, gtid: Some("0-1-7".into()) };
        assert_eq!(b.to_string(), "binlog.000002:154 (gtid 0-1-7)");
        assert_eq!(Resume::Binlog { file: "".into(), pos: 4, gtid: Some("0-1-7".into()) }.to_string(), "gtid 0-1-7");
        assert_eq!(Resume::Lsn(0x1_0000_0010).to_string(), "1/10");
    }

    #[test]
    fn mysql_positions_sort_numerically_as_strings() {
        let a = SourcePosition::mysql(1, 999_999, 5);
        let b = SourcePosition::mysql(1, 1_000_000, 0);
        let c = SourcePosition::mysql(2, 4, 0);
        assert!(a < b && b < c);
        assert!(a.as_str() < b.as_str() && b.as_str() < c.as_str());
        assert_eq!(binlog_file_seq("binlog.000123"), Some(123));
        assert_eq!(binlog_file_seq("nodot"), None);
    }
}
