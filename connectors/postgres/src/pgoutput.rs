//! pgoutput logical-replication messages (protocol versions 1 and 2) parsed
//! from the payload of an XLogData frame. Pure: no I/O, borrows from the
//! input, never panics on malformed input (every read is bounds-checked).
//!
//! Reference: PostgreSQL "Logical Replication Message Formats". In protocol
//! version 2 with `streaming 'on'`, messages between Stream Start and Stream
//! Stop carry the transaction id after the type byte; the caller says whether
//! it is inside such a block.

/// One column of a tuple as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleValue<'a> {
    Null,
    /// An unchanged TOASTed value: the column is not in the message.
    Unchanged,
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// A relation column: name, type and whether it is part of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A Relation message: the table's current shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

/// Which old tuple an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: the replica-identity key columns only (others are Null).
    Key,
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Old,
}

/// A parsed message. `xid` is present on messages inside a streamed block.
#[derive(Debug, Clone, PartialEq)]
pub enum Message<'a> {
    Begin { final_lsn: u64, commit_ts: i64, xid: u32 },
    Commit { flags: u8, commit_lsn: u64, end_lsn: u64, commit_ts: i64 },
    Origin { commit_lsn: u64, name: &'a str },
    Relation { xid: Option<u32>, relation: Relation },
    Type { xid: Option<u32>, oid: u32, namespace: &'a str, name: &'a str },
    Insert { xid: Option<u32>, relation: u32, new: Vec<TupleValue<'a>> },
    Update { xid: Option<u32>, relation: u32, old: Option<(OldKind, Vec<TupleValue<'a>>)>, new: Vec<TupleValue<'a>> },
    Delete { xid: Option<u32>, relation: u32, old: (OldKind, Vec<TupleValue<'a>>) },
    Truncate { xid: Option<u32>, cascade: bool, restart_identity: bool, relations: Vec<u32> },
    Message { xid: Option<u32>, transactional: bool, lsn: u64, prefix: &'a str, content: &'a [u8] },
    StreamStart { xid: u32, first: bool },
    StreamStop,
    StreamCommit { xid: u32, flags: u8, commit_lsn: u64, end_lsn: u64, commit_ts: i64 },
    StreamAbort { xid: u32, subxid: u32 },
}

/// Parses one message. `in_stream`: between Stream Start and Stream Stop.
pub fn parse(data: &[u8], in_stream: bool) -> Result<Message<'_>, String> {
    let mut r = Reader { data, pos: 0 };
    let tag = r.u8()?;
    let xid =
        |r: &mut Reader<'_>| -> Result<Option<u32>, String> { if in_stream { r.u32().map(Some) } else { Ok(None) } };
    let msg = match tag {
        b'B' => Message::Begin { final_lsn: r.u64()?, commit_ts: r.i64()?, xid: r.u32()? },
        b'C' => Message::Commit { flags: r.u8()?, commit_lsn: r.u64()?, end_lsn: r.u64()?, commit_ts: r.i64()? },
        b'O' => Message::Origin { commit_lsn: r.u64()?, name: r.cstr()? },
        b'R' => {
            let xid = xid(&mut r)?;
            let oid = r.u32()?;
            let namespace = r.cstr()?.to_owned();
            let name = r.cstr()?.to_owned();
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            if n < 0 {
                return Err("negative column count".into());
            }
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?.to_owned();
                columns.push(RelationColumn { key: flags & 1 == 1, name, type_oid: r.u32()?, type_modifier: r.i32()? });
            }
            Message::Relation { xid, relation: Relation { oid, namespace, name, replica_identity, columns } }
        }
        b'Y' => Message::Type { xid: xid(&mut r)?, oid: r.u32()?, namespace: r.cstr()?, name: r.cstr()? },
        b'I' => {
            let xid = xid(&mut r)?;
            let relation = r.u32()?;
            r.expect(b'N')?;
            Message::Insert { xid, relation, new: r.tuple()? }
        }
        b'U' => {
            let xid = xid(&mut r)?;
            let relation = r.u32()?;
            let old = match r.u8()? {
                b'K' => Some((OldKind::Key, r.tuple_then(b'N')?)),
                b'O' => Some((OldKind::Old, r.tuple_then(b'N')?)),
                b'N' => None,
                t => return Err(format!("unexpected tuple tag {t} in Update")),
            };
            Message::Update { xid, relation, old, new: r.tuple()? }
        }
        b'D' => {
            let xid = xid(&mut r)?;
            let relation = r.u32()?;
            let kind = match r.u8()? {
                b'K' => OldKind::Key,
                b'O' => OldKind::Old,
                t => return Err(format!("unexpected tuple tag {t} in Delete")),
            };
            Message::Delete { xid, relation, old: (kind, r.tuple()?) }
        }
        b'T' => {
            let xid = xid(&mut r)?;
            let n = r.u32()?;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity((n as usize).min(r.remaining() / 4));
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate { xid, cascade: options & 1 != 0, restart_identity: options & 2 != 0, relations }
        }
        b'M' => {
            let xid = xid(&mut r)?;
            let flags = r.u8()?;
            let lsn = r.u64()?;
            let prefix = r.cstr()?;
            let len = r.u32()? as usize;
            Message::Message { xid, transactional: flags & 1 != 0, lsn, prefix, content: r.take(len)? }
        }
        b'S' => Message::StreamStart { xid: r.u32()?, first: r.u8()? == 1 },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.u64()?,
            end_lsn: r.u64()?,
            commit_ts: r.i64()?,
        },
        // Protocol 4 adds abort LSN and time; versions 2 and 3 end here.
        b'A' => Message::StreamAbort { xid: r.u32()?, subxid: r.u32()? },
        t => return Err(format!("unknown pgoutput message type {t}")),
    };
    Ok(msg)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!("truncated message: need {n} bytes, {} left", self.remaining()));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    fn cstr(&mut self) -> Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|b| *b == 0).ok_or("unterminated string")?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| "string is not UTF-8".to_owned())?;
        self.pos += end + 1;
        Ok(s)
    }

    fn expect(&mut self, tag: u8) -> Result<(), String> {
        match self.u8()? {
            t if t == tag => Ok(()),
            t => Err(format!("expected tuple tag {tag}, got {t}")),
        }
    }

    fn tuple_then(&mut self, next: u8) -> Result<Vec<TupleValue<'a>>, String> {
        let t = self.tuple()?;
        self.expect(next)?;
        Ok(t)
    }

    fn tuple(&mut self) -> Result<Vec<TupleValue<'a>>, String> {
        let n = self.i16()?;
        if n < 0 {
            return Err("negative column count in tuple".into());
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    TupleValue::Text(self.take(usize::try_from(len).map_err(|_| "negative length")?)?)
                }
                b'b' => {
                    let len = self.i32()?;
                    TupleValue::Binary(self.take(usize::try_from(len).map_err(|_| "negative length")?)?)
                }
                k => return Err(format!("unknown tuple value kind {k}")),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// Builds messages for tests (the server's encoding, big-endian).
    #[derive(Default)]
    pub(crate) struct Msg(pub Vec<u8>);

    impl Msg {
        pub(crate) fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        pub(crate) fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        pub(crate) fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub(crate) fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub(crate) fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub(crate) fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        pub(crate) fn cstr(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        pub(crate) fn bin(mut self, b: &[u8]) -> Self {
            self.0.push(b'b');
            self.0.extend_from_slice(&(b.len() as i32).to_be_bytes());
            self.0.extend_from_slice(b);
            self
        }
    }

    #[test]
    fn parses_every_message_type() {
        let rel = Msg::new(b'R')
            .u32(16384)
            .cstr("lab_acme")
            .cstr("results")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .cstr("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .cstr("v")
            .u32(25)
            .i32(-1);
        let Message::Relation { xid: None, relation } = parse(&rel.0, false).unwrap() else { panic!() };
        assert_eq!(relation.columns.len(), 2);
        assert!(relation.columns[0].key && !relation.columns[1].key);

        let ins = Msg::new(b'I').u32(7).u32(16384).u8(b'N').i16(3).bin(&5i64.to_be_bytes()).u8(b'n').u8(b'u');
        // Inside a stream the xid comes first.
        assert_eq!(
            parse(&ins.0, true).unwrap(),
            Message::Insert {
                xid: Some(7),
                relation: 16384,
                new: vec![TupleValue::Binary(&5i64.to_be_bytes()), TupleValue::Null, TupleValue::Unchanged]
            }
        );
        let upd = Msg::new(b'U').u32(1).u8(b'K').i16(1).bin(b"k").u8(b'N').i16(1).bin(b"v");
        let Message::Update { old: Some((OldKind::Key, old)), new, .. } = parse(&upd.0, false).unwrap() else {
            panic!()
        };
        assert_eq!((old.len(), new.len()), (1, 1));
        let del = Msg::new(b'D').u32(1).u8(b'O').i16(1).bin(b"k");
        assert!(matches!(parse(&del.0, false).unwrap(), Message::Delete { old: (OldKind::Old, _), .. }));
        let tr = Msg::new(b'T').u32(2).u8(3).u32(1).u32(2);
        assert_eq!(
            parse(&tr.0, false).unwrap(),
            Message::Truncate { xid: None, cascade: true, restart_identity: true, relations: vec![1, 2] }
        );
        let m = Msg::new(b'M').u8(0).u64(99).cstr("lablake").u32(2).u8(b'h').u8(b'i');
        assert!(matches!(
            parse(&m.0, false).unwrap(),
            Message::Message { transactional: false, prefix: "lablake", content: b"hi", .. }
        ));
        assert_eq!(parse(&Msg::new(b'S').u32(9).u8(1).0, false).unwrap(), Message::StreamStart { xid: 9, first: true });
        assert_eq!(parse(b"E", true).unwrap(), Message::StreamStop);
        let sc = Msg::new(b'c').u32(9).u8(0).u64(10).u64(11).u64(12);
        assert!(matches!(parse(&sc.0, false).unwrap(), Message::StreamCommit { xid: 9, commit_lsn: 10, .. }));
        assert_eq!(
            parse(&Msg::new(b'A').u32(9).u32(10).0, false).unwrap(),
            Message::StreamAbort { xid: 9, subxid: 10 }
        );
        assert!(matches!(parse(&Msg::new(b'B').u64(1).u64(2).u32(3).0, false).unwrap(), Message::Begin { xid: 3, .. }));
        assert!(matches!(
            parse(&Msg::new(b'C').u8(0).u64(1).u64(2).u64(3).0, false).unwrap(),
            Message::Commit { end_lsn: 2, .. }
        ));
        assert!(matches!(parse(&Msg::new(b'O').u64(1).cstr("o").0, false).unwrap(), Message::Origin { name: "o", .. }));
        assert!(matches!(
            parse(&Msg::new(b'Y').u32(1).cstr("public").cstr("mood").0, false).unwrap(),
            Message::Type { .. }
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let ins = Msg::new(b'I').u32(16384).u8(b'N').i16(2).bin(&5i64.to_be_bytes()).bin(b"text").0;
        for cut in 0..ins.len() {
            assert!(parse(&ins[..cut], false).is_err(), "cut at {cut}");
        }
        assert!(parse(b"", false).is_err());
        assert!(parse(b"Z", false).is_err());
        assert!(parse(&Msg::new(b'I').u32(1).u8(b'N').i16(1).u8(b'b').i32(-5).0, false).is_err());
        assert!(parse(&Msg::new(b'T').u32(u32::MAX).u8(0).0, false).is_err());
        // Pseudo-random bytes after every tag never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for tag in b"BCORYIUDTMSEcA" {
            for _ in 0..2000 {
                let mut buf = vec![*tag];
                for _ in 0..(x % 64) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    buf.push(x as u8);
                }
                let _ = parse(&buf, x.is_multiple_of(2));
            }
        }
    }
}
