//! Subscription tree micro-benchmarks: one PUBLISH topic matched against a tree of 100k
//! per-device subscriptions and 1k wildcard filters.
//!
//! Run with `cargo bench --bench topic_tree`. Each iteration matches one topic and counts
//! the matches, so the figure is the time to route one PUBLISH through the tree, without
//! the deliveries.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrymq::topic::RetainedStore;
use ferrymq::topic::SubscriptionTree;
use std::hint::black_box;

const DEVICE_COUNT: u32 = 100_000;
const WILDCARD_FILTER_COUNT: u32 = 1_000;

/// 100k `devices/{id}/telemetry` (one subscriber each) and 1k wildcard filters of four
/// shapes, some of which match device topics.
fn tree() -> SubscriptionTree<u32, u8> {
    let mut tree = SubscriptionTree::new();
    for id in 0..DEVICE_COUNT {
        tree.subscribe(&format!("devices/{id}/telemetry"), id, 1);
    }
    for i in 0..WILDCARD_FILTER_COUNT {
        let key = DEVICE_COUNT + i;
        let filter = match i % 4 {
            0 => format!("devices/{i}/#"),
            1 => format!("devices/+/status-{i}"),
            // Overlaps shape 0: the same ids.
            2 => format!("+/{}/telemetry", i - 2),
            _ => format!("$share/g{i}/region-{i}/+/telemetry"),
        };
        tree.subscribe(&filter, key, 0);
    }
    assert_eq!(tree.len(), (DEVICE_COUNT + WILDCARD_FILTER_COUNT) as usize);
    tree
}

fn bench_match(c: &mut Criterion) {
    let mut tree = tree();
    let mut group = c.benchmark_group("topic_tree_100k_plus_1k_wildcards");
    group.throughput(Throughput::Elements(1));
    // (label, topic, matches): one exact subscriber; the exact one, "devices/8/#" and
    // "+/8/telemetry"; a topic nobody subscribes to.
    for (label, topic, expected) in [
        ("match_1", "devices/54321/telemetry", 1),
        ("match_3", "devices/8/telemetry", 3),
        ("match_0", "devices/54321/config", 0),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let mut count = 0;
                tree.for_each_match(black_box(topic), |m| {
                    black_box(m);
                    count += 1;
                });
                assert_eq!(count, expected);
                count
            })
        });
    }
    group.finish();
}

fn bench_retained(c: &mut Criterion) {
    let mut store = RetainedStore::new();
    for id in 0..DEVICE_COUNT {
        store.set(&format!("devices/{id}/telemetry"), id);
        store.set(&format!("devices/{id}/status"), id);
    }
    let mut group = c.benchmark_group("retained_200k");
    group.throughput(Throughput::Elements(1));
    group.bench_function("subscribe_devices_42_plus", |b| {
        b.iter(|| {
            let mut count = 0;
            store.for_each_match(black_box("devices/42/+"), |topic, value| {
                black_box((topic, value));
                count += 1;
            });
            assert_eq!(count, 2);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_match, bench_retained);
criterion_main!(benches);
