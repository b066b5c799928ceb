//! A Kafka record turned into an MQTT message: its topic from the source's template, its
//! payload copied once, QoS, retain and MQTT 5 properties from the source's settings and
//! the record's headers.

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};

use crate::config::SourceConfig;
use crate::protocol::topic::validate_topic_name;
use crate::protocol::{MqttStr, PublishProperties, QoS, UserProperty};

use super::receipt::Receipt;
use super::template::{RecordFields, TopicTemplate, Unaddressable};
use super::SourceRecord;

/// A `[[kafka.source]]` ready to run: its template parsed.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    /// Its place in the configuration (`kafka.source[index]`), and the high bits of its
    /// partitions' slots.
    pub index: u16,
    pub name: String,
    pub topics: Vec<String>,
    pub template: TopicTemplate,
    pub qos: QoS,
    pub qos_header: Option<String>,
    pub retain: bool,
    pub retain_header: Option<String>,
    /// Header names; `["*"]` for every header not used for something else.
    pub user_properties: Vec<String>,
    pub content_type_header: Option<String>,
    pub response_topic_header: Option<String>,
    pub correlation_data_header: Option<String>,
    pub message_expiry_header: Option<String>,
    pub in_flight_max: usize,
    pub start_delay: std::time::Duration,
    /// Reads records in place of the template and headers, when set.
    pub reader: Option<super::RecordReader>,
}

impl CompiledSource {
    /// `source` as configured at `index`; the error is the template's, for `mqtt`.
    pub fn new(index: usize, source: &SourceConfig) -> Result<CompiledSource, String> {
        Ok(CompiledSource {
            index: index as u16,
            name: source.name.clone(),
            topics: source.topics.clone(),
            template: TopicTemplate::parse(&source.mqtt)?,
            qos: source.qos,
            qos_header: source.qos_header.clone(),
            retain: source.retain,
            retain_header: source.retain_header.clone(),
            user_properties: source.user_properties.clone(),
            content_type_header: source.content_type_header.clone(),
            response_topic_header: source.response_topic_header.clone(),
            correlation_data_header: source.correlation_data_header.clone(),
            message_expiry_header: source.message_expiry_header.clone(),
            in_flight_max: source.in_flight_max,
            start_delay: std::time::Duration::from_millis(source.start_delay_ms),
            reader: None,
        })
    }

    /// Whether header `name` is read for something other than a user property.
    fn is_special(&self, name: &str) -> bool {
        [
            &self.qos_header,
            &self.retain_header,
            &self.content_type_header,
            &self.response_topic_header,
            &self.correlation_data_header,
            &self.message_expiry_header,
        ]
        .iter()
        .any(|h| h.as_deref() == Some(name))
    }
}

/// The first header named `name`, and its value (an absent value reads as empty).
fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.unwrap_or_default())
}

/// Text of an MQTT string: UTF-8 without U+0000 [MQTT-1.5.4-1], [MQTT-1.5.4-2], at most
/// 65,535 bytes.
fn mqtt_string(bytes: &[u8]) -> Option<MqttStr> {
    MqttStr::from_bytes(Bytes::copy_from_slice(bytes), "header").ok()
}

/// The record as an MQTT message for the broker, or why it has none (with the receipt
/// back, to settle it).
pub fn to_record(
    source: &CompiledSource,
    message: &BorrowedMessage<'_>,
    receipt: Receipt,
    topic_buffer: &mut String,
) -> Result<SourceRecord, (Unaddressable, Receipt)> {
    let lookup = |name: &str| header(message, name);
    let fields = RecordFields {
        topic: message.topic(),
        partition: message.partition(),
        key: message.key(),
        header: &lookup,
    };
    if let Err(reason) = source.template.render(&fields, topic_buffer) {
        return Err((reason, receipt));
    }
    let topic = MqttStr::from(topic_buffer.as_str());
    let qos = source
        .qos_header
        .as_deref()
        .and_then(|name| header(message, name))
        .and_then(|value| match value {
            b"0" => Some(QoS::AtMostOnce),
            b"1" => Some(QoS::AtLeastOnce),
            b"2" => Some(QoS::ExactlyOnce),
            _ => None,
        })
        .unwrap_or(source.qos);
    let retain = source
        .retain_header
        .as_deref()
        .and_then(|name| header(message, name))
        .and_then(|value| match value {
            b"true" | b"1" => Some(true),
            b"false" | b"0" => Some(false),
            _ => None,
        })
        .unwrap_or(source.retain);
    Ok(SourceRecord {
        topic,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        qos,
        retain,
        properties: properties(source, message),
        publisher: MqttStr::default(),
        cross_node: None,
        receipt,
    })
}

/// MQTT 5 properties from the headers the source names. A header whose value cannot be
/// the property (not UTF-8, a response topic with wildcards, an expiry that is not a
/// number) is left out: the message still goes, without it.
fn properties(source: &CompiledSource, message: &BorrowedMessage<'_>) -> PublishProperties {
    let mut properties = PublishProperties::default();
    let named = |option: &Option<String>| option.as_deref().and_then(|n| header(message, n));
    properties.content_type = named(&source.content_type_header).and_then(mqtt_string);
    properties.response_topic = named(&source.response_topic_header)
        .and_then(mqtt_string)
        .filter(|topic| validate_topic_name(topic).is_ok());
    properties.correlation_data = named(&source.correlation_data_header)
        .filter(|data| data.len() <= usize::from(u16::MAX))
        .map(Bytes::copy_from_slice);
    properties.message_expiry_interval_secs = named(&source.message_expiry_header)
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|secs| *secs > 0);
    if source.user_properties.is_empty() {
        return properties;
    }
    let every = source.user_properties.first().is_some_and(|n| n == "*");
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            let wanted = if every {
                !source.is_special(h.key)
            } else {
                source.user_properties.iter().any(|n| n == h.key)
            };
            if !wanted {
                continue;
            }
            if let (Some(name), Some(value)) = (
                mqtt_string(h.key.as_bytes()),
                mqtt_string(h.value.unwrap_or_default()),
            ) {
                properties
                    .user_properties
                    .push(UserProperty { name, value });
            }
        }
    }
    properties
}
