//! Reading binlog files (offline, tests, tools): safe framing around
//! `mysql_common`'s event parser, and expansion of TRANSACTION_PAYLOAD
//! events, so the events come out exactly as the live stream delivers them.

use std::io::Read;

use mysql_common::binlog::EventStreamReader;
use mysql_common::binlog::consts::{BinlogChecksumAlg, BinlogVersion, EventType, TransactionPayloadCompressionType};
use mysql_common::binlog::events::{Event, TransactionPayloadEvent};

use crate::MysqlError;

const HEADER_LEN: usize = 19;
const MAGIC: [u8; 4] = [0xfe, b'b', b'i', b'n'];
/// Largest decompressed TRANSACTION_PAYLOAD accepted (MySQL caps events at 1 GiB).
const MAX_PAYLOAD: u64 = 1 << 30;

/// An iterator over the events of a binlog file held in memory.
///
/// Yields `(offset, event)`; `offset` is the start of the event in the file
/// (for events inside a TRANSACTION_PAYLOAD, the payload event's offset).
/// Events inside a payload are yielded right after the payload event, with
/// checksums disabled, as `mysql_async`'s binlog stream does. Malformed or
/// truncated input yields one error and ends the iteration; it never panics.
pub struct BinlogFileReader<'a> {
    data: &'a [u8],
    pos: usize,
    esr: EventStreamReader,
    payload: Option<(Vec<u8>, usize, usize)>,
    done: bool,
    name: String,
}

impl<'a> BinlogFileReader<'a> {
    /// `name` is used in errors only.
    pub fn new(name: &str, data: &'a [u8]) -> Result<Self, MysqlError> {
        if data.get(..4) != Some(&MAGIC[..]) {
            return Err(MysqlError::Protocol { file: name.to_owned(), pos: 0, reason: "not a binlog file".into() });
        }
        Ok(BinlogFileReader {
            data,
            pos: 4,
            esr: EventStreamReader::new(BinlogVersion::Version4),
            payload: None,
            done: false,
            name: name.to_owned(),
        })
    }

    fn err(&mut self, reason: String) -> Option<Result<(u64, Event), MysqlError>> {
        self.done = true;
        Some(Err(MysqlError::Protocol { file: self.name.clone(), pos: self.pos as u64, reason }))
    }

    fn checksum_len(&self, event_type: u8) -> usize {
        if event_type == EventType::FORMAT_DESCRIPTION_EVENT as u8 {
            return 0;
        }
        match self.esr.get_fde().footer().get_checksum_alg() {
            Ok(None) | Ok(Some(BinlogChecksumAlg::BINLOG_CHECKSUM_ALG_OFF)) => 0,
            _ => 4,
        }
    }
}

/// Checks a header at `buf` and returns the event size.
fn frame(buf: &[u8], min_body: usize) -> Result<usize, String> {
    let header = buf.get(..HEADER_LEN).ok_or_else(|| format!("truncated event header ({} bytes left)", buf.len()))?;
    let size = u32::from_le_bytes([header[9], header[10], header[11], header[12]]) as usize;
    if size < HEADER_LEN + min_body {
        return Err(format!("event size {size} is too small"));
    }
    if size > buf.len() {
        return Err(format!("truncated event: {size} bytes declared, {} left", buf.len()));
    }
    Ok(size)
}

impl Iterator for BinlogFileReader<'_> {
    type Item = Result<(u64, Event), MysqlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some((buf, off, at)) = self.payload.take()
            && off < buf.len()
        {
            let size = match frame(&buf[off..], 0) {
                Ok(s) => s,
                Err(e) => return self.err(format!("in TRANSACTION_PAYLOAD: {e}")),
            };
            return match self.esr.read_decompressed(&buf[off..off + size]) {
                Ok(Some(ev)) => {
                    self.payload = Some((buf, off + size, at));
                    Some(Ok((at as u64, ev)))
                }
                Ok(None) => self.err("empty event in TRANSACTION_PAYLOAD".into()),
                Err(e) => self.err(format!("in TRANSACTION_PAYLOAD: {e}")),
            };
        }
        if self.pos >= self.data.len() {
            return None;
        }
        let rest = &self.data[self.pos..];
        let ty = rest.get(4).copied().unwrap_or(0);
        let size = match frame(rest, self.checksum_len(ty)) {
            Ok(s) => s,
            Err(e) => return self.err(e),
        };
        let at = self.pos;
        // Verify the checksum before any parser sees the event.
        if self.checksum_len(ty) == 4 {
            let (body, crc) = rest[..size].split_at(size - 4);
            if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
                return self.err(format!("CRC32 mismatch on event type {ty}"));
            }
        }
        let ev = match self.esr.read(&rest[..size]) {
            Ok(Some(ev)) => ev,
            Ok(None) => return None,
            Err(e) => return self.err(e.to_string()),
        };
        self.pos += size;
        if ev.header().event_type_raw() == EventType::TRANSACTION_PAYLOAD_EVENT as u8 {
            match decompress(&ev) {
                Ok(buf) => self.payload = Some((buf, 0, at)),
                Err(e) => return self.err(format!("TRANSACTION_PAYLOAD: {e}")),
            }
        }
        Some(Ok((at as u64, ev)))
    }
}

/// Parses the TRANSACTION_PAYLOAD header (field TLVs, then the payload).
fn payload_header(data: &[u8]) -> Result<(u64, u64, &[u8]), String> {
    let mut r = crate::decode::ByteReader::new(data);
    let (mut size, mut compression, mut uncompressed) = (None, None, 0u64);
    loop {
        match r.lenenc()? {
            0 => break,
            field => {
                let len = usize::try_from(r.lenenc()?).map_err(|_| "field too long".to_owned())?;
                let mut v = crate::decode::ByteReader::new(r.take(len)?);
                match field {
                    1 => size = Some(v.lenenc()?),
                    2 => compression = Some(v.lenenc()?),
                    3 => uncompressed = v.lenenc()?,
                    _ => {}
                }
            }
        }
    }
    let size = usize::try_from(size.ok_or("no payload size")?).map_err(|_| "payload too long".to_owned())?;
    let payload = r.take(size)?;
    Ok((compression.ok_or("no compression type")?, uncompressed, payload))
}

fn decompress(ev: &Event) -> Result<Vec<u8>, String> {
    let (compression, expected, payload) = payload_header(ev.data())?;
    let algorithm = match compression {
        0 => TransactionPayloadCompressionType::ZSTD,
        255 => TransactionPayloadCompressionType::NONE,
        x => return Err(format!("unknown compression type {x}")),
    };
    let tpe = TransactionPayloadEvent::new(payload.len() as u64, algorithm, expected, payload);
    if expected > MAX_PAYLOAD {
        return Err(format!("uncompressed size {expected} exceeds the limit"));
    }
    let limit = if expected > 0 { expected } else { MAX_PAYLOAD };
    let reader = tpe.decompressed().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).min(64 << 20));
    reader.take(limit.saturating_add(1)).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() as u64 > limit || (expected > 0 && out.len() as u64 != expected) {
        return Err(format!("decompressed to {} bytes, header says {expected}", out.len()));
    }
    Ok(out)
}
