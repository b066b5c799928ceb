//! The durable spool: for `ack = "durable"` mappings, each shard appends records to its own
//! log on disk (direct I/O, group commit) and acknowledges the PUBLISH once the flush that
//! holds it is done; the log then feeds Kafka, and a segment goes once Kafka has all of it.

pub mod log;
pub mod record;
