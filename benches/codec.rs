//! Codec micro-benchmarks: decode and encode of the packets a broker handles most.
//!
//! Run with `cargo bench --bench codec`; BENCHMARKS.md records the figures. Decode inputs
//! sit in a `BytesMut` that already shares its allocation (as a connection's read buffer
//! does after its first packet), so the figures exclude the one-time promotion of a fresh
//! buffer and the test setup copy.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferrymq::protocol::{
    decode_packet, Connect, Encode, Packet, PacketType, Protocol, Publish, QoS, Role, Subscribe,
    Subscription, SubscriptionOptions, UserProperty, PACKET_SIZE_BYTES_MAX,
};
use std::hint::black_box;

/// Size of the benchmark PUBLISH packets, fixed header included.
const PUBLISH_SIZE_BYTES: usize = 150;
const MANY_BUFFER_BYTES: usize = 64 * 1024;

fn publish(protocol: Protocol, qos: QoS) -> Publish {
    let mut publish = Publish::new("devices/device-000123/telemetry", qos, Bytes::new());
    if qos != QoS::AtMostOnce {
        publish.packet_id = 4242;
    }
    if protocol.is_v5() {
        publish
            .properties
            .user_properties
            .push(UserProperty::new("site", "plant-7"));
    }
    // Size the payload so that the whole packet is PUBLISH_SIZE_BYTES long: one type byte
    // and two remaining-length bytes (the remaining length is over 127) come first.
    let body_without_payload = publish.remaining_len(protocol);
    publish.payload = Bytes::from(vec![b'x'; PUBLISH_SIZE_BYTES - 3 - body_without_payload]);
    assert_eq!(publish.encoded_len(protocol), PUBLISH_SIZE_BYTES);
    publish
}

fn connect(protocol: Protocol) -> Connect {
    let mut connect = Connect::new(protocol, "device-000123", 60);
    connect.clean_start = false;
    connect.username = Some("device-000123".into());
    connect.password = Some(Bytes::from_static(b"s3cret-token"));
    if protocol.is_v5() {
        connect.properties.session_expiry_interval_secs = Some(3600);
        connect.properties.receive_maximum = Some(64);
    }
    connect
}

fn subscribe_10() -> Subscribe {
    let filters = (0..10)
        .map(|i| Subscription {
            filter: format!("devices/device-{i:06}/commands/+").into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        })
        .collect();
    Subscribe::new(7, filters)
}

fn encoded(packet: &impl Encode, protocol: Protocol) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.encode(protocol, &mut buf);
    buf.to_vec()
}

/// A read buffer holding `bytes`, already in the shared representation.
fn read_buffer(bytes: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(bytes.len());
    buf.extend_from_slice(bytes);
    drop(buf.split_to(0));
    buf
}

fn bench_packet<P: Encode>(
    c: &mut Criterion,
    name: &str,
    packet: &P,
    protocol: Protocol,
    role: Role,
) {
    let bytes = encoded(packet, protocol);
    // A CONNECT is decoded as a connection's first packet, before the protocol is known.
    let known = (P::PACKET_TYPE != PacketType::Connect).then_some(protocol);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter_batched_ref(
            || read_buffer(&bytes),
            |buf| {
                let packet = decode_packet(buf, role, known, PACKET_SIZE_BYTES_MAX);
                black_box(packet.unwrap().unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("encode", |b| {
        // One reusable write buffer, as a connection keeps.
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            black_box(packet).encode(protocol, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    for (protocol, label) in [(Protocol::V3_1_1, "v311"), (Protocol::V5, "v5")] {
        for (qos, qos_label) in [(QoS::AtMostOnce, "qos0"), (QoS::AtLeastOnce, "qos1")] {
            let name = format!("publish_150B_{qos_label}_{label}");
            bench_packet(c, &name, &publish(protocol, qos), protocol, Role::Server);
        }
        let name = format!("connect_{label}");
        bench_packet(c, &name, &connect(protocol), protocol, Role::Server);
    }
    bench_packet(
        c,
        "subscribe_10_filters_v311",
        &subscribe_10(),
        Protocol::V3_1_1,
        Role::Server,
    );
    bench_packet(
        c,
        "subscribe_10_filters_v5",
        &subscribe_10(),
        Protocol::V5,
        Role::Server,
    );
}

fn decode_many(c: &mut Criterion) {
    for (protocol, label) in [(Protocol::V3_1_1, "v311"), (Protocol::V5, "v5")] {
        let one = encoded(&publish(protocol, QoS::AtLeastOnce), protocol);
        let count = MANY_BUFFER_BYTES / one.len();
        let many: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(count * one.len())
            .collect();
        let mut group = c.benchmark_group(format!("decode_64KiB_publish_150B_qos1_{label}"));
        group.throughput(Throughput::Elements(count as u64));
        group.bench_function("decode_all", |b| {
            b.iter_batched_ref(
                || read_buffer(&many),
                |buf| {
                    let mut decoded = 0;
                    while let Some(packet) =
                        decode_packet(buf, Role::Server, Some(protocol), PACKET_SIZE_BYTES_MAX)
                            .unwrap()
                    {
                        debug_assert!(matches!(packet, Packet::Publish(_)));
                        black_box(packet);
                        decoded += 1;
                    }
                    assert_eq!(decoded, count);
                },
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, codec, decode_many);
criterion_main!(benches);
