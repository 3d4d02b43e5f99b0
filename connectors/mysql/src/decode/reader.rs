//! A bounds-checked cursor over a byte slice. Every read returns an error
//! instead of panicking when the input is short.

/// Why a read failed. Turned into a [`crate::MysqlError`] by the caller, who
/// knows the table and column.
pub(crate) type ReadResult<T> = Result<T, String>;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn take(&mut self, n: usize) -> ReadResult<&'a [u8]> {
        if n > self.buf.len() {
            return Err(format!("needs {n} bytes, {} left in the event", self.buf.len()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> ReadResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// Little-endian unsigned integer of `n` (1..=8) bytes.
    pub(crate) fn uint_le(&mut self, n: usize) -> ReadResult<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }

    /// Big-endian unsigned integer of `n` (1..=8) bytes.
    pub(crate) fn uint_be(&mut self, n: usize) -> ReadResult<u64> {
        let b = self.take(n)?;
        Ok(b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
    }

    /// MySQL length-encoded integer.
    pub(crate) fn lenenc(&mut self) -> ReadResult<u64> {
        match self.u8()? {
            x @ 0..=0xfa => Ok(u64::from(x)),
            0xfc => self.uint_le(2),
            0xfd => self.uint_le(3),
            0xfe => self.uint_le(8),
            x => Err(format!("invalid length-encoded integer prefix 0x{x:02x}")),
        }
    }

    /// A length-prefixed byte string whose prefix is `prefix_bytes` wide (LE).
    pub(crate) fn prefixed(&mut self, prefix_bytes: usize) -> ReadResult<&'a [u8]> {
        let len = self.uint_le(prefix_bytes)?;
        let len = usize::try_from(len).map_err(|_| "length does not fit in memory".to_owned())?;
        self.take(len)
    }
}

/// Sign-extends the low `bits` bits of `v`.
pub(crate) fn sign_extend(v: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((v << shift) as i64) >> shift
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounds_checked() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.uint_le(2).unwrap(), 0x0201);
        assert!(r.uint_le(2).is_err());
        assert_eq!(r.u8().unwrap(), 3);
        assert!(r.u8().is_err());
        let mut r = Reader::new(&[0xfc, 0x01]);
        assert!(r.lenenc().is_err());
        let mut r = Reader::new(&[0x02, 0x00, b'a']);
        assert!(r.prefixed(2).is_err());
        assert_eq!(sign_extend(0xff_ffff, 24), -1);
        assert_eq!(sign_extend(0x7f_ffff, 24), 8_388_607);
    }
}
