//! Templates for the Kafka topic and key of a mapping: `telemetry.{1}`, `{client_id}`.
//!
//! A template is parsed once, at startup, into literal text and placeholders; rendering a
//! message walks that list and appends to a buffer, so the per-message cost is the copy of the
//! rendered bytes and nothing else: no allocation besides growing the buffer, no regex.
//!
//! Placeholders:
//! - `{client_id}`: the publisher's client identifier;
//! - `{username}`: its user name, empty when it gave none;
//! - `{topic}`: the whole MQTT topic;
//! - `{N}`: the Nth level of the MQTT topic, counted from 1, empty if the topic is shorter;
//! - `{prop:NAME}`: the value of the first MQTT 5 user property named NAME, empty if none.
//!
//! `{{` and `}}` stand for literal braces.

use crate::protocol::UserProperty;

/// Longest Kafka topic name: Kafka's `Topic.MAX_NAME_LENGTH`.
pub const KAFKA_TOPIC_LENGTH_MAX: usize = 249;

/// What a template is rendered from: one PUBLISH and the session that sent it.
#[derive(Clone, Copy, Debug)]
pub struct RenderContext<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub user_properties: &'a [UserProperty],
}

/// A parsed template; see the module documentation for its syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// In order; adjacent literal text is merged into one part, and no part is empty text.
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    ClientId,
    Username,
    Topic,
    /// A topic level, 1-based.
    Level(usize),
    /// A user property, by name.
    Property(Box<str>),
}

const PLACEHOLDERS_KNOWN: &str = "{client_id}, {username}, {topic}, {1}, {2}..., {prop:NAME}";

impl Template {
    /// Parses `source`. The error is one line naming what is wrong, e.g.
    /// `unknown placeholder {clientid} (known: ...)`.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
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
            let placeholder = parse_placeholder(&after[..end])?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal).into()));
            }
            parts.push(placeholder);
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal.into()));
        }
        Ok(Template { parts })
    }

    /// Appends the template rendered for `ctx` to `out`.
    pub fn render(&self, ctx: &RenderContext<'_>, out: &mut Vec<u8>) {
        for part in &self.parts {
            let text = match part {
                Part::Literal(text) => text,
                Part::ClientId => ctx.client_id,
                Part::Username => ctx.username.unwrap_or(""),
                Part::Topic => ctx.topic,
                Part::Level(n) => ctx.topic.split('/').nth(n - 1).unwrap_or(""),
                Part::Property(name) => ctx
                    .user_properties
                    .iter()
                    .find(|p| p.name.as_str() == &**name)
                    .map_or("", |p| p.value.as_str()),
            };
            out.extend_from_slice(text.as_bytes());
        }
    }

    /// The text, when the template has no placeholder (braces unescaped), so it renders the
    /// same for every message and can be checked, or rendered, once.
    pub fn is_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Literal(text)] => Some(text),
            _ => None,
        }
    }

    /// The highest topic level a `{N}` placeholder uses; 0 when there is none.
    pub fn max_level(&self) -> usize {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Level(n) => *n,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

/// One placeholder, given the text between its braces.
fn parse_placeholder(name: &str) -> Result<Part, String> {
    match name {
        "client_id" => return Ok(Part::ClientId),
        "username" => return Ok(Part::Username),
        "topic" => return Ok(Part::Topic),
        _ => {}
    }
    if let Some(property) = name.strip_prefix("prop:") {
        if property.is_empty() {
            return Err("placeholder {prop:} needs a user property name: {prop:NAME}".into());
        }
        return Ok(Part::Property(property.into()));
    }
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return match name.parse::<usize>() {
            Ok(0) => Err("placeholder {0}: topic levels are counted from {1}".into()),
            Ok(level) => Ok(Part::Level(level)),
            Err(_) => Err(format!(
                "placeholder {{{name}}}: no topic has that many levels"
            )),
        };
    }
    Err(format!(
        "unknown placeholder {{{name}}} (known: {PLACEHOLDERS_KNOWN})"
    ))
}

