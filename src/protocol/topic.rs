//! Topic names and topic filters (section 4.7) and shared subscriptions (section 4.8.2).
//!
//! Pure checks on strings: the broker's topic tree relies on them having passed.

use super::DecodeError;

/// A PUBLISH or will topic: at least one character [MQTT-4.7.3-1] and no wildcard
/// [MQTT-3.3.2-2]. (5.0 allows an empty topic name with a Topic Alias; the PUBLISH decoder
/// handles that case before calling this.)
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.is_empty() {
        return Err(DecodeError::EmptyTopicName);
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(())
}

/// A SUBSCRIBE or UNSUBSCRIBE topic filter: not empty [MQTT-4.7.3-1]; '#' only as the
/// whole last level [MQTT-4.7.1-2]; '+' only as a whole level [MQTT-4.7.1-3]; a shared
/// subscription `$share/NAME/FILTER` with a non-empty NAME free of wildcards and '/' and a
/// valid FILTER [MQTT-4.8.2-1], [MQTT-4.8.2-2].
pub fn validate_topic_filter(filter: &str) -> Result<(), DecodeError> {
    match parse_shared(filter) {
        Some(shared) => {
            let SharedFilter { group, filter } = shared?;
            if group.is_empty() {
                return Err(invalid("empty share name"));
            }
            if group.contains(['+', '#']) {
                return Err(invalid("wildcard in share name"));
            }
            validate_plain_filter(filter)
        }
        None => validate_plain_filter(filter),
    }
}

fn invalid(reason: &'static str) -> DecodeError {
    DecodeError::InvalidTopicFilter { reason }
}

fn validate_plain_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(invalid("empty topic filter"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return Err(invalid("'#' must be the whole last level"));
        }
        if level.contains('+') && level != "+" {
            return Err(invalid("'+' must be a whole level"));
        }
    }
    Ok(())
}

/// The two parts of `$share/{ShareName}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub group: &'a str,
    pub filter: &'a str,
}

const SHARE_PREFIX: &str = "$share/";

/// `None` for an ordinary filter; for one starting with `$share/`, its parts or the reason
/// it is malformed.
pub fn parse_shared(filter: &str) -> Option<Result<SharedFilter<'_>, DecodeError>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    Some(match rest.split_once('/') {
        Some((group, filter)) => Ok(SharedFilter { group, filter }),
        None => Err(invalid("shared subscription without a topic filter")),
    })
}

pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARE_PREFIX)
}

/// Whether `topic` matches `filter` (section 4.7), including the rule that a filter
/// starting with a wildcard does not match a topic starting with '$' [MQTT-4.7.2-1].
/// Both arguments must have passed validation.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for filter_level in filter.split('/') {
        match filter_level {
            // '#' also matches the parent level: "sport/#" matches "sport".
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_from_section_4_7() {
        for ok in [
            "sport/tennis/player1/#",
            "sport/#",
            "#",
            "+",
            "+/tennis/#",
            "sport/+/player1",
            "/+",
            "+/+",
            "a//b",
            "$SYS/#",
            "$share/group/a/+/c",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "sport+",
            "a/b+/c",
            "#/",
            "$share/",
            "$share/group",
            "$share//a",
            "$share/gr+oup/a",
            "$share/group/",
        ] {
            assert!(validate_topic_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_from_section_4_7() {
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }
}
