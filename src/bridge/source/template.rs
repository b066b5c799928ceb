//! The MQTT topic of a Kafka record: `devices/{key}/commands`, `{topic}/{partition}`.
//!
//! Parsed once when the sources are compiled; rendering appends to a buffer. Placeholders:
//! - `{topic}`: the Kafka topic;
//! - `{partition}`: the record's partition, in decimal;
//! - `{key}`: the record's key;
//! - `{header.NAME}`: the value of the record's first header named NAME.
//!
//! `{{` and `}}` stand for literal braces. A value put in a placeholder must be non-empty
//! UTF-8 without `/`, `+`, `#` or U+0000, so that one placeholder is one whole topic level at
//! most and a record can never address a topic its template does not describe: a key
//! `a/b` given to `devices/{key}/commands` is refused, not delivered to `devices/a/b/...`.

use crate::protocol::topic::validate_topic_name;

/// What a record gives the template.
#[derive(Clone, Copy)]
pub struct RecordFields<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    /// The first header of each name is used.
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
}

/// Why a record has no MQTT topic; the metrics count each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unaddressable {
    /// A placeholder's value is absent (no key, no such header) or empty.
    Missing,
    /// A placeholder's value is not UTF-8, or holds `/`, `+`, `#` or U+0000.
    Invalid,
    /// The whole topic is not a valid MQTT topic name (too long, say).
    TopicInvalid,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Topic,
    Partition,
    Key,
    Header(Box<str>),
}

const PLACEHOLDERS_KNOWN: &str = "{topic}, {partition}, {key}, {header.NAME}";

impl TopicTemplate {
    /// Parses `source`; the error is one line saying what is wrong.
    pub fn parse(source: &str) -> Result<TopicTemplate, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        let flush = |literal: &mut String, parts: &mut Vec<Part>| {
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(literal).into()));
            }
        };
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let brace = rest.as_bytes()[at];
            let after = &rest[at + 1..];
            if after.as_bytes().first() == Some(&brace) {
                literal.push(char::from(brace));
                rest = &after[1..];
                continue;
            }
            if brace == b'}' {
                return Err(format!(
                    "unmatched '}}' in {source:?}; write '}}}}' for a literal brace"
                ));
            }
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "unclosed '{{' in {source:?}; write '{{{{' for a literal brace"
                ));
            };
            let part = match &after[..end] {
                "topic" => Part::Topic,
                "partition" => Part::Partition,
                "key" => Part::Key,
                name => match name.strip_prefix("header.") {
                    Some(header) if !header.is_empty() => Part::Header(header.into()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} (known: {PLACEHOLDERS_KNOWN})"
                        ))
                    }
                },
            };
            flush(&mut literal, &mut parts);
            parts.push(part);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        flush(&mut literal, &mut parts);
        if parts.is_empty() {
            return Err("empty; give an MQTT topic, such as \"devices/{key}/commands\"".into());
        }
        for part in &parts {
            if let Part::Literal(text) = part {
                if text.contains(['+', '#']) {
                    return Err(format!(
                        "{source:?} holds a wildcard ('+' or '#'); a record goes to one topic"
                    ));
                }
                if text.contains('\0') {
                    return Err(format!("{source:?} holds U+0000"));
                }
            }
        }
        if source.starts_with('$') {
            return Err(format!(
                "{source:?} starts with '$', kept for the broker's own topics [MQTT-4.7.2-1]"
            ));
        }
        Ok(TopicTemplate { parts })
    }

    /// The MQTT topic of a record, appended to `out` (cleared first).
    pub fn render(&self, record: &RecordFields<'_>, out: &mut String) -> Result<(), Unaddressable> {
        out.clear();
        for part in &self.parts {
            let value: &[u8] = match part {
                Part::Literal(text) => {
                    out.push_str(text);
                    continue;
                }
                Part::Topic => record.topic.as_bytes(),
                Part::Partition => {
                    use std::fmt::Write;
                    let _ = write!(out, "{}", record.partition);
                    continue;
                }
                Part::Key => record.key.ok_or(Unaddressable::Missing)?,
                Part::Header(name) => (record.header)(name).ok_or(Unaddressable::Missing)?,
            };
            if value.is_empty() {
                return Err(Unaddressable::Missing);
            }
            let text = std::str::from_utf8(value).map_err(|_| Unaddressable::Invalid)?;
            if text.contains(['/', '+', '#', '\0']) {
                return Err(Unaddressable::Invalid);
            }
            out.push_str(text);
        }
        validate_topic_name(out).map_err(|_| Unaddressable::TopicInvalid)?;
        if out.len() > usize::from(u16::MAX) {
            return Err(Unaddressable::TopicInvalid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(
        template: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<String, Unaddressable> {
        let template = TopicTemplate::parse(template).expect("template");
        let headers: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        let header = |name: &str| -> Option<&[u8]> {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        let fields = RecordFields {
            topic: "device-commands",
            partition: 7,
            key,
            header: &header,
        };
        let mut out = String::new();
        template.render(&fields, &mut out).map(|()| out)
    }

    #[test]
    fn placeholders_take_the_record_fields() {
        assert_eq!(
            render("devices/{key}/commands", Some(b"dev-1"), &[]).as_deref(),
            Ok("devices/dev-1/commands")
        );
        assert_eq!(
            render(
                "{topic}/{partition}/{header.kind}",
                None,
                &[("kind", b"reboot")]
            )
            .as_deref(),
            Ok("device-commands/7/reboot")
        );
        assert_eq!(render("a/{{b}}", None, &[]).as_deref(), Ok("a/{b}"));
    }

    #[test]
    fn a_value_cannot_add_levels_or_wildcards() {
        for key in [&b"a/b"[..], b"+", b"#", b"x\0y"] {
            assert_eq!(
                render("devices/{key}/commands", Some(key), &[]),
                Err(Unaddressable::Invalid),
                "{key:?}"
            );
        }
        assert_eq!(
            render("devices/{key}", Some(&[0xff, 0xfe]), &[]),
            Err(Unaddressable::Invalid)
        );
        assert_eq!(
            render("devices/{key}", None, &[]),
            Err(Unaddressable::Missing)
        );
        assert_eq!(
            render("devices/{key}", Some(b""), &[]),
            Err(Unaddressable::Missing)
        );
        assert_eq!(
            render("devices/{header.to}", Some(b"k"), &[]),
            Err(Unaddressable::Missing)
        );
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (template, says) in [
            ("devices/{id}", "unknown placeholder {id}"),
            ("devices/{key", "unclosed"),
            ("devices/key}", "unmatched"),
            ("devices/+/{key}", "wildcard"),
            ("devices/#", "wildcard"),
            ("$SYS/{key}", "starts with '$'"),
            ("", "empty"),
            ("{header.}", "unknown placeholder"),
        ] {
            let error = TopicTemplate::parse(template).expect_err(template);
            assert!(error.contains(says), "{template}: {error}");
        }
    }
}
