//! PUBLISH from a client (section 3.3.4): resolve the topic alias, route, acknowledge.

use std::time::Instant;

use crate::protocol::{Packet, PubAck, PubRec, Publish, QoS, ReasonCode};

use super::link::{Exit, Link};
use super::message::Message;
use super::router;
use super::stats::ShardStats;

impl Link {
    pub(super) async fn on_publish(&mut self, publish: Publish) -> Result<(), Exit> {
        ShardStats::incr(&self.shard.stats.messages_received);
        let config = self.shard.config.clone();
        let topic = match publish.properties.topic_alias {
            Some(alias) => {
                // [MQTT-3.3.2-9]: 0 < alias <= the Topic Alias Maximum we announced.
                if alias > config.topic_alias_maximum {
                    return Err(Exit::ProtocolError(ReasonCode::TopicAliasInvalid));
                }
                if publish.topic.is_empty() {
                    // An alias the client never set is a Protocol Error [MQTT-3.3.2-?].
                    match self.topic_aliases.get(&alias) {
                        Some(topic) => topic.clone(),
                        None => return Err(Exit::ProtocolError(ReasonCode::ProtocolError)),
                    }
                } else {
                    self.topic_aliases.insert(alias, publish.topic.clone());
                    publish.topic.clone()
                }
            }
            None => publish.topic.clone(),
        };
        if publish.retain && !config.retain_available {
            // [MQTT-3.3.1-?]: Retain not supported is answered with DISCONNECT 0x9A.
            return Err(Exit::ProtocolError(ReasonCode::RetainNotSupported));
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        if qos == QoS::ExactlyOnce {
            let mut state = self.shard.state.borrow_mut();
            let session = state.session(&self.client_id).expect("connected session");
            if session.inbound_qos2.contains(&packet_id) {
                // A resent PUBLISH whose PUBREC was lost: answer again, deliver once
                // [MQTT-4.3.3-9].
                drop(state);
                self.connection.send(Packet::PubRec(PubRec::new(packet_id)));
                return Ok(());
            }
            // [MQTT-3.3.4-9]: more unacknowledged QoS 2 PUBLISHes than Receive Maximum.
            if session.inbound_qos2.len() >= usize::from(config.receive_maximum) {
                return Err(Exit::ProtocolError(ReasonCode::ReceiveMaximumExceeded));
            }
            session.inbound_qos2.insert(packet_id);
        }
        let message = Message::from_publish(publish, topic, self.client_id.clone(), Instant::now());
        router::publish(&self.shard, message).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.connection.send(Packet::PubAck(PubAck::new(packet_id))),
            QoS::ExactlyOnce => self.connection.send(Packet::PubRec(PubRec::new(packet_id))),
        }
        Ok(())
    }
}
