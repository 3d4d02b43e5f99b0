//! MySQL binary DECIMAL (`NEWDECIMAL`) to exact canonical text.
//!
//! Layout (strings/decimal.cc `decimal2bin`): the integer and fraction parts
//! are stored as groups of 9 digits in 4 big-endian bytes, with a shorter
//! leading (integer) or trailing (fraction) group; the first bit is flipped
//! for sorting and negative numbers have every byte inverted.

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
const POW10: [u32; 10] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000];

/// Largest precision MySQL and MariaDB allow.
pub(crate) const MAX_PRECISION: u8 = 65;
/// Largest scale MySQL and MariaDB allow.
pub(crate) const MAX_SCALE: u8 = 38;

/// Bytes occupied by a DECIMAL(precision, scale) value.
pub(crate) fn binary_size(precision: u8, scale: u8) -> usize {
    let intg = usize::from(precision.saturating_sub(scale));
    let frac = usize::from(scale);
    (intg / 9) * 4 + DIG2BYTES[intg % 9] + (frac / 9) * 4 + DIG2BYTES[frac % 9]
}

/// Checks precision and scale from a table map.
pub(crate) fn check_precision(precision: u8, scale: u8) -> Result<(), String> {
    if precision == 0 || precision > MAX_PRECISION || scale > precision || scale > MAX_SCALE {
        return Err(format!("unsupported DECIMAL({precision},{scale})"));
    }
    Ok(())
}

/// Decodes `bytes` (exactly [`binary_size`] long) as canonical decimal text:
/// optional `-`, integer digits without leading zeros (at least `0`), and
/// exactly `scale` fraction digits. Zero is never negative.
pub(crate) fn decode(bytes: &[u8], precision: u8, scale: u8) -> Result<String, String> {
    check_precision(precision, scale)?;
    let size = binary_size(precision, scale);
    if bytes.len() != size || size == 0 {
        return Err(format!("DECIMAL({precision},{scale}) needs {size} bytes, got {}", bytes.len()));
    }
    let negative = bytes[0] & 0x80 == 0;
    let mask: u8 = if negative { 0xff } else { 0x00 };
    let mut buf = [0u8; 32];
    let buf = &mut buf[..size];
    for (dst, src) in buf.iter_mut().zip(bytes) {
        *dst = src ^ mask;
    }
    buf[0] ^= 0x80;

    let intg = usize::from(precision - scale);
    let frac = usize::from(scale);
    let mut pos = 0usize;
    let mut read_group = |digits: usize| -> Result<u32, String> {
        let n = DIG2BYTES[digits];
        let mut v: u32 = 0;
        for b in &buf[pos..pos + n] {
            v = (v << 8) | u32::from(*b);
        }
        pos += n;
        if v >= POW10[digits] {
            return Err("invalid DECIMAL digits".to_owned());
        }
        Ok(v)
    };

    // Written straight into the output: sign first (removed again for zero).
    let mut out = String::with_capacity(intg + frac + 3);
    if negative {
        out.push('-');
    }
    let digits_start = out.len();
    let lead = intg % 9;
    if lead > 0 {
        let v = read_group(lead)?;
        if v > 0 {
            push_digits(&mut out, v, 0);
        }
    }
    for _ in 0..intg / 9 {
        let v = read_group(9)?;
        if out.len() > digits_start {
            push_digits(&mut out, v, 9);
        } else if v > 0 {
            push_digits(&mut out, v, 0);
        }
    }
    let mut is_zero = out.len() == digits_start;
    if is_zero {
        out.push('0');
    }
    if frac > 0 {
        out.push('.');
        for _ in 0..frac / 9 {
            let v = read_group(9)?;
            is_zero &= v == 0;
            push_digits(&mut out, v, 9);
        }
        let tail = frac % 9;
        if tail > 0 {
            let v = read_group(tail)?;
            is_zero &= v == 0;
            push_digits(&mut out, v, tail);
        }
    }
    if negative && is_zero {
        out.remove(0);
    }
    Ok(out)
}

/// Appends `v` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut String, v: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Encodes canonical text the way MySQL's decimal2bin does (test helper).
    pub(crate) fn encode(text: &str, precision: u8, scale: u8) -> Vec<u8> {
        let negative = text.starts_with('-');
        let t = text.trim_start_matches('-');
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let intg = usize::from(precision - scale);
        let fracd = usize::from(scale);
        let int = format!("{int:0>intg$}");
        let frac = format!("{frac:0<fracd$}");
        let mut out = Vec::new();
        let mut push = |digits: &str| {
            let n = DIG2BYTES[digits.len()];
            let v: u32 = digits.parse().unwrap();
            out.extend_from_slice(&v.to_be_bytes()[4 - n..]);
        };
        let lead = intg % 9;
        if lead > 0 {
            push(&int[..lead]);
        }
        for g in int.as_bytes()[lead..].chunks(9) {
            push(std::str::from_utf8(g).unwrap());
        }
        for g in frac.as_bytes().chunks(9) {
            push(std::str::from_utf8(g).unwrap());
        }
        out[0] ^= 0x80;
        if negative {
            for b in &mut out {
                *b ^= 0xff;
            }
        }
        out
    }

    #[test]
    fn round_trips() {
        for (text, p, s) in [
            ("0.00", 5, 2),
            ("1.50", 5, 2),
            ("-1.50", 5, 2),
            ("123.456", 6, 3),
            ("-1234567890.1234567890", 20, 10),
            ("99999999999999999999999999999999999.999999999999999999999999999999", 65, 30),
            ("-99999999999999999999999999999999999.999999999999999999999999999999", 65, 30),
            ("12345678901234567890123456789012345678901234567890123456789012345", 65, 0),
            ("0.000000000000000000000000000001", 65, 30),
            ("7", 1, 0),
            ("0", 1, 0),
            ("-5", 1, 0),
            ("1000000000", 10, 0),
            ("-1000000000000000000.000000001", 28, 9),
            ("-0.000000001", 10, 9),
            ("0.123456789012", 20, 12),
            ("12.000000000000", 20, 12),
        ] {
            let bytes = encode(text, p, s);
            assert_eq!(bytes.len(), binary_size(p, s), "{text}");
            assert_eq!(decode(&bytes, p, s).unwrap(), text);
        }
    }

    #[test]
    fn negative_zero_is_zero() {
        assert_eq!(decode(&encode("-0.00", 5, 2), 5, 2).unwrap(), "0.00");
        assert_eq!(decode(&encode("-0", 12, 0), 12, 0).unwrap(), "0");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(decode(&[0x80], 5, 2).is_err());
        assert!(decode(&[0xff; 3], 5, 2).is_err()); // digits out of range
        assert!(decode(&[0x80; 4], 0, 0).is_err());
        assert!(decode(&[0x80; 4], 66, 0).is_err());
        assert!(decode(&[0x80; 4], 3, 4).is_err());
        for len in 0..40 {
            let _ = decode(&vec![0x5a; len], 65, 30);
        }
    }
}
