//! MQTT's primitive data types on the wire: integers, variable byte integers, UTF-8 strings, binary
//! data. Reading never panics and never copies (strings and binary data are `Bytes` slices of the
//! packet); writing never fails. Nothing here knows about packets.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::DecodeError;

/// The largest value a variable byte integer can carry (four bytes of seven bits) [MQTT-1.5.5].
pub const VARINT_MAX: u32 = 268_435_455;

/// A cursor over one packet's body. Every read checks the remaining length first.
pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub(crate) fn new(bytes: Bytes) -> Self {
        Self { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.bytes.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.bytes.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.bytes.get_u32())
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match decode_varint(&self.bytes)? {
            Some((value, len)) => {
                self.bytes.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::UnexpectedEnd),
        }
    }

    /// A two-byte length followed by that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A two-byte length followed by well-formed UTF-8 without U+0000 [MQTT-1.5.4-1, -2].
    pub(crate) fn string(&mut self) -> Result<ByteString, DecodeError> {
        let raw = self.binary()?;
        utf8(raw)
    }

    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        self.need(len)?;
        Ok(self.bytes.split_to(len))
    }

    /// Everything left: the PUBLISH payload.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.bytes)
    }

    /// A packet must be consumed exactly: leftover bytes mean the lengths inside it lied.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes)
        }
    }

    fn need(&self, len: usize) -> Result<(), DecodeError> {
        if self.bytes.len() >= len {
            Ok(())
        } else {
            Err(DecodeError::UnexpectedEnd)
        }
    }
}

/// Validates MQTT's UTF-8 rules without copying. Rust's UTF-8 check already rejects surrogates
/// and overlong forms; MQTT additionally forbids U+0000 [MQTT-1.5.4-2].
pub(crate) fn utf8(raw: Bytes) -> Result<ByteString, DecodeError> {
    if raw.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    ByteString::try_from(raw).map_err(|_| DecodeError::InvalidUtf8)
}

/// Decodes a variable byte integer from the start of `buf`: `Ok(None)` when `buf` ends before the
/// last byte, an error after four bytes that all say "more follows" [MQTT-1.5.5-1].
pub(crate) fn decode_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedVarint)
    } else {
        Ok(None)
    }
}

pub(crate) fn varint_len(value: u32) -> usize {
    debug_assert!(value <= VARINT_MAX);
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, mut value: u32) {
    debug_assert!(value <= VARINT_MAX);
    loop {
        // Invariant: masked to seven bits, so the cast keeps every bit.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes a length-prefixed field. Callers build values from decoded packets or from our own
/// limits, so a field never exceeds 65,535 bytes; the assertion checks that from this side.
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= usize::from(u16::MAX));
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

pub(crate) fn put_string(buf: &mut BytesMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

/// Length of a length-prefixed field on the wire.
pub(crate) fn field_len(data: &[u8]) -> usize {
    2 + data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_examples_from_the_spec() {
        // Table 1.1 of MQTT 5.0 section 1.5.5: the edges of each length.
        for (value, bytes) in [
            (0u32, &[0x00][..]),
            (127, &[0x7F][..]),
            (128, &[0x80, 0x01][..]),
            (16_383, &[0xFF, 0x7F][..]),
            (16_384, &[0x80, 0x80, 0x01][..]),
            (2_097_151, &[0xFF, 0xFF, 0x7F][..]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01][..]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F][..]),
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(&buf[..], bytes, "encoding {value}");
            assert_eq!(varint_len(value), bytes.len());
            assert_eq!(decode_varint(bytes).unwrap(), Some((value, bytes.len())));
            assert_eq!(decode_varint(&bytes[..bytes.len() - 1]).unwrap(), None);
        }
    }

    #[test]
    fn fifth_varint_byte_is_malformed() {
        assert_eq!(
            decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::MalformedVarint)
        );
        assert_eq!(decode_varint(&[0x80, 0x80, 0x80, 0x80]), Err(DecodeError::MalformedVarint));
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        assert_eq!(utf8(Bytes::from_static(b"a\0b")), Err(DecodeError::NullCharacter));
        // An encoded surrogate (U+D800) and an overlong '/'.
        assert_eq!(utf8(Bytes::from_static(b"\xED\xA0\x80")), Err(DecodeError::InvalidUtf8));
        assert_eq!(utf8(Bytes::from_static(b"\xC0\xAF")), Err(DecodeError::InvalidUtf8));
        assert_eq!(&*utf8(Bytes::from_static("héllo".as_bytes())).unwrap(), "héllo");
    }

    #[test]
    fn reader_reports_short_fields() {
        let mut reader = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert_eq!(reader.string(), Err(DecodeError::UnexpectedEnd));
        let mut reader = Reader::new(Bytes::from_static(&[0x01]));
        assert_eq!(reader.u16(), Err(DecodeError::UnexpectedEnd));
    }
}
