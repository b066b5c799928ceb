//! The on-disk form of one spooled Kafka record, checked before it is written and after it
//! is read (a CRC-32C over everything after the checksum field).
//!
//! ```text
//! len:u32  crc:u32  seq:u64  mapping:u16  cluster_len:u8  topic_len:u16  key_len:u32  header_count:u16
//! payload_len:u32  cluster  topic  key  (name_len:u8 name value_len:u32 value)*  payload
//! ```
//! `len` counts the bytes after itself; 0 marks the zero padding after the last record of a
//! flush, so a reader stops there.

use bytes::Bytes;

/// Bytes before the variable parts.
const FIXED_BYTES: usize = 4 + 4 + 8 + 2 + 1 + 2 + 4 + 2 + 4;
/// A record larger than this is damage, not data: bounds what a corrupt length can make a
/// reader try to read.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A Kafka record as the spool keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    pub seq: u64,
    /// Index of the mapping that made it, for its counters (checked against the
    /// configuration on replay).
    pub mapping: u16,
    /// Cluster by name: indexes may change with the configuration between restarts.
    pub cluster: String,
    pub topic: String,
    pub key: Vec<u8>,
    pub headers: Vec<(String, Bytes)>,
    pub payload: Bytes,
}

impl SpoolRecord {
    pub fn encoded_len(&self) -> usize {
        FIXED_BYTES
            + self.cluster.len()
            + self.topic.len()
            + self.key.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| 1 + n.len() + 4 + v.len())
                .sum::<usize>()
            + self.payload.len()
    }
}

/// Appends `record` to `out`. Panics on fields too long for their length prefix: the
/// caller builds records from MQTT packets and config, which cannot produce them.
pub fn encode(record: &SpoolRecord, out: &mut Vec<u8>) {
    let start = out.len();
    let len = record.encoded_len();
    assert!(len <= RECORD_BYTES_MAX, "spool record of {len} bytes");
    assert!(record.cluster.len() <= usize::from(u8::MAX));
    assert!(record.topic.len() <= usize::from(u16::MAX));
    out.reserve(len);
    out.extend_from_slice(&((len - 4) as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // checksum, filled below
    out.extend_from_slice(&record.seq.to_le_bytes());
    out.extend_from_slice(&record.mapping.to_le_bytes());
    out.push(record.cluster.len() as u8);
    out.extend_from_slice(&(record.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(&(record.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
    out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(record.cluster.as_bytes());
    out.extend_from_slice(record.topic.as_bytes());
    out.extend_from_slice(&record.key);
    for (name, value) in &record.headers {
        assert!(name.len() <= usize::from(u8::MAX));
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    out.extend_from_slice(&record.payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, len);
    // Paired check (STYLE 11): what we wrote reads back as what we meant.
    debug_assert_eq!(
        decode_one(&Bytes::copy_from_slice(&out[start..]))
            .ok()
            .map(|(r, _)| r),
        Some(record.clone())
    );
}

/// Why reading stopped before the end of the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Zero padding after the last record: the normal end.
    End,
    /// Not enough bytes for the record that starts here (a torn write, or a buffer that
    /// ends mid-record).
    Truncated,
    /// The checksum or the structure does not match: damage.
    Corrupt,
}

/// Decodes the record at the start of `bytes`: the record and its length, or why not.
pub fn decode_one(bytes: &Bytes) -> Result<(SpoolRecord, usize), Stop> {
    if bytes.len() < 4 {
        return Err(if bytes.iter().all(|b| *b == 0) {
            Stop::End
        } else {
            Stop::Truncated
        });
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().unwrap()) as usize;
    if body_len == 0 {
        return Err(Stop::End);
    }
    let len = body_len + 4;
    if !(FIXED_BYTES..=RECORD_BYTES_MAX).contains(&len) {
        return Err(Stop::Corrupt);
    }
    if bytes.len() < len {
        return Err(Stop::Truncated);
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
    if crc32fast::hash(&bytes[8..len]) != crc {
        return Err(Stop::Corrupt);
    }
    let mut at = 8;
    let mut take = |n: usize| -> Result<Bytes, Stop> {
        if at + n > len {
            return Err(Stop::Corrupt);
        }
        let slice = bytes.slice(at..at + n);
        at += n;
        Ok(slice)
    };
    let seq = u64::from_le_bytes(take(8)?[..].try_into().unwrap());
    let mapping = u16::from_le_bytes(take(2)?[..].try_into().unwrap());
    let cluster_len = take(1)?[0] as usize;
    let topic_len = u16::from_le_bytes(take(2)?[..].try_into().unwrap()) as usize;
    let key_len = u32::from_le_bytes(take(4)?[..].try_into().unwrap()) as usize;
    let header_count = u16::from_le_bytes(take(2)?[..].try_into().unwrap()) as usize;
    let payload_len = u32::from_le_bytes(take(4)?[..].try_into().unwrap()) as usize;
    let text = |b: Bytes| String::from_utf8(b.to_vec()).map_err(|_| Stop::Corrupt);
    let cluster = text(take(cluster_len)?)?;
    let topic = text(take(topic_len)?)?;
    let key = take(key_len)?.to_vec();
    let mut headers = Vec::with_capacity(header_count);
    for _ in 0..header_count {
        let name_len = take(1)?[0] as usize;
        let name = text(take(name_len)?)?;
        let value_len = u32::from_le_bytes(take(4)?[..].try_into().unwrap()) as usize;
        headers.push((name, take(value_len)?));
    }
    let payload = take(payload_len)?;
    if at != len {
        return Err(Stop::Corrupt);
    }
    Ok((
        SpoolRecord {
            seq,
            mapping,
            cluster,
            topic,
            key,
            headers,
            payload,
        },
        len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> SpoolRecord {
        SpoolRecord {
            seq,
            mapping: 3,
            cluster: "main".into(),
            topic: "telemetry".into(),
            key: b"device-7".to_vec(),
            headers: vec![("mqtt_topic".into(), Bytes::from_static(b"d/7/t"))],
            payload: Bytes::from(vec![seq as u8; 150]),
        }
    }

    #[test]
    fn round_trip_and_padding_end() {
        let mut out = Vec::new();
        encode(&sample(1), &mut out);
        encode(&sample(2), &mut out);
        out.extend_from_slice(&[0; 100]);
        let bytes = Bytes::from(out);
        let (first, len) = decode_one(&bytes).unwrap();
        assert_eq!(first, sample(1));
        let rest = bytes.slice(len..);
        let (second, len2) = decode_one(&rest).unwrap();
        assert_eq!(second, sample(2));
        assert_eq!(decode_one(&rest.slice(len2..)), Err(Stop::End));
    }

    #[test]
    fn torn_and_flipped_records_are_detected() {
        let mut out = Vec::new();
        encode(&sample(1), &mut out);
        let whole = Bytes::from(out.clone());
        assert_eq!(
            decode_one(&whole.slice(..whole.len() - 1)),
            Err(Stop::Truncated)
        );
        for index in [5, 12, 30, whole.len() - 1] {
            let mut flipped = out.clone();
            flipped[index] ^= 0x40;
            assert_eq!(
                decode_one(&Bytes::from(flipped)),
                Err(Stop::Corrupt),
                "byte {index}"
            );
        }
    }
}