/// Whether Kafka accepts `byte` in a topic name: ASCII letters, digits, '.', '_' and '-'.
fn is_kafka_topic_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// Makes a rendered topic acceptable to Kafka: each byte outside `[a-zA-Z0-9._-]` becomes '_'
/// (so a non-ASCII character becomes one '_' per UTF-8 byte), the result is cut to
/// [`KAFKA_TOPIC_LENGTH_MAX`] bytes, and "." and "..", which Kafka refuses, become "_" and
/// "__". An empty name stays empty: there is nothing to send it to, which the caller decides.
pub fn sanitize_kafka_topic(bytes: &mut Vec<u8>) {
    for byte in bytes.iter_mut() {
        if !is_kafka_topic_byte(*byte) {
            *byte = b'_';
        }
    }
    bytes.truncate(KAFKA_TOPIC_LENGTH_MAX);
    if matches!(bytes.as_slice(), b"." | b"..") {
        bytes.fill(b'_');
    }
}

/// Checks a topic name as Kafka would: 1 to 249 of `[a-zA-Z0-9._-]`, and neither "." nor "..".
pub fn validate_kafka_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a Kafka topic name cannot be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not allowed as a Kafka topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !c.is_ascii() || !is_kafka_topic_byte(c as u8))
    {
        return Err(format!(
            "{name:?} is not a Kafka topic name: {c:?} is not allowed (only ASCII letters, \
             digits, '.', '_' and '-')"
        ));
    }
    if name.len() > KAFKA_TOPIC_LENGTH_MAX {
        return Err(format!(
            "a Kafka topic name is at most {KAFKA_TOPIC_LENGTH_MAX} characters; this one has {}",
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, ctx: &RenderContext<'_>) -> String {
        let template = Template::parse(source).expect(source);
        let mut out = b">".to_vec();
        template.render(ctx, &mut out);
        String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
    }

    fn sample(properties: &[UserProperty]) -> RenderContext<'_> {
        RenderContext {
            topic: "devices/d17/telemetry/temp",
            client_id: "c-17",
            username: Some("alice"),
            user_properties: properties,
        }
    }

    #[test]
    fn placeholders_render_and_append() {
        let properties = [
            UserProperty::new("site", "paris"),
            UserProperty::new("site", "lyon"),
            UserProperty::new("", "empty name"),
        ];
        let ctx = sample(&properties);
        let cases = [
            ("telemetry", ">telemetry"),
            ("", ">"),
            ("{client_id}", ">c-17"),
            ("{username}", ">alice"),
            ("{topic}", ">devices/d17/telemetry/temp"),
            ("t.{1}.{3}", ">t.devices.telemetry"),
            ("{4}{5}|{99}", ">temp|"),
            ("{prop:site}", ">paris"),
            ("[{prop:missing}]", ">[]"),
            ("{{{client_id}}}", ">{c-17}"),
            ("a{{b}}c", ">a{b}c"),
            ("{{1}}", ">{1}"),
            ("{2}-{username}@{client_id}", ">d17-alice@c-17"),
        ];
        for (source, expected) in cases {
            assert_eq!(render(source, &ctx), expected, "{source:?}");
        }
        let anonymous = RenderContext {
            username: None,
            ..ctx
        };
        assert_eq!(render("u={username}", &anonymous), ">u=");
    }

    #[test]
    fn empty_levels_are_levels() {
        let ctx = RenderContext {
            topic: "/a//b",
            client_id: "",
            username: None,
            user_properties: &[],
        };
        assert_eq!(render("{1}|{2}|{3}|{4}|{5}", &ctx), ">|a||b|");
    }

    #[test]
    fn literal_templates_are_recognized() {
        let literal = |s| Template::parse(s).expect(s).is_literal().map(str::to_owned);
        assert_eq!(literal("telemetry"), Some("telemetry".into()));
        assert_eq!(literal("a{{b}}"), Some("a{b}".into()));
        assert_eq!(literal(""), Some(String::new()));
        assert_eq!(literal("t.{1}"), None);
        assert_eq!(literal("{topic}"), None);
    }

    #[test]
    fn max_level_is_the_deepest_level_used() {
        let max = |s| Template::parse(s).expect(s).max_level();
        assert_eq!(max("telemetry"), 0);
        assert_eq!(max("{topic}"), 0);
        assert_eq!(max("{3}.{1}"), 3);
    }

    #[test]
    fn malformed_templates_are_refused() {
        let cases = [
            (
                "{clientid}",
                "unknown placeholder {clientid} (known: {client_id}, {username}, {topic}, \
                 {1}, {2}..., {prop:NAME})",
            ),
            ("a{}", "unknown placeholder {} (known: "),
            ("{ 1 }", "unknown placeholder { 1 } (known: "),
            ("{0}", "placeholder {0}: topic levels are counted from {1}"),
            (
                "{99999999999999999999999}",
                "placeholder {99999999999999999999999}: no topic has that many levels",
            ),
            (
                "{prop:}",
                "placeholder {prop:} needs a user property name: {prop:NAME}",
            ),
            (
                "a{1",
                "unclosed '{' in \"a{1\"; write '{{' for a literal brace",
            ),
            (
                "a}b",
                "unmatched '}' in \"a}b\"; write '}}' for a literal brace",
            ),
            ("{1}}", "unmatched '}' in \"{1}}\""),
        ];
        for (source, expected) in cases {
            let error = Template::parse(source).expect_err(source);
            assert!(error.starts_with(expected), "{source:?}: {error}");
        }
    }

    #[test]
    fn rendering_does_not_allocate_beyond_the_buffer() {
        let properties = [UserProperty::new("site", "paris")];
        let template = Template::parse("t.{1}.{prop:site}.{client_id}").expect("parses");
        let mut out = Vec::with_capacity(64);
        let before = out.as_ptr();
        for _ in 0..3 {
            out.clear();
            template.render(&sample(&properties), &mut out);
        }
        assert_eq!(out, b"t.devices.paris.c-17");
        assert_eq!(out.as_ptr(), before, "the buffer was not reallocated");
    }

    #[test]
    fn sanitize_replaces_truncates_and_avoids_dots() {
        let sanitize = |bytes: &[u8]| {
            let mut bytes = bytes.to_vec();
            sanitize_kafka_topic(&mut bytes);
            bytes
        };
        assert_eq!(sanitize(b"telemetry.A-z_09"), b"telemetry.A-z_09");
        assert_eq!(sanitize(b"devices/d1 +#"), b"devices_d1___");
        assert_eq!(sanitize("caf\u{e9}".as_bytes()), b"caf__");
        assert_eq!(sanitize(b"."), b"_");
        assert_eq!(sanitize(b".."), b"__");
        assert_eq!(sanitize(b"..."), b"...");
        assert_eq!(sanitize(b""), b"");
        let long = sanitize(&[b'x'; 300]);
        assert_eq!(long.len(), KAFKA_TOPIC_LENGTH_MAX);
        for name in [sanitize(b"a/b"), sanitize(b"."), long] {
            let name = String::from_utf8(name).expect("ASCII");
            validate_kafka_topic(&name).expect(&name);
        }
    }

    #[test]
    fn kafka_topic_names_are_checked() {
        validate_kafka_topic("telemetry.v1_raw-2").expect("valid");
        validate_kafka_topic(&"x".repeat(KAFKA_TOPIC_LENGTH_MAX)).expect("longest valid");
        let cases = [
            ("", "a Kafka topic name cannot be empty"),
            ("..", "\"..\" is not allowed as a Kafka topic name"),
            (
                "a/b",
                "\"a/b\" is not a Kafka topic name: '/' is not allowed (only ASCII letters, \
                 digits, '.', '_' and '-')",
            ),
            (
                "caf\u{e9}",
                "\"caf\u{e9}\" is not a Kafka topic name: '\u{e9}' is not",
            ),
        ];
        for (name, expected) in cases {
            let error = validate_kafka_topic(name).expect_err(name);
            assert!(error.starts_with(expected), "{name:?}: {error}");
        }
        let error = validate_kafka_topic(&"x".repeat(250)).unwrap_err();
        assert_eq!(
            error,
            "a Kafka topic name is at most 249 characters; this one has 250"
        );
    }
}
