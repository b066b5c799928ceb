//! ferrymq: an MQTT 3.1.1/5.0 broker with a native Kafka producer.
//!
//! A PUBLISH is read into a connection's buffer, decoded by [`protocol::Decoder`] into a
//! packet whose topic and payload are slices of that buffer, routed by the shard that owns
//! the session, and handed to Kafka without another copy.
//!
//! The modules, lowest layer first. Each may import only the modules above it in this
//! list, never one below (`tests/module_layering.rs` checks it from the sources):
//!
//! | module | owns |
//! |---|---|
//! | [`protocol`] | the MQTT 3.1, 3.1.1 and 5.0 codec on `bytes`, server and client side; pure |
//! | [`log_budget`] | at most one log line per interval for a failure that repeats |
//! | [`metrics`] | counters, snapshots and histograms; the Prometheus endpoint and its board |
//! | [`runtime`] | the only code that names glommio: pinned executors, channels, timers, TCP |
//! | [`port_owner`] | who listens on a port (for a clear "address in use") |
//! | [`auth`] | password and ACL files, reloadable snapshots |
//! | [`topic`] | topic-filter trie and retained-message store, for subscribers and mappings |
//! | [`config`] | the settings as plain data, one file per section: defaults, TOML file, flags, `${env:}` secrets |
//! | [`tls`] | TLS listener setup and client certificate identity |
//! | [`spool`] | the per-shard durable log behind `ack = "durable"` |
//! | [`bridge`] | the Kafka half: mappings, batches, producers, tickets, the spool's tasks |
//! | [`cluster`] | many nodes as one broker: internal topics, the state reader, cross-node records |
//! | [`broker`] | the MQTT half: sessions, routing, retained messages, wills, PUBACK/PUBREC |
//! | [`server`] | start-up: shards, listeners, wiring, `$SYS` and the metrics loop |
//!
//! The broker holds one [`bridge::Bridge`] per shard and asks it one question per PUBLISH
//! ([`bridge::Bridge::admit`]); the bridge answers later with "acknowledge ticket T with
//! this outcome" and never sees a connection. The architecture and the ack modes are
//! described in DESIGN.md and README.md ("How it works").

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod log_budget;
pub mod metrics;
pub mod port_owner;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod spool;
pub mod tls;
pub mod topic;
