//! Per-shard counters. Each shard counts on its own (plain cells, no atomics on the
//! message path); shard 0 sums the snapshots the others send it for `$SYS`.

use std::cell::Cell;

macro_rules! counters {
    ($($(#[$meta:meta])* $name:ident,)*) => {
        #[derive(Debug, Default)]
        pub struct ShardStats {
            $($(#[$meta])* pub $name: Cell<u64>,)*
            /// PUBLISHes received from clients, by QoS (index 0, 1, 2).
            pub messages_received_by_qos: [Cell<u64>; 3],
            /// PUBLISHes written to clients, by QoS (index 0, 1, 2).
            pub messages_sent_by_qos: [Cell<u64>; 3],
        }

        /// A copy of the counters that can cross shards.
        #[derive(Debug, Default, Clone, Copy)]
        pub struct StatsSnapshot {
            $(pub $name: u64,)*
            pub messages_received_by_qos: [u64; 3],
            pub messages_sent_by_qos: [u64; 3],
        }

        impl ShardStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.get(),)*
                    messages_received_by_qos: self.messages_received_by_qos.each_ref().map(Cell::get),
                    messages_sent_by_qos: self.messages_sent_by_qos.each_ref().map(Cell::get),
                }
            }
        }

        impl StatsSnapshot {
            pub fn add(&mut self, other: &StatsSnapshot) {
                $(self.$name += other.$name;)*
                for qos in 0..3 {
                    self.messages_received_by_qos[qos] += other.messages_received_by_qos[qos];
                    self.messages_sent_by_qos[qos] += other.messages_sent_by_qos[qos];
                }
            }

            /// `(name, value)` pairs, for `$SYS` topics (the per-QoS counts are not among
            /// them: the metrics give them labelled).
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Connections open now (a gauge, counted on the shard that serves them).
    clients_connected,
    /// Sessions held now, connected or not.
    sessions,
    connections_accepted,
    /// Connections handed to the shard that owns their client id.
    connections_handed_off,
    /// Connections closed for a protocol error or a malformed packet.
    protocol_errors,
    /// TLS handshakes completed on TLS listeners.
    tls_handshakes,
    /// TLS handshakes that failed or timed out (the log says why, for the first of each
    /// kind every few seconds).
    tls_handshake_failures,
    /// CONNECTs refused for bad credentials, as not authorized (anonymous not allowed), or
    /// for a will topic the ACL does not let the client write.
    auth_failures,
    /// PUBLISHes the ACL refused, and deliveries a subscriber may not read (ACL file).
    dropped_not_authorized,
    /// SUBSCRIBE filters the ACL refused (SUBACK 0x87 / 0x80).
    subscriptions_not_authorized,
    /// Connections closed at accept because `connections_max` were open.
    connections_refused_max,
    /// QoS 1/2 PUBLISHes of 5.0 clients refused with 0x97 Quota exceeded because the
    /// durable spool was full (`spool.when_full = "refuse"`).
    refused_spool_full,
    /// Failed accepts, most often out of file descriptors (the log says why, once every
    /// few seconds); the client waits in the listen backlog meanwhile.
    accept_errors,
    /// Connections closed because their hand-off to the owner shard failed (out of file
    /// descriptors for longer than the connect timeout).
    handoff_failures,
    messages_received,
    messages_sent,
    bytes_received,
    bytes_sent,
    /// QoS 0 messages dropped because the subscriber's queue was full.
    dropped_qos0_queue_full,
    /// QoS 1/2 messages dropped because an offline or slow session's queue was full.
    dropped_session_queue_full,
    /// Messages not sent because they exceeded the client's Maximum Packet Size.
    dropped_too_large,
    /// Messages whose Message Expiry Interval ran out before delivery.
    dropped_expired,
    retained_messages,
    subscriptions,
    /// QoS 1/2 messages waiting in session queues (gauge, sampled once a second).
    session_queued_messages,
    /// QoS 1/2 messages sent and not yet acknowledged by clients (gauge).
    inflight_messages,
    /// Packets queued for connections' writers (gauge).
    connection_queued_packets,
}

impl ShardStats {
    pub fn incr(counter: &Cell<u64>) {
        counter.set(counter.get() + 1);
    }

    pub fn decr(counter: &Cell<u64>) {
        counter.set(counter.get().saturating_sub(1));
    }
}
