//! What the integration tests share: a ferrymq broker process ([`broker`]), free ports
//! ([`ports`]), other programs run with a deadline ([`process`]), one raw MQTT client
//! ([`raw`]), rumqttc clients driven on a thread ([`rumqttc`]), Kafka ([`kafka`]) and the
//! metrics endpoint ([`metrics`]). Each test binary uses part of it.
#![allow(dead_code, unused_imports)]

pub mod broker;
pub mod cluster;
pub mod kafka;
pub mod metrics;
pub mod ports;
pub mod process;
pub mod raw;
pub mod rumqttc;

pub use broker::{id_on, shard_count, shard_of, Broker};
pub use ports::{free_port, free_ports};
pub use process::{
    cpu_seconds, mosquitto_pub, mosquitto_pub_within, pubacks_in, run_bounded, run_within, signal,
    wait_within, MOSQUITTO_STEP,
};
