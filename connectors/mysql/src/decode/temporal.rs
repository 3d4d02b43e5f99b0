//! Temporal types: the packed binlog formats of DATE, TIME(2), DATETIME(2),
//! TIMESTAMP(2) to the model's exact values.

use lablake_model::{Date, DateTime, Value};

use super::reader::{ReadResult, Reader, sign_extend};

const TIMEF_INT_OFS: i64 = 0x80_0000;
const TIMEF_OFS: i64 = 0x8000_0000_0000;
const DATETIMEF_INT_OFS: i64 = 0x80_0000_0000;

/// `NEWDATE`: 3 bytes little-endian `y << 9 | m << 5 | d`. Zero parts are kept.
pub(crate) fn date(r: &mut Reader<'_>) -> ReadResult<Value> {
    let v = r.uint_le(3)?;
    Ok(Value::Date(Date { year: (v >> 9) as u16, month: ((v >> 5) & 15) as u8, day: (v & 31) as u8 }))
}

/// Old `TIME`: 3 bytes little-endian signed `HHMMSS`.
pub(crate) fn time_v1(r: &mut Reader<'_>) -> ReadResult<Value> {
    let v = sign_extend(r.uint_le(3)?, 24);
    let a = v.abs();
    let secs = (a / 10_000) * 3600 + ((a / 100) % 100) * 60 + a % 100;
    Ok(Value::Time(v.signum() * secs * 1_000_000))
}

/// `TIME2` with `fsp` fraction digits: a signed duration in microseconds.
pub(crate) fn time2(r: &mut Reader<'_>, fsp: u8) -> ReadResult<Value> {
    let packed: i64 = match fsp {
        0 => (r.uint_be(3)? as i64 - TIMEF_INT_OFS) << 24,
        1 | 2 => {
            let mut int = r.uint_be(3)? as i64 - TIMEF_INT_OFS;
            let mut frac = i64::from(r.u8()?);
            if int < 0 && frac != 0 {
                int += 1;
                frac -= 0x100;
            }
            (int << 24) + frac * 10_000
        }
        3 | 4 => {
            let mut int = r.uint_be(3)? as i64 - TIMEF_INT_OFS;
            let mut frac = r.uint_be(2)? as i64;
            if int < 0 && frac != 0 {
                int += 1;
                frac -= 0x10000;
            }
            (int << 24) + frac * 100
        }
        5 | 6 => r.uint_be(6)? as i64 - TIMEF_OFS,
        x => return Err(format!("fractional-second precision {x} out of range")),
    };
    let negative = packed < 0;
    let p = packed.unsigned_abs();
    let hms = p >> 24;
    let micros = (p % (1 << 24)) as i64;
    let hour = ((hms >> 12) % (1 << 10)) as i64;
    let minute = ((hms >> 6) % (1 << 6)) as i64;
    let second = (hms % (1 << 6)) as i64;
    if minute > 59 || second > 59 || micros > 999_999 {
        return Err("invalid TIME value".into());
    }
    let total = ((hour * 60 + minute) * 60 + second) * 1_000_000 + micros;
    Ok(Value::Time(if negative { -total } else { total }))
}

/// Old `DATETIME`: 8 bytes little-endian `YYYYMMDDhhmmss`.
pub(crate) fn datetime_v1(r: &mut Reader<'_>) -> ReadResult<Value> {
    let v = r.uint_le(8)?;
    let (d, t) = (v / 1_000_000, v % 1_000_000);
    if d / 10_000 > u64::from(u16::MAX) {
        return Err("invalid DATETIME value".into());
    }
    Ok(Value::DateTime(DateTime {
        date: Date { year: (d / 10_000) as u16, month: ((d / 100) % 100) as u8, day: (d % 100) as u8 },
        hour: (t / 10_000) as u8,
        minute: ((t / 100) % 100) as u8,
        second: (t % 100) as u8,
        micros: 0,
    }))
}

/// `DATETIME2`: 5 bytes big-endian packed `((y*13+m) << 5 | d) << 17 | h << 12 | mi << 6 | s`,
/// then the fraction.
pub(crate) fn datetime2(r: &mut Reader<'_>, fsp: u8) -> ReadResult<Value> {
    let int = r.uint_be(5)? as i64 - DATETIMEF_INT_OFS;
    let frac: i64 = match fsp {
        0 => 0,
        1 | 2 => i64::from(r.u8()? as i8) * 10_000,
        3 | 4 => sign_extend(r.uint_be(2)?, 16) * 100,
        5 | 6 => sign_extend(r.uint_be(3)?, 24),
        x => return Err(format!("fractional-second precision {x} out of range")),
    };
    let packed = (int << 24) + frac;
    let p = packed.unsigned_abs();
    let micros = (p % (1 << 24)) as u32;
    let ymdhms = p >> 24;
    let ymd = ymdhms >> 17;
    let ym = ymd >> 5;
    let hms = ymdhms % (1 << 17);
    let year = ym / 13;
    if year > 9999 || micros > 999_999 {
        return Err("invalid DATETIME value".into());
    }
    Ok(Value::DateTime(DateTime {
        date: Date { year: year as u16, month: (ym % 13) as u8, day: (ymd % (1 << 5)) as u8 },
        hour: (hms >> 12) as u8,
        minute: ((hms >> 6) % (1 << 6)) as u8,
        second: (hms % (1 << 6)) as u8,
        micros,
    }))
}

