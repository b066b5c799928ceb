//! An application message inside the broker, between its PUBLISH in and its PUBLISHes out.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::{MqttStr, Publish, PublishProperties, QoS};

/// What a publisher sent, with the connection-specific parts (packet id, topic alias,
/// subscription identifiers) removed. Topic, payload and properties are slices of the
/// publisher's read buffer; cloning a message bumps reference counts only.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Forwarded unaltered [MQTT-3.3.2-15..20], less Topic Alias and Subscription
    /// Identifiers, which belong to one connection.
    pub properties: PublishProperties,
    /// Client id of the publisher, for No Local [MQTT-3.8.3-3].
    pub publisher: MqttStr,
    /// From the Message Expiry Interval: when the message may no longer be delivered
    /// [MQTT-3.3.2-5].
    pub expires_at: Option<Instant>,
}

impl Message {
    /// `topic` is the resolved topic name (after Topic Alias mapping).
    pub fn from_publish(
        publish: Publish,
        topic: MqttStr,
        publisher: MqttStr,
        now: Instant,
    ) -> Message {
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval_secs
            .map(|secs| now + Duration::from_secs(secs.into()));
        Message {
            topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            publisher,
            expires_at,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The PUBLISH that carries this message to one subscriber, or `None` if it expired.
    /// The Message Expiry Interval sent is what is left of it [MQTT-3.3.2-6].
    pub fn to_publish(
        &self,
        qos: QoS,
        retain: bool,
        packet_id: u16,
        subscription_ids: &[u32],
        now: Instant,
    ) -> Option<Publish> {
        let mut properties = self.properties.clone();
        if let Some(at) = self.expires_at {
            let left = at.checked_duration_since(now)?;
            if left.is_zero() {
                return None;
            }
            // Round up so that a message with time left never goes out as "0 seconds".
            properties.message_expiry_interval_secs = Some(
                left.as_secs()
                    .saturating_add(u64::from(left.subsec_nanos() > 0)) as u32,
            );
        }
        properties.subscription_identifiers = subscription_ids.to_vec();
        Some(Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id,
            properties,
            payload: self.payload.clone(),
        })
    }
}
