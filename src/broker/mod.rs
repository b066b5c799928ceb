//! The MQTT broker: shards, sessions, routing, retained messages and wills.
//!
//! `server.rs` starts one shard per CPU. A connection is accepted by any shard
//! (`connect.rs`), which reads its CONNECT and hands the socket to the shard that owns the
//! client id (`shard::shard_for`). There `link.rs` reads and dispatches packets
//! (`publish.rs`, `subscribe.rs`), `connection.rs` writes, and `shard.rs` holds the
//! sessions and subscription trees. `router.rs` carries messages to other shards over
//! bounded channels.

mod connect;
pub mod connection;
mod link;
pub mod message;
mod publish;
pub mod retained;
mod router;
pub mod server;
pub mod session;
pub mod shard;
pub mod shard_message;
pub mod stats;
mod subscribe;
pub mod topic_tree;

pub use server::run;
