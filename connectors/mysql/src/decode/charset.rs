//! Character sets: collation ids from the TABLE_MAP metadata (or charset
//! names from information_schema) to a text decoder.

use mysql_common::collations::{Collation, CollationId};

/// How the bytes of a character column become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// `binary` (collation 63): the column holds bytes, not text.
    Binary,
    /// `utf8mb4`, `utf8mb3` / `utf8`.
    Utf8,
    /// MySQL `latin1`, which is Windows-1252 with the five unassigned bytes
    /// mapped to the C1 controls of the same value.
    Latin1,
    Ascii,
    /// `ucs2` (big-endian UCS-2).
    Ucs2,
    /// `utf16` (big-endian).
    Utf16,
    Utf16Le,
    /// `utf32` (big-endian).
    Utf32,
    /// A charset this crate cannot decode (e.g. `sjis`, `gbk`): the column is
    /// captured as bytes so nothing is lost.
    Unsupported,
}

impl Charset {
    /// The charset of a collation id (MySQL ids, plus MariaDB's NO PAD ids
    /// 1024..2047 and UCA 14.0.0 ids 2048..).
    pub fn from_collation_id(id: u16) -> Charset {
        match id {
            63 => return Charset::Binary,
            // MariaDB 10.10+ utf8mb3_uca1400_* and utf8mb4_uca1400_*.
            2048..=2559 => return Charset::Utf8,
            2560..=2815 => return Charset::Ucs2,
            2816..=3071 => return Charset::Utf16,
            3072..=3327 => return Charset::Utf32,
            _ => {}
        }
        let resolved = Collation::resolve(CollationId::from(id));
        let cs = Charset::from_name(resolved.charset());
        if cs == Charset::Unsupported && (1024..2048).contains(&id) {
            // MariaDB NO PAD collations are numbered base + 1024.
            return Charset::from_name(Collation::resolve(CollationId::from(id - 1024)).charset());
        }
        cs
    }

    /// The charset of an information_schema `CHARACTER_SET_NAME`.
    pub fn from_name(name: &str) -> Charset {
        match name.to_ascii_lowercase().as_str() {
            "utf8mb4" | "utf8mb3" | "utf8" => Charset::Utf8,
            "latin1" => Charset::Latin1,
            "ascii" => Charset::Ascii,
            "binary" => Charset::Binary,
            "ucs2" => Charset::Ucs2,
            "utf16" => Charset::Utf16,
            "utf16le" => Charset::Utf16Le,
            "utf32" => Charset::Utf32,
            _ => Charset::Unsupported,
        }
    }

    /// Whether values of this charset become `Value::String`.
    pub fn is_text(self) -> bool {
        !matches!(self, Charset::Binary | Charset::Unsupported)
    }

    /// Decodes `bytes` as text. The error names the problem, never the bytes.
    pub fn decode(self, bytes: &[u8]) -> Result<String, String> {
        match self {
            Charset::Utf8 => std::str::from_utf8(bytes)
                .map(str::to_owned)
                .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to())),
            Charset::Latin1 => Ok(bytes.iter().map(|b| latin1_char(*b)).collect()),
            Charset::Ascii => {
                if bytes.is_ascii() {
                    Ok(bytes.iter().map(|b| char::from(*b)).collect())
                } else {
                    Err("non-ASCII byte in an ascii column".into())
                }
            }
            Charset::Ucs2 | Charset::Utf16 | Charset::Utf16Le => {
                if !bytes.len().is_multiple_of(2) {
                    return Err("odd number of bytes in a UTF-16 column".into());
                }
                let units = bytes.chunks_exact(2).map(|c| {
                    if self == Charset::Utf16Le {
                        u16::from_le_bytes([c[0], c[1]])
                    } else {
                        u16::from_be_bytes([c[0], c[1]])
                    }
                });
                char::decode_utf16(units)
                    .collect::<Result<String, _>>()
                    .map_err(|_| "invalid UTF-16 sequence".to_owned())
            }
            Charset::Utf32 => {
                if !bytes.len().is_multiple_of(4) {
                    return Err("length of a UTF-32 column is not a multiple of 4".into());
                }
                bytes
                    .chunks_exact(4)
                    .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect::<Option<String>>()
                    .ok_or_else(|| "invalid UTF-32 code point".to_owned())
            }
            Charset::Binary | Charset::Unsupported => Err("column is not a text column".into()),
        }
    }
}

/// MySQL's latin1 is cp1252; bytes 0x81, 0x8D, 0x8F, 0x90 and 0x9D map to
/// the code points of the same value (as MySQL converts them).
fn latin1_char(b: u8) -> char {
    const HIGH: [u32; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D,
        0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A,
        0x0153, 0x009D, 0x017E, 0x0178,
    ];
    if (0x80..0xA0).contains(&b) {
        char::from_u32(HIGH[usize::from(b - 0x80)]).unwrap_or(char::REPLACEMENT_CHARACTER)
    } else {
        char::from(b)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn collations_map_to_charsets() {
        assert_eq!(Charset::from_collation_id(63), Charset::Binary);
        assert_eq!(Charset::from_collation_id(45), Charset::Utf8); // utf8mb4_general_ci
        assert_eq!(Charset::from_collation_id(255), Charset::Utf8); // utf8mb4_0900_ai_ci
        assert_eq!(Charset::from_collation_id(33), Charset::Utf8); // utf8mb3_general_ci
        assert_eq!(Charset::from_collation_id(8), Charset::Latin1);
        assert_eq!(Charset::from_collation_id(1069), Charset::Utf8); // MariaDB utf8mb4_general_nopad_ci
        assert_eq!(Charset::from_collation_id(2304), Charset::Utf8); // MariaDB utf8mb4_uca1400_ai_ci
        assert_eq!(Charset::from_collation_id(13), Charset::Unsupported); // sjis
        assert_eq!(Charset::from_name("UTF8MB4"), Charset::Utf8);
    }

    #[test]
    fn text_decoding() {
        assert_eq!(Charset::Latin1.decode(&[0x63, 0x61, 0x66, 0xe9, 0x80]).unwrap(), "café€");
        assert_eq!(Charset::Utf8.decode("😀".as_bytes()).unwrap(), "😀");
        assert!(Charset::Utf8.decode(&[0xff]).is_err());
        assert!(Charset::Ascii.decode(&[0xff]).is_err());
        assert_eq!(Charset::Utf16.decode(&[0xd8, 0x3d, 0xde, 0x00]).unwrap(), "😀");
        assert_eq!(Charset::Ucs2.decode(&[0x00, 0x41]).unwrap(), "A");
        assert_eq!(Charset::Utf32.decode(&[0, 1, 0xf6, 0x00]).unwrap(), "😀");
        assert!(Charset::Utf16.decode(&[0xd8]).is_err());
    }
}
