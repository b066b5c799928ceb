//! A message between nodes: the record value of the messages topic and of retained messages
//! in the state topic. The MQTT parts travel as an MQTT 5 PUBLISH packet, so that every
//! property crosses as the protocol defines it; a short header in front says who published
//! it, from which node, and who on the other nodes gets it.
//!
//! ```text
//! u8  version (1)
//! u8  flags: bit 0 = ordinary subscribers on other nodes get it
//! str node        (u16 length + UTF-8, as MQTT strings)
//! str publisher   (client id, for No Local [MQTT-3.8.3-3]; empty for wills' absent ones)
//! u8  shared designations, each: str group, str node (the node whose member gets it)
//! ... an MQTT 5 PUBLISH packet: QoS, retain, topic, properties, payload
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{
    decode_packet, DecodeError, MqttStr, Packet, Protocol, Publish, PublishProperties, QoS, Role,
};

const VERSION: u8 = 1;
const FLAG_ORDINARY: u8 = 1;

/// The largest envelope read back: MQTT's largest packet and room for the header.
const ENVELOPE_BYTES_MAX: u32 = u32::MAX;

/// One message as it crosses between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The node that published it.
    pub node: String,
    pub publisher: MqttStr,
    /// Ordinary (non-shared) subscribers on the other nodes get it.
    pub ordinary: bool,
    /// Shared groups whose turn fell on another node: (group, node).
    pub shared: Vec<(String, String)>,
    pub topic: MqttStr,
    pub qos: QoS,
    pub retain: bool,
    /// Without Topic Alias and Subscription Identifiers, which belong to one connection.
    pub properties: PublishProperties,
    pub payload: Bytes,
}

fn put_string(buf: &mut BytesMut, value: &str) {
    // Names and client ids are MQTT strings (at most 65,535 bytes).
    let len = value.len().min(usize::from(u16::MAX));
    buf.put_u16(len as u16);
    buf.put_slice(&value.as_bytes()[..len]);
}

impl Envelope {
    /// The record value.
    pub fn encode(&self) -> Bytes {
        let publish = Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            // QoS 1/2 packets need an identifier on the wire; it means nothing here.
            packet_id: if self.qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: self.properties.clone(),
            payload: self.payload.clone(),
        };
        let packet = Packet::Publish(publish);
        let mut buf = BytesMut::with_capacity(
            16 + self.node.len()
                + self.publisher.len()
                + packet.encoded_len(Protocol::V5)
                + self
                    .shared
                    .iter()
                    .map(|(g, n)| 4 + g.len() + n.len())
                    .sum::<usize>(),
        );
        buf.put_u8(VERSION);
        buf.put_u8(if self.ordinary { FLAG_ORDINARY } else { 0 });
        put_string(&mut buf, &self.node);
        put_string(&mut buf, self.publisher.as_str());
        let shared = self.shared.len().min(usize::from(u8::MAX));
        buf.put_u8(shared as u8);
        for (group, node) in &self.shared[..shared] {
            put_string(&mut buf, group);
            put_string(&mut buf, node);
        }
        packet.encode(Protocol::V5, &mut buf);
        buf.freeze()
    }

    /// Reads a record value; the error says what is wrong with it.
    pub fn decode(value: &[u8]) -> Result<Envelope, String> {
        let mut buf = BytesMut::from(value);
        let mut take = |n: usize| -> Result<BytesMut, String> {
            if buf.len() < n {
                return Err("truncated envelope".to_string());
            }
            Ok(buf.split_to(n))
        };
        let version = take(1)?[0];
        if version != VERSION {
            return Err(format!(
                "envelope version {version}, this node reads {VERSION}"
            ));
        }
        let flags = take(1)?[0];
        let mut string = || -> Result<String, String> {
            let len = take(2)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            String::from_utf8(take(len)?.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
        };
        let node = string()?;
        let publisher = string()?;
        let mut shared = Vec::new();
        let count = {
            let mut take_one = || -> Result<u8, String> {
                if buf.is_empty() {
                    return Err("truncated envelope".to_string());
                }
                Ok(buf.split_to(1)[0])
            };
            take_one()?
        };
        for _ in 0..count {
            let mut string = || -> Result<String, String> {
                if buf.len() < 2 {
                    return Err("truncated envelope".to_string());
                }
                let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                let _ = buf.split_to(2);
                if buf.len() < len {
                    return Err("truncated envelope".to_string());
                }
                String::from_utf8(buf.split_to(len).to_vec())
                    .map_err(|_| "a name is not UTF-8".to_string())
            };
            let group = string()?;
            let node = string()?;
            shared.push((group, node));
        }
        let packet = decode_packet(
            &mut buf,
            Role::Client,
            Some(Protocol::V5),
            ENVELOPE_BYTES_MAX,
        )
        .map_err(|e: DecodeError| format!("PUBLISH: {e}"))?;
        let Some(Packet::Publish(publish)) = packet else {
            return Err("no PUBLISH in the envelope".to_string());
        };
        Ok(Envelope {
            node,
            publisher: MqttStr::from(publisher.as_str()),
            ordinary: flags & FLAG_ORDINARY != 0,
            shared,
            topic: publish.topic,
            qos: publish.qos,
            retain: publish.retain,
            properties: publish.properties,
            payload: publish.payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UserProperty;

    fn sample() -> Envelope {
        let properties = PublishProperties {
            content_type: Some(MqttStr::from("text/plain")),
            message_expiry_interval_secs: Some(30),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![UserProperty {
                name: MqttStr::from("k"),
                value: MqttStr::from("v"),
            }],
            ..Default::default()
        };
        Envelope {
            node: "node-a".into(),
            publisher: MqttStr::from("device-1"),
            ordinary: true,
            shared: vec![("g".into(), "node-b".into())],
            topic: MqttStr::from("a/b"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties,
            payload: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn an_envelope_reads_back_as_written_with_every_property() {
        let envelope = sample();
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
        let mut plain = sample();
        plain.qos = QoS::AtMostOnce;
        plain.shared.clear();
        plain.ordinary = false;
        plain.payload = Bytes::new();
        assert_eq!(Envelope::decode(&plain.encode()).unwrap(), plain);
    }

    #[test]
    fn a_damaged_envelope_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..len]).is_err(), "prefix of {len}");
        }
        let mut other = bytes.to_vec();
        other[0] = 9;
        assert!(Envelope::decode(&other).unwrap_err().contains("version 9"));
    }
}
