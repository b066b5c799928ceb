//! Kafka records as the bridge builds them: headers from a PUBLISH, records given back by
//! librdkafka turned into records again, dead letters cut to size, and the reason codes a
//! refusal becomes.

use bytes::Bytes;
use rdkafka::error::RDKafkaErrorCode;

use crate::metrics::RefusedReason;
use crate::protocol::ReasonCode;

use super::mapping::{HeaderField, HeaderSet};
use super::producer::{Record, RefusedRecord};
use super::ticket::Tag;
use super::Publication;

/// The most payload a dead-letter record carries: librdkafka's default `message.max.bytes`
/// less room for the key and headers. A longer payload is cut, and the header
/// `dead_letter_payload_bytes` gives its full size.
pub(super) const DEAD_LETTER_PAYLOAD_MAX: usize = 900_000;

/// The payload below which a dead letter the dead-letter topic refuses as too large is not
/// cut further (its headers, not its payload, are then too large).
const DEAD_LETTER_PAYLOAD_MIN: usize = 1024;

/// A dead letter refused as too large, with half its payload; the header
/// `dead_letter_payload_bytes` keeps the full size. None when the payload is already at
/// [`DEAD_LETTER_PAYLOAD_MIN`] or less.
pub(super) fn shorter_letter(letter: RefusedRecord, tag: Tag) -> Option<Record> {
    if letter.payload.len() <= DEAD_LETTER_PAYLOAD_MIN {
        return None;
    }
    let mut letter = resend(letter, tag);
    let full = letter.payload.len();
    if !(letter.headers.iter()).any(|(name, _)| *name == "dead_letter_payload_bytes") {
        letter
            .headers
            .push(("dead_letter_payload_bytes", Bytes::from(full.to_string())));
    }
    letter
        .payload
        .truncate((full / 2).max(DEAD_LETTER_PAYLOAD_MIN));
    Some(letter)
}

/// A record librdkafka gave back, as a record to send again: header names map back to the
/// static names records carry.
pub(super) fn resend(record: RefusedRecord, tag: Tag) -> Record {
    Record {
        topic: record.topic,
        key: record.key,
        payload: record.payload,
        headers: (record.headers.iter())
            .map(|(name, value)| (static_header_name(name), value.clone()))
            .collect(),
        tag,
    }
}

/// Header names are static strings in records; those read back from the spool are mapped
/// onto the same names.
pub(super) fn static_header_name(name: &str) -> &'static str {
    const NAMES: [&str; 13] = [
        "mqtt_topic",
        "client_id",
        "username",
        "qos",
        "retain",
        "user_property",
        "content_type",
        "response_topic",
        "correlation_data",
        "dead_letter_error",
        "dead_letter_topic",
        "dead_letter_cluster",
        "dead_letter_payload_bytes",
    ];
    NAMES
        .iter()
        .find(|n| **n == name)
        .copied()
        .unwrap_or("payload_format")
}

/// The Kafka record headers a mapping asks for. Values are slices of the message (or
/// static strings): nothing is copied until librdkafka copies.
pub(super) fn record_headers(
    fields: HeaderSet,
    message: &Publication<'_>,
) -> Vec<(&'static str, Bytes)> {
    let mut headers = Vec::new();
    if fields.is_empty() {
        return headers;
    }
    let properties = message.properties;
    for field in fields.iter() {
        match field {
            HeaderField::MqttTopic => {
                headers.push(("mqtt_topic", message.topic.as_bytes().clone()))
            }
            HeaderField::ClientId => {
                headers.push(("client_id", message.publisher.as_bytes().clone()))
            }
            HeaderField::Username => {
                if let Some(username) = message.username {
                    headers.push(("username", Bytes::copy_from_slice(username.as_bytes())));
                }
            }
            HeaderField::Qos => {
                headers.push(("qos", Bytes::from_static(QOS_TEXT[message.qos as usize])))
            }
            HeaderField::Retain => headers.push((
                "retain",
                Bytes::from_static(if message.retain { b"1" } else { b"0" }),
            )),
            HeaderField::UserProperties => {
                // Header names must be 'static here; user property names are not, so they go
                // in one header each as "name=value" under "user_property".
                for property in &properties.user_properties {
                    let mut value =
                        Vec::with_capacity(property.name.len() + 1 + property.value.len());
                    value.extend_from_slice(property.name.as_bytes());
                    value.push(b'=');
                    value.extend_from_slice(property.value.as_bytes());
                    headers.push(("user_property", Bytes::from(value)));
                }
            }
            HeaderField::ContentType => {
                if let Some(content_type) = &properties.content_type {
                    headers.push(("content_type", content_type.as_bytes().clone()));
                }
            }
            HeaderField::ResponseTopic => {
                if let Some(topic) = &properties.response_topic {
                    headers.push(("response_topic", topic.as_bytes().clone()));
                }
            }
            HeaderField::CorrelationData => {
                if let Some(data) = &properties.correlation_data {
                    headers.push(("correlation_data", data.clone()));
                }
            }
            HeaderField::PayloadFormat => {
                if let Some(format) = properties.payload_format_indicator {
                    headers.push((
                        "payload_format",
                        Bytes::from_static(if format == 1 { b"utf-8" } else { b"bytes" }),
                    ));
                }
            }
        }
    }
    headers
}

const QOS_TEXT: [&[u8]; 3] = [b"0", b"1", b"2"];

/// The reason of a code that [`super::producer::is_refused_for_good`], as the metrics
/// name it.
pub(super) fn refused_reason(code: RDKafkaErrorCode) -> RefusedReason {
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::MessageBatchTooLarge => RefusedReason::TooLarge,
        RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::UnknownTopic => {
            RefusedReason::InvalidTopic
        }
        RDKafkaErrorCode::TopicAuthorizationFailed => RefusedReason::NotAuthorized,
        RDKafkaErrorCode::PolicyViolation => RefusedReason::PolicyViolation,
        _ => RefusedReason::InvalidRecord,
    }
}

/// The reason code for a PUBACK/PUBREC after Kafka refused a record for good
/// (3.4.2.1: 0x80 unless a closer one applies).
pub fn failure_reason(code: RDKafkaErrorCode) -> ReasonCode {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => ReasonCode::NotAuthorized,
        RDKafkaErrorCode::InvalidTopic | RDKafkaErrorCode::UnknownTopic => {
            ReasonCode::TopicNameInvalid
        }
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::PolicyViolation => {
            ReasonCode::ImplementationSpecificError
        }
        RDKafkaErrorCode::QueueFull => ReasonCode::QuotaExceeded,
        _ => ReasonCode::UnspecifiedError,
    }
}
