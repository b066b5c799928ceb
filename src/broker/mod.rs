//! The MQTT broker: shards, sessions, routing, retained messages and wills.
//!
//! [`crate::server`] starts one shard per CPU and gives each a [`context::ShardContext`].
//! A connection is accepted by any shard (`connect.rs`), which reads its CONNECT and hands
//! the socket to the shard that owns the client id (`shard::shard_for`). There `link.rs`
//! reads and dispatches packets (`publish.rs`, `subscribe.rs`), `connection.rs` writes, and
//! `shard.rs` holds the sessions and subscription trees. `router.rs` carries messages to
//! other shards over bounded channels; `inbox.rs` serves what arrives from them.
//!
//! May import: `auth`, `bridge` (one [`crate::bridge::Bridge`] per shard), `config`,
//! `metrics`, `protocol`, `runtime`, `tls`, `topic`.

pub mod cluster;
mod connect;
pub mod connection;
pub mod context;
pub mod inbox;
pub mod ingress;
mod link;
pub mod message;
mod publish;
pub mod router;
pub mod session;
pub mod shard;
pub mod shard_message;
#[cfg(test)]
mod shard_tests;
mod subscribe;

pub use connect::accept_loop;
pub use publish::acknowledge_deferred;