/// Old `TIMESTAMP`: 4 bytes little-endian seconds since the epoch.
pub(crate) fn timestamp_v1(r: &mut Reader<'_>) -> ReadResult<Value> {
    Ok(Value::Timestamp(r.uint_le(4)? as i64 * 1_000_000))
}

/// `TIMESTAMP2`: 4 bytes big-endian seconds, then the fraction. The zero
/// timestamp `0000-00-00 00:00:00` becomes `Timestamp(0)`.
pub(crate) fn timestamp2(r: &mut Reader<'_>, fsp: u8) -> ReadResult<Value> {
    let secs = r.uint_be(4)? as i64;
    let micros = match fsp {
        0 => 0,
        1 | 2 => i64::from(r.u8()?) * 10_000,
        3 | 4 => r.uint_be(2)? as i64 * 100,
        5 | 6 => r.uint_be(3)? as i64,
        x => return Err(format!("fractional-second precision {x} out of range")),
    };
    if micros > 999_999 {
        return Err("invalid TIMESTAMP fraction".into());
    }
    Ok(Value::Timestamp(secs * 1_000_000 + micros))
}

/// Formats a TIME duration as MySQL prints it (`-838:59:59.000000`).
pub(crate) fn format_time(micros: i64, with_fraction: bool) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let a = micros.unsigned_abs();
    let (secs, frac) = (a / 1_000_000, a % 1_000_000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if with_fraction { format!("{sign}{h:02}:{m:02}:{s:02}.{frac:06}") } else { format!("{sign}{h:02}:{m:02}:{s:02}") }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn time2_bytes(neg: bool, h: i64, m: i64, s: i64, us: i64) -> Vec<u8> {
        // MySQL: my_time_packed_to_binary(dec = 6) stores packed + TIMEF_OFS in 6 bytes.
        let hms = (h << 12) | (m << 6) | s;
        let mut packed = (hms << 24) + us;
        if neg {
            packed = -packed;
        }
        let v = (packed + TIMEF_OFS) as u64;
        v.to_be_bytes()[2..].to_vec()
    }

    #[test]
    fn time2_all_precisions() {
        let b = time2_bytes(true, 838, 59, 59, 0);
        assert_eq!(time2(&mut Reader::new(&b), 6).unwrap(), Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000));
        let b = time2_bytes(false, 12, 34, 56, 789_012);
        assert_eq!(
            time2(&mut Reader::new(&b), 6).unwrap(),
            Value::Time((12 * 3600 + 34 * 60 + 56) * 1_000_000 + 789_012)
        );
        let b = time2_bytes(true, 0, 0, 0, 1);
        assert_eq!(time2(&mut Reader::new(&b), 6).unwrap(), Value::Time(-1));
        // fsp 0: 3 bytes; -507:48:27 is the time_issue fixture value.
        let hms = (507i64 << 12) | (48 << 6) | 27;
        let v = (TIMEF_INT_OFS - hms) as u64;
        let b = &v.to_be_bytes()[5..];
        assert_eq!(time2(&mut Reader::new(b), 0).unwrap(), Value::Time(-(507 * 3600 + 48 * 60 + 27) * 1_000_000));
        // fsp 2, negative with fraction: -00:00:01.50
        // MySQL stores -0.50 as intpart -1 (floor) and the byte (char)(-50).
        let mut b = ((TIMEF_INT_OFS - 1) as u64).to_be_bytes()[5..].to_vec();
        b.push((0x100 - 50) as u8);
        assert_eq!(time2(&mut Reader::new(&b), 2).unwrap(), Value::Time(-500_000));
        assert!(time2(&mut Reader::new(&[0x80]), 0).is_err());
        assert!(time2(&mut Reader::new(&[0; 6]), 7).is_err());
    }

    #[test]
    fn datetime2_and_timestamp2() {
        // 2024-02-29 13:14:15.123456
        let ym = 2024 * 13 + 2;
        let int: i64 = ((((ym << 5) | 29) << 17) | (13 << 12) | (14 << 6) | 15) + DATETIMEF_INT_OFS;
        let mut b = (int as u64).to_be_bytes()[3..].to_vec();
        b.extend_from_slice(&123_456u32.to_be_bytes()[1..]);
        let want = DateTime {
            date: Date { year: 2024, month: 2, day: 29 },
            hour: 13,
            minute: 14,
            second: 15,
            micros: 123_456,
        };
        assert_eq!(datetime2(&mut Reader::new(&b), 6).unwrap(), Value::DateTime(want));
        let zero = (DATETIMEF_INT_OFS as u64).to_be_bytes()[3..].to_vec();
        let Value::DateTime(z) = datetime2(&mut Reader::new(&zero), 0).unwrap() else { panic!() };
        assert_eq!(z.date, Date { year: 0, month: 0, day: 0 });
        let mut b = 1_700_000_000u32.to_be_bytes().to_vec();
        b.extend_from_slice(&[0x01, 0xe2, 0x40]); // 123456
        assert_eq!(timestamp2(&mut Reader::new(&b), 6).unwrap(), Value::Timestamp(1_700_000_000_123_456));
        assert_eq!(format_time(-1_500_000, true), "-00:00:01.500000");
        assert_eq!(format_time(3_600_000_000 * 100, false), "100:00:00");
    }
}
