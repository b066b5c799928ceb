//! ferrymq: an MQTT 3.1.1/5.0 broker with a native Kafka producer.
//!
//! Modules:
//! - [`broker`]: the MQTT broker: shards, sessions, routing, retained messages, wills.
//! - [`bridge`]: the Kafka bridge: mappings from MQTT topic filters to Kafka topics and keys.
//! - [`config`]: the broker's settings: defaults, then a TOML file, then flags; validated.
//! - [`config_secrets`]: `${env:NAME}` and `${file:PATH}` values in the file, and keeping
//!   secrets out of errors.
//! - [`log_budget`]: at most one log line per interval for a failure that repeats.
//! - [`metrics`]: per-shard snapshots merged for the Prometheus endpoint and `$SYS`.
//! - [`protocol`]: the MQTT 3.1, 3.1.1 and 5.0 codec on `bytes`, server and client side.
//! - [`spool`]: the per-shard durable log behind `ack = "durable"`.
//! - [`runtime`]: the seam over glommio: pinned executors, shard channels, timers, TCP.
//!
//! The broker, Kafka bridge, spool and runtime seam arrive with their issues; see
//! DESIGN.md in the shared folder for the data path they implement: a PUBLISH is read into
//! a connection's buffer, decoded by [`protocol::Decoder`] into a packet whose topic and
//! payload are slices of that buffer, routed by the shard that owns the session, and handed
//! to Kafka without another copy.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod config;
pub mod log_budget;
pub mod metrics;
pub mod port_owner;
pub mod protocol;
pub mod runtime;
pub mod spool;
pub mod tls;
