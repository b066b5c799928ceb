//! MQTT's data representations (section 1.5): two- and four-byte integers, variable byte
//! integers, UTF-8 strings and binary data, read from a `Bytes` without copying and written
//! into a `BytesMut`.

use bytes::{BufMut, Bytes, BytesMut};

use super::DecodeError;

/// The largest value a variable byte integer can hold (section 1.5.5).
pub const VAR_INT_MAX: u32 = 268_435_455;

/// A UTF-8 string as MQTT defines it: well-formed UTF-8 without U+0000, at most 65,535
/// bytes. It is a `Bytes` slice of the packet it came from, so decoding copies nothing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttStr(Bytes);

impl MqttStr {
    /// Checks `bytes` against [MQTT-1.5.4-1] and [MQTT-1.5.4-2] and wraps it.
    pub fn from_bytes(bytes: Bytes, field: &'static str) -> Result<MqttStr, DecodeError> {
        validate_utf8(&bytes, field)?;
        Ok(MqttStr(bytes))
    }

    pub const fn from_static(s: &'static str) -> MqttStr {
        MqttStr(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checked that the bytes are UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for MqttStr {
    /// Copies `s`. Panics on U+0000, which MQTT forbids: building such a string is a bug in
    /// the caller, not bad input from a peer.
    fn from(s: &str) -> MqttStr {
        assert!(!s.contains('\0'), "MQTT strings cannot contain U+0000");
        MqttStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for MqttStr {
    fn from(s: String) -> MqttStr {
        assert!(!s.contains('\0'), "MQTT strings cannot contain U+0000");
        MqttStr(Bytes::from(s))
    }
}

impl std::ops::Deref for MqttStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for MqttStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MqttStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for MqttStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

fn validate_utf8(bytes: &[u8], field: &'static str) -> Result<(), DecodeError> {
    // U+0000 is only ever the single byte 0 in well-formed UTF-8, so a byte scan finds it.
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter { field });
    }
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })?;
    Ok(())
}

/// A cursor over the body of one packet. Every read names the field it reads, so that an
/// error says where the packet went wrong.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        let slice = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(slice)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let byte = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeError::UnexpectedEnd { field })?;
        self.pos += 1;
        Ok(byte)
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        if self.remaining() < 2 {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        let value = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        Ok(value)
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        if self.remaining() < 4 {
            return Err(DecodeError::UnexpectedEnd { field });
        }
        let bytes = &self.buf[self.pos..self.pos + 4];
        let value = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        self.pos += 4;
        Ok(value)
    }

    pub fn var_int(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        match parse_var_int(&self.buf[self.pos..], field)? {
            Some((value, len)) => {
                self.pos += len;
                Ok(value)
            }
            None => Err(DecodeError::UnexpectedEnd { field }),
        }
    }

    /// Two-byte length followed by that many bytes (section 1.5.6).
    pub fn binary(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)? as usize;
        self.take(len, field)
    }

    /// Two-byte length followed by UTF-8 (section 1.5.4).
    pub fn string(&mut self, field: &'static str) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary(field)?;
        MqttStr::from_bytes(bytes, field)
    }

    /// A nested reader over the next `len` bytes (a property block).
    pub fn sub_reader(&mut self, len: usize, field: &'static str) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(len, field)?))
    }

    /// Everything not read yet (a PUBLISH payload, a will payload is length-prefixed).
    pub fn rest(&mut self) -> Bytes {
        let rest = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        rest
    }
}

/// Parses a variable byte integer at the start of `bytes`: `Ok(None)` when `bytes` ends
/// before the integer does, otherwise the value and the number of bytes it used.
pub(crate) fn parse_var_int(
    bytes: &[u8],
    field: &'static str,
) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            // A last byte of 0 after other bytes means a shorter form existed.
            if index > 0 && byte == 0 {
                return Err(DecodeError::NonMinimalVarInt { field });
            }
            return Ok(Some((value, index + 1)));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::VarIntTooLong { field });
    }
    Ok(None)
}

pub(crate) fn var_int_len(value: u32) -> usize {
    debug_assert!(value <= VAR_INT_MAX);
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_var_int(buf: &mut BytesMut, mut value: u32) {
    debug_assert!(
        value <= VAR_INT_MAX,
        "variable byte integer {value} too large"
    );
    loop {
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

pub(crate) fn put_binary(buf: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(
        bytes.len() <= usize::from(u16::MAX),
        "field over 65,535 bytes"
    );
    buf.put_u16(bytes.len() as u16);
    buf.put_slice(bytes);
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &MqttStr) {
    put_binary(buf, s.as_bytes());
}

/// Encoded size of a string or binary field: length prefix plus bytes.
pub(crate) fn binary_len(len: usize) -> usize {
    2 + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_int_boundaries_round_trip() {
        for value in [
            0,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            VAR_INT_MAX,
        ] {
            let mut buf = BytesMut::new();
            put_var_int(&mut buf, value);
            assert_eq!(buf.len(), var_int_len(value));
            assert_eq!(
                parse_var_int(&buf, "test").unwrap(),
                Some((value, buf.len()))
            );
        }
    }

    #[test]
    fn var_int_incomplete_and_too_long() {
        assert_eq!(parse_var_int(&[0x80, 0x80], "t").unwrap(), None);
        assert_eq!(
            parse_var_int(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01], "t"),
            Err(DecodeError::VarIntTooLong { field: "t" })
        );
        assert_eq!(
            parse_var_int(&[0x80, 0x00], "t"),
            Err(DecodeError::NonMinimalVarInt { field: "t" })
        );
    }
}
