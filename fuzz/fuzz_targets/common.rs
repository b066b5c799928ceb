//! The checks behind every fuzz target, shared with `tests/fuzz_corpus_replay.rs` (which
//! includes this file with `#[path]`) so that `cargo test` replays the committed corpus
//! and regressions through exactly what the fuzzer ran, without making the fuzz crate a
//! dependency of the main one.
//!
//! Whatever the input, decoding must not panic, and:
//! - `Ok(None)` (an incomplete packet) consumes nothing;
//! - a decoded packet consumed its whole frame, and every shorter prefix of that frame is
//!   `Ok(None)` (the decoder is incremental);
//! - a decoded packet re-encodes to `encoded_len` bytes that decode back to an equal packet;
//! - an error maps to a failure reason code (>= 0x80) and displays.
#![allow(dead_code)]

use bytes::BytesMut;
use ferrymq::protocol::{decode_packet, DecodeError, Decoder, Packet, Protocol, Role};

/// The packet size limit of the fuzzed decoders: small enough that `PacketTooLarge` is
/// reachable from a short input that claims a long remaining length.
pub const MAX_PACKET_SIZE_BYTES: u32 = 64 * 1024;

/// The per-packet-type targets: name, and the packet type they frame their input as.
/// PINGREQ (12) and PINGRESP (13) have no body and get no target of their own.
pub const PACKET_TARGETS: [(&str, u8); 13] = [
    ("packet_connect", 1),
    ("packet_connack", 2),
    ("packet_publish", 3),
    ("packet_puback", 4),
    ("packet_pubrec", 5),
    ("packet_pubrel", 6),
    ("packet_pubcomp", 7),
    ("packet_subscribe", 8),
    ("packet_suback", 9),
    ("packet_unsubscribe", 10),
    ("packet_unsuback", 11),
    ("packet_disconnect", 14),
    ("packet_auth", 15),
];

/// Runs the check of the target called `target` on `data`. Panics on an unknown name.
pub fn check_target(target: &str, data: &[u8]) {
    match target {
        "decode_server" => check_server_stream(data),
        "decode_client" => check_client_stream(data),
        name => {
            let (_, packet_type) = PACKET_TARGETS
                .iter()
                .find(|(target_name, _)| *target_name == name)
                .unwrap_or_else(|| panic!("unknown fuzz target {name:?}"));
            check_packet_body(*packet_type, data);
        }
    }
}

/// The protocol a selector byte picks: its low two bits, 0 = 3.1, 1 = 3.1.1, 2 and 3 = 5.0.
pub fn protocol_from_selector(selector: u8) -> Protocol {
    match selector & 0b11 {
        0 => Protocol::V3_1,
        1 => Protocol::V3_1_1,
        _ => Protocol::V5,
    }
}

/// The selector byte that picks `protocol` (the inverse of [`protocol_from_selector`]).
pub fn selector_for(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::V3_1 => 0,
        Protocol::V3_1_1 => 1,
        Protocol::V5 => 2,
    }
}

/// `decode_server`: the whole input is what a client sent, starting with its CONNECT.
pub fn check_server_stream(data: &[u8]) {
    check_stream(Decoder::server(MAX_PACKET_SIZE_BYTES), Role::Server, data);
}

/// `decode_client`: the first byte selects the protocol the client connected with
/// ([`protocol_from_selector`]); the rest is what the server sent.
pub fn check_client_stream(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let decoder = Decoder::client(protocol_from_selector(selector), MAX_PACKET_SIZE_BYTES);
    check_stream(decoder, Role::Client, stream);
}

fn check_stream(mut decoder: Decoder, role: Role, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let protocol = decoder.protocol();
        let offset = data.len() - buf.len();
        let len_before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                let frame = &data[offset..offset + (len_before - buf.len())];
                check_decoded(&packet, frame, role, protocol);
                if let (Packet::Connect(connect), None) = (&packet, protocol) {
                    assert_eq!(decoder.protocol(), Some(connect.protocol));
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), len_before, "Ok(None) consumed bytes");
                return;
            }
            Err(error) => {
                check_error(&error);
                return;
            }
        }
    }
}

