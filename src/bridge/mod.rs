//! The Kafka bridge: which MQTT messages go to which Kafka cluster and topic, and how.
//!
//! The broker holds one [`Bridge`] per shard and talks to it in three steps per PUBLISH:
//! [`Bridge::admit`] (one walk of the mapping trie: which mappings, whether subscribers get
//! it too, whether it is refused), [`Bridge::wait_for_room`] (backpressure for QoS 1/2), and
//! [`Bridge::submit`] (the records leave; a [`Ticket`] comes back when the
//! acknowledgement must wait). When a ticket's records are safe the bridge hands the broker
//! a [`Completed`]: "acknowledge ticket T with this outcome". It never sees a connection.
//!
//! Files:
//! - `driver.rs`: the [`Bridge`] handle, and the tasks it runs on its shard (delivery
//!   reports, the linger timer); the producers' start.
//! - `state.rs`: the shard's Kafka state as plain data (lanes, pending tickets, counters);
//!   `reports.rs` applies delivery reports to it; `durable.rs` its spool side (and the
//!   spool's tasks); `lane.rs` one (shard, cluster) batch and its adaptive linger.
//! - `producer.rs`: the librdkafka producer of each (shard, cluster); `ticket.rs` the tag
//!   each record carries through it; `records.rs` the records, headers and dead letters.
//! - `mapping.rs` and `template.rs`: the compiled `[[kafka.mapping]]` sections;
//!   `settings.rs` the clusters' settings in force (SIGHUP may replace them); `health.rs`
//!   the readiness probe of each cluster.
//! - `source/`: the other direction, Kafka → MQTT: `[[kafka.source]]` consumers, records
//!   handed to the broker's shards, offsets committed once delivered.
//!
//! May import: `config`, `metrics`, `protocol`, `runtime`, `spool`, `topic`. Never `broker`.

mod driver;
mod durable;
pub mod health;
mod lane;
pub mod mapping;
pub mod producer;
mod records;
mod reports;
pub mod settings;
pub mod source;
mod state;
#[cfg(test)]
mod state_tests;
pub mod template;
pub mod ticket;

use bytes::Bytes;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::{Config, ConfigError};
use crate::protocol::{MqttStr, PublishProperties, QoS, ReasonCode};

pub use driver::{start_producers, Bridge, BridgeParts, BridgeSnapshot, ShardProducers};
pub use records::failure_reason;
pub use state::ShardBridge;
pub use ticket::Ticket;

/// An MQTT message as the bridge reads it: borrowed from the broker's message, so that
/// records take slices of it and nothing is copied here.
pub struct Publication<'a> {
    pub topic: &'a MqttStr,
    pub publisher: &'a MqttStr,
    pub username: Option<&'a str>,
    pub payload: &'a Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: &'a PublishProperties,
}

/// The bridge's answer to one PUBLISH ([`Bridge::admit`]), from one walk of the trie.
#[derive(Debug)]
pub struct Admission {
    /// The mappings the topic reaches, in match order.
    matched: Matched,
    to_subscribers: bool,
    /// A matched mapping is `durable`.
    durable: bool,
    refused_for_full_spool: bool,
}

impl Default for Admission {
    fn default() -> Admission {
        Admission {
            matched: Matched::default(),
            to_subscribers: true,
            durable: false,
            refused_for_full_spool: false,
        }
    }
}

impl Admission {
    /// A mapping takes the message.
    pub fn to_kafka(&self) -> bool {
        self.matched.len > 0
    }

    /// MQTT subscribers get the message too (no mapping says `mqtt_subscribers = false`).
    pub fn to_subscribers(&self) -> bool {
        self.to_subscribers
    }

    /// `spool.when_full = "refuse"` and the spool is full: a 5.0 QoS 1/2 publisher hears
    /// 0x97 Quota exceeded at once, and nobody gets the message.
    pub fn refused_for_full_spool(&self) -> bool {
        self.refused_for_full_spool
    }
}

/// Mapping indices, the first few inline: a PUBLISH reaches one or two mappings, and its
/// admission should not allocate.
#[derive(Debug, Default)]
struct Matched {
    inline: [u16; Matched::INLINE],
    len: usize,
    more: Vec<u16>,
}

impl Matched {
    const INLINE: usize = 4;

    fn push(&mut self, index: u16) {
        if self.len < Matched::INLINE {
            self.inline[self.len] = index;
        } else {
            self.more.push(index);
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        let inline = &self.inline[..self.len.min(Matched::INLINE)];
        inline.iter().chain(&self.more).copied()
    }
}

/// How a PUBLISH whose acknowledgement waited ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acknowledgement {
    /// Every record is in Kafka (or the spool; or was dropped as its mapping says).
    Stored,
    /// Kafka refused a record for good (too large, not authorized...): sending it again
    /// would fail again. A 5.0 publisher gets this reason code; a 3.1.1 one, which has no
    /// way to hear it, gets a plain acknowledgement rather than retrying for ever.
    Refused(ReasonCode),
    /// A record failed otherwise (a producer's fatal error): a 5.0 publisher gets this
    /// reason code; a 3.1.1 one is disconnected unacknowledged, to publish it again.
    Failed(ReasonCode),
}

impl Acknowledgement {
    fn of(error: Option<RDKafkaErrorCode>) -> Acknowledgement {
        match error {
            None => Acknowledgement::Stored,
            Some(code) if producer::is_refused_for_good(code) => {
                Acknowledgement::Refused(records::failure_reason(code))
            }
            Some(code) => Acknowledgement::Failed(records::failure_reason(code)),
        }
    }
}

/// An acknowledgement that is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completed {
    pub ticket: Ticket,
    pub outcome: Acknowledgement,
}

/// Checks what the configuration leaves to the bridge: the mappings' topic and key templates
/// and Kafka topic names, by compiling the mappings once. The error is one line naming the
/// key (`kafka.mapping[2].topic: ...`), with references and secrets shown as
/// [`Config::validate`] shows them. `ferrymq` calls it right after [`crate::config::load`],
/// so a bad template stops the start as any other config error does.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    mapping::Mappings::new(&config.kafka).map_err(|error| config.shown_error(error))?;
    source::compile(config).map(drop)
}