/// The per-packet-type targets: the first byte is a selector (bits 0-1 the protocol, see
/// [`protocol_from_selector`]; bit 2 the receiving role for packets that travel both ways;
/// bits 4-7 the PUBLISH header flags), the rest is the body of one packet of type
/// `packet_type`, framed here with a correct fixed header.
pub fn check_packet_body(packet_type: u8, data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let frame = frame_body(packet_type, selector, body);
    let (role, protocol) = body_target_context(packet_type, selector);
    let mut buf = BytesMut::from(&frame[..]);
    match decode_packet(&mut buf, role, protocol, MAX_PACKET_SIZE_BYTES) {
        Ok(Some(packet)) => {
            assert!(buf.is_empty(), "one framed packet left {} bytes", buf.len());
            assert_eq!(packet.packet_type() as u8, packet_type);
            check_decoded(&packet, &frame, role, protocol);
        }
        Ok(None) => panic!(
            "a whole frame of {} bytes decoded as incomplete",
            frame.len()
        ),
        Err(error) => check_error(&error),
    }
}

/// The fixed header a per-packet-type target puts in front of `body`.
pub fn frame_body(packet_type: u8, selector: u8, body: &[u8]) -> Vec<u8> {
    let flags = match packet_type {
        3 => selector >> 4,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push((packet_type << 4) | flags);
    let mut len = body.len();
    loop {
        let mut byte = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        frame.push(byte);
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(body);
    frame
}

/// Who decodes a per-packet-type target's packet, and with which protocol.
pub fn body_target_context(packet_type: u8, selector: u8) -> (Role, Option<Protocol>) {
    match packet_type {
        // CONNECT: a server before the CONNECT, protocol unknown.
        1 => (Role::Server, None),
        // Only clients send SUBSCRIBE, UNSUBSCRIBE and PINGREQ.
        8 | 10 | 12 => (Role::Server, Some(protocol_from_selector(selector))),
        // Only servers send CONNACK, SUBACK, UNSUBACK and PINGRESP.
        2 | 9 | 11 | 13 => (Role::Client, Some(protocol_from_selector(selector))),
        // AUTH exists in 5.0 only.
        15 => (role_from_selector(selector), Some(Protocol::V5)),
        _ => (
            role_from_selector(selector),
            Some(protocol_from_selector(selector)),
        ),
    }
}

fn role_from_selector(selector: u8) -> Role {
    if selector & 0b100 == 0 {
        Role::Server
    } else {
        Role::Client
    }
}

/// The checks on a packet decoded from `frame` by a `role` decoder that was at `protocol`.
pub fn check_decoded(packet: &Packet, frame: &[u8], role: Role, protocol: Option<Protocol>) {
    // Incremental decoding: every strict prefix of the frame is "incomplete", untouched.
    let len = frame.len();
    let prefixes = (0..len.min(8)).chain([len / 2, len - 1]);
    for prefix_len in prefixes.filter(|&l| l < len) {
        let mut prefix = BytesMut::from(&frame[..prefix_len]);
        let result = decode_packet(&mut prefix, role, protocol, MAX_PACKET_SIZE_BYTES);
        assert!(
            matches!(result, Ok(None)),
            "prefix of {prefix_len} of a {len}-byte {:?} decoded as {result:?}",
            packet.packet_type()
        );
        assert_eq!(
            prefix.len(),
            prefix_len,
            "an incomplete decode consumed bytes"
        );
    }

    // Round trip: what we decoded, we encode, and that decodes to the same packet.
    let encode_protocol = match (packet, protocol) {
        (Packet::Connect(connect), _) => connect.protocol,
        (_, Some(protocol)) => protocol,
        (other, None) => panic!("{other:?} decoded without a protocol"),
    };
    let mut encoded = BytesMut::new();
    packet.encode(encode_protocol, &mut encoded);
    assert_eq!(
        encoded.len(),
        packet.encoded_len(encode_protocol),
        "encoded_len disagrees with encode for {packet:?}"
    );
    let encoded_copy = encoded.clone();
    match decode_packet(&mut encoded, role, protocol, MAX_PACKET_SIZE_BYTES) {
        Ok(Some(again)) => {
            assert!(encoded.is_empty(), "re-encoded {packet:?} left bytes over");
            assert_eq!(
                &again,
                packet,
                "re-encoding changed the packet: frame {frame:02x?}, re-encoded {:02x?}",
                &encoded_copy[..]
            );
        }
        other => panic!(
            "{packet:?} (from {frame:02x?}) re-encoded as {:02x?}, which decodes as {other:?}",
            &encoded_copy[..]
        ),
    }
}

/// Errors carry a failure reason code for the DISCONNECT/CONNACK and a message.
pub fn check_error(error: &DecodeError) {
    let code = error.reason_code();
    assert!(code.is_error(), "{error:?} maps to non-error {code:?}");
    assert!(!error.to_string().is_empty());
}
