//! Access control lists in the format of Mosquitto's `acl_file`, with Mosquitto 2.0's
//! semantics (checked against `src/security_default.c` and `src/security.c` of Mosquitto
//! 2.0, the mosquitto.conf(5) man page, and the Debian `mosquitto` 2.0.11 broker).
//!
//! # Format
//!
//! ```text
//! # Lines starting with '#' in the first column are comments; blank lines are ignored.
//! # Anonymous clients:
//! topic read $SYS/#
//! topic public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret
//! pattern write devices/%c/up
//! pattern read devices/%c/down/#
//! ```
//!
//! - `topic [read|write|readwrite|deny] FILTER`: a rule for the user named by the last
//!   `user` line above it; rules above the first `user` line are for anonymous clients
//!   (no user name) only. FILTER is a topic filter: `+` and `#` are wildcards and must be
//!   valid ones (`#` only as the whole last level, `+` only as a whole level). With one
//!   word after `topic` that word is the filter and the access is readwrite, so
//!   `topic read` is a readwrite rule for the topic `read`, as in Mosquitto. FILTER is the
//!   rest of the line without surrounding blanks, so it may contain spaces.
//! - `user NAME`: NAME is the rest of the line without surrounding blanks. Several
//!   `user` lines with the same name add to one list.
//! - `pattern [read|write|readwrite|deny] FILTER`: a rule for every client, anonymous
//!   ones included, in which `%c` is replaced by the client id and `%u` by the user name.
//!   A pattern with `%u` does not apply to anonymous clients.
//! - Words are separated by spaces (as in Mosquitto, a tab does not separate words);
//!   keywords are lower case. Any other line is an error: loading fails with
//!   `FILE:LINE: problem` (Mosquitto refuses to start on the same lines, including a
//!   comment whose `#` is not in the first column).
//!
//! # Decision (Mosquitto 2.0's `acl_file` check)
//!
//! For a PUBLISH (`Access::Write`, checked against the topic name) and for delivering a
//! message to a subscriber (`Access::Read`, checked against the message's topic name,
//! retained messages included):
//!
//! 1. `$SYS` topics (any topic starting with `$SYS`) cannot be written, except
//!    `$SYS/broker/connection/+/state` (a bridge's status in Mosquitto), which falls
//!    through to the rules. A topic starting with `$share` can be neither read nor
//!    written. A topic name containing `+` or `#` is refused.
//! 2. The client's own rules: its user's `topic` rules, or the anonymous rules when it
//!    has no user name. `deny` rules are tried first: a matching one refuses. Then the
//!    other rules: the first that matches and includes the access asked for allows.
//!    A matching rule without that access (`write` when reading) does not decide.
//! 3. If there are `pattern` lines and the client id or the user name contains `+` or
//!    `#`, access is refused here (Mosquitto logs "ACL denying access to client with
//!    dangerous client id"): otherwise `%c`/`%u` could turn into wildcards.
//! 4. The patterns with `%c`/`%u` filled in, `deny` ones first, as in step 2.
//! 5. Otherwise refused. So with an ACL, anything not granted is refused, and an empty
//!    ACL file refuses everything.
//!
//! A rule matches a topic as a subscription filter matches a topic in MQTT: `+` is one
//! level, `#` the rest including the parent level (`a/#` matches `a`), and a topic
//! starting with `$` is matched only by rules that start with `$` (so `topic read #`
//! does not grant `$SYS/...`; grant `topic read $SYS/#` for that).
//!
//! Deliberate difference from Mosquitto 2.0: a client id or user name containing `/`
//! never widens access through a `pattern`. Mosquitto 2.0 substitutes it (Mosquitto 1.4
//! refused it like `+` and `#`), so client `a/b` gets `devices/a/b/#` from
//! `pattern readwrite devices/%c/#`, which lies inside client `a`'s `devices/a/#`. Here a
//! read/write/readwrite pattern whose `%c` (or `%u`) would insert a `/` is skipped for
//! that client; `deny` patterns still apply with the value substituted.
//!
//! # SUBSCRIBE
//!
//! Mosquitto 2.0's `acl_file` grants every SUBSCRIBE and enforces `read` only when a
//! message is delivered (verified with mosquitto 2.0.11: SUBACK 0 for filters no rule
//! mentions). ferrymq has to enforce read per delivered message the same way, because a
//! filter may cover topics that are partly granted and partly not (`a/#` with
//! `topic read a/#` and `topic deny a/secret`). In addition [`ClientAcl::check_subscribe`]
//! tells at SUBSCRIBE time whether a filter can receive anything at all (refuse it with
//! SUBACK 0x87 Not authorized if not, where Mosquitto would accept a subscription that
//! never delivers), and whether it receives only readable topics, in which case the
//! per-message check can be skipped for that subscription:
//!
//! - [`SubscribeDecision::Deny`]: no topic matching the filter is readable.
//! - [`SubscribeDecision::AllowAll`]: every topic matching the filter is readable (a read
//!   rule covers the filter and no deny rule that comes before it overlaps it).
//! - [`SubscribeDecision::AllowFiltered`]: anything else; check `Access::Read` for each
//!   message delivered through this subscription.
//!
//! A shared subscription `$share/GROUP/FILTER` is decided on FILTER.
//!
//! # Cost
//!
//! Rules are indexed by user name when the file is loaded, so a check only looks at the
//! client's own rules and the patterns, never at other users' rules. A [`ClientAcl`], held
//! by each connection, fills in the patterns once for its client id and user name and
//! caches decisions per topic (at most [`CLIENT_CACHE_ENTRIES_MAX`] topics and
//! [`CLIENT_CACHE_BYTES_MAX`] bytes of topic names; when full the cache is emptied), so a
//! client publishing to the same topics again does not scan rules. It is rebuilt when the
//! snapshot it is given has another generation (after a reload).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::{AuthError, AuthSnapshot, ClientIdentity};

/// What a client wants to do with a topic or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Receive a message: the argument is the message's topic name.
    Read,
    /// Publish (or set a will): the argument is the topic name.
    Write,
    /// Subscribe: the argument is the topic filter; `true` unless
    /// [`SubscribeDecision::Deny`].
    Subscribe,
}

/// The answer for a SUBSCRIBE filter; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeDecision {
    /// Nothing the filter matches is readable: refuse (SUBACK 0x87).
    Deny,
    /// Everything the filter matches is readable: no per-message check needed.
    AllowAll,
    /// Accept, and check [`Access::Read`] for each message delivered.
    AllowFiltered,
}

impl SubscribeDecision {
    pub fn is_allowed(self) -> bool {
        self != SubscribeDecision::Deny
    }
}

/// Topics a [`ClientAcl`] remembers decisions for, at most.
pub const CLIENT_CACHE_ENTRIES_MAX: usize = 1024;
/// Bytes of topic names a [`ClientAcl`] keeps, at most; longer topics are not cached.
pub const CLIENT_CACHE_BYTES_MAX: usize = 64 * 1024;
const CACHED_TOPIC_BYTES_MAX: usize = 1024;

const READ: u8 = 1;
const WRITE: u8 = 2;
const DENY: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    Plus,
    Hash,
}

/// A topic filter split into levels once.
#[derive(Debug, Clone)]
struct Filter {
    levels: Box<[Level]>,
    /// Starts with `$`: matches only topics starting with `$`, and the other way round.
    dollar: bool,
}

impl Filter {
    /// `text` must be a valid filter.
    fn new(text: &str) -> Filter {
        Filter {
            levels: text
                .split('/')
                .map(|level| match level {
                    "+" => Level::Plus,
                    "#" => Level::Hash,
                    literal => Level::Literal(literal.into()),
                })
                .collect(),
            dollar: text.starts_with('$'),
        }
    }

    /// Whether the topic name `topic` matches.
    fn matches(&self, topic: &str) -> bool {
        if self.dollar != topic.starts_with('$') {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in self.levels.iter() {
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(literal) => {
                    if topic_levels.next() != Some(&**literal) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    /// Whether some topic matches both filters.
    fn intersects(&self, other: &Filter) -> bool {
        self.dollar == other.dollar && levels_intersect(&self.levels, &other.levels)
    }

    /// Whether every topic that matches `other` matches `self`.
    fn covers(&self, other: &Filter) -> bool {
        self.dollar == other.dollar && levels_cover(&self.levels, &other.levels)
    }
}

fn levels_intersect(a: &[Level], b: &[Level]) -> bool {
    match (a.first(), b.first()) {
        // '#' matches any rest, none included ("a/#" matches "a").
        (Some(Level::Hash), _) | (_, Some(Level::Hash)) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(x), Some(y)) => {
            let level_meets = match (x, y) {
                (Level::Literal(x), Level::Literal(y)) => x == y,
                _ => true,
            };
            level_meets && levels_intersect(&a[1..], &b[1..])
        }
    }
}

fn levels_cover(outer: &[Level], inner: &[Level]) -> bool {
    match (outer.first(), inner.first()) {
        (Some(Level::Hash), _) => true,
        (None, None) => true,
        (_, Some(Level::Hash)) => false,
        (None, Some(_)) | (Some(_), None) => false,
        (Some(Level::Plus), Some(_)) => levels_cover(&outer[1..], &inner[1..]),
        (Some(Level::Literal(x)), Some(Level::Literal(y))) => {
            x == y && levels_cover(&outer[1..], &inner[1..])
        }
        (Some(Level::Literal(_)), Some(_)) => false,
    }
}

/// Whether `filter` is a valid topic filter: not empty, `#` only as the whole last level,
/// `+` only as a whole level (what Mosquitto's `mosquitto_sub_topic_check` accepts).
fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65535 {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

#[derive(Debug, Clone)]
struct Rule {
    filter: Filter,
    /// `READ | WRITE`, or `DENY` (0).
    access: u8,
}

#[derive(Debug, Clone)]
struct Pattern {
    text: Box<str>,
    access: u8,
    uses_client_id: bool,
    uses_username: bool,
}

impl Pattern {
    /// The filter text with `%c` and `%u` replaced, scanning left to right as Mosquitto
    /// does; `None` when it has `%u` and there is no user name.
    fn fill(&self, client_id: &str, username: Option<&str>) -> Option<String> {
        if self.uses_username && username.is_none() {
            return None;
        }
        let mut out = String::with_capacity(self.text.len() + client_id.len());
        let mut chars = self.text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '%' {
                match (chars.peek(), username) {
                    (Some('c'), _) => {
                        chars.next();
                        out.push_str(client_id);
                        continue;
                    }
                    (Some('u'), Some(username)) => {
                        chars.next();
                        out.push_str(username);
                        continue;
                    }
                    _ => {}
                }
            }
            out.push(c);
        }
        Some(out)
    }
}

/// A parsed ACL file, rules indexed by user name.
#[derive(Debug, Clone)]
pub struct Acl {
    /// Rules above the first `user` line: for clients without a user name.
    anonymous: Arc<[Rule]>,
    users: HashMap<Box<str>, Arc<[Rule]>>,
    /// `deny` patterns first.
    patterns: Arc<[Pattern]>,
}

/// Rules in the order they are tried: deny rules first, then the others.
fn ordered(mut rules: Vec<Rule>) -> Arc<[Rule]> {
    rules.sort_by_key(|rule| rule.access != DENY);
    rules.into()
}

impl Acl {
    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AuthError> {
        let bytes = fs::read(path).map_err(|error| AuthError::io(path, error))?;
        Acl::parse_bytes(&path.display().to_string(), &bytes)
    }

    /// Parses ACL text; `source` names the file in errors.
    pub fn parse(source: &str, text: &str) -> Result<Acl, AuthError> {
        Acl::parse_bytes(source, text.as_bytes())
    }

    fn parse_bytes(source: &str, bytes: &[u8]) -> Result<Acl, AuthError> {
        let mut anonymous = Vec::new();
        let mut users: HashMap<Box<str>, Vec<Rule>> = HashMap::new();
        let mut patterns = Vec::new();
        let mut user: Option<Box<str>> = None;
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        for (number, raw) in body.split(|&b| b == b'\n').enumerate() {
            let error = |problem: String| AuthError::syntax(source, number + 1, problem);
            let line = std::str::from_utf8(raw)
                .map_err(|_| error("the line is not valid UTF-8".into()))?
                .trim_end_matches(|c: char| c.is_ascii_whitespace());
            if line.starts_with('#') {
                continue;
            }
            let Some((keyword, rest)) = next_word(line) else {
                continue;
            };
            match keyword {
                "topic" | "pattern" => {
                    let Some((first, rest)) = next_word(rest) else {
                        return Err(error(format!("`{keyword}` without a topic")));
                    };
                    let rest = rest.trim_matches(|c: char| c.is_ascii_whitespace());
                    let (access, filter) = if rest.is_empty() {
                        (READ | WRITE, first)
                    } else {
                        let access = match first {
                            "read" => READ,
                            "write" => WRITE,
                            "readwrite" => READ | WRITE,
                            "deny" => DENY,
                            other => {
                                return Err(error(format!(
                                    "unknown access {other:?} (expected read, write, \
                                     readwrite or deny)"
                                )))
                            }
                        };
                        (access, rest)
                    };
                    if !is_valid_filter(filter) {
                        return Err(error(format!(
                            "invalid topic filter {filter:?} ('#' only as the whole last \
                             level, '+' only as a whole level)"
                        )));
                    }
                    if keyword == "pattern" {
                        patterns.push(Pattern {
                            text: filter.into(),
                            access,
                            uses_client_id: filter.contains("%c"),
                            uses_username: filter.contains("%u"),
                        });
                    } else {
                        let rule = Rule {
                            filter: Filter::new(filter),
                            access,
                        };
                        match &user {
                            None => anonymous.push(rule),
                            Some(name) => users.entry(name.clone()).or_default().push(rule),
                        }
                    }
                }
                "user" => {
                    let name = rest.trim_matches(|c: char| c.is_ascii_whitespace());
                    if name.is_empty() {
                        return Err(error("`user` without a user name".into()));
                    }
                    user = Some(name.into());
                }
                other => {
                    return Err(error(format!(
                        "unknown keyword {other:?} (expected topic, pattern or user; \
                         comments start with '#' in the first column)"
                    )))
                }
            }
        }
        patterns.sort_by_key(|pattern| pattern.access != DENY);
        Ok(Acl {
            anonymous: ordered(anonymous),
            users: users
                .into_iter()
                .map(|(name, rules)| (name, ordered(rules)))
                .collect(),
            patterns: patterns.into(),
        })
    }

    /// Number of `user` names with rules.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Number of `pattern` lines.
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Decides `access` to `topic` (a topic name for Read/Write, a filter for Subscribe)
    /// without a cache; a connection should hold a [`ClientAcl`] instead.
    pub fn check(&self, client: &ClientIdentity, topic: &str, access: Access) -> bool {
        let rules = self.rules_for(client);
        match access {
            Access::Read => rules.check_topic(topic, READ),
            Access::Write => rules.check_topic(topic, WRITE),
            Access::Subscribe => rules.check_subscribe(topic).is_allowed(),
        }
    }

    /// The decision for a SUBSCRIBE filter, without a cache.
    pub fn check_subscribe(&self, client: &ClientIdentity, filter: &str) -> SubscribeDecision {
        self.rules_for(client).check_subscribe(filter)
    }

    /// The rules that apply to `client`, patterns filled in.
    fn rules_for(&self, client: &ClientIdentity) -> ClientRules {
        let username = client.username.as_deref();
        let own = match username {
            None => self.anonymous.clone(),
            Some(name) => self
                .users
                .get(name)
                .cloned()
                .unwrap_or_else(|| Arc::from(Vec::new())),
        };
        if self.patterns.is_empty() {
            return ClientRules {
                own,
                patterns: PatternRules::Rules(Box::new([])),
            };
        }
        let dangerous = |value: &str| value.contains(['+', '#']);
        if dangerous(&client.client_id) || username.is_some_and(dangerous) {
            return ClientRules {
                own,
                patterns: PatternRules::DenyAll,
            };
        }
        let filled = self
            .patterns
            .iter()
            .filter(|pattern| {
                // A grant must not reach into other clients' levels through a '/'.
                let widens = (pattern.uses_client_id && client.client_id.contains('/'))
                    || (pattern.uses_username && username.is_some_and(|u| u.contains('/')));
                pattern.access == DENY || !widens
            })
            .filter_map(|pattern| {
                let text = pattern.fill(&client.client_id, username)?;
                Some(Rule {
                    filter: Filter::new(&text),
                    access: pattern.access,
                })
            })
            .collect();
        ClientRules {
            own,
            patterns: PatternRules::Rules(filled),
        }
    }
}

/// One client's view of an [`Acl`].
#[derive(Debug, Clone)]
struct ClientRules {
    /// The user's (or the anonymous) `topic` rules, deny rules first.
    own: Arc<[Rule]>,
    patterns: PatternRules,
}

#[derive(Debug, Clone)]
enum PatternRules {
    /// The client id or user name holds a wildcard: patterns refuse everything.
    DenyAll,
    /// Patterns filled in for this client, deny rules first.
    Rules(Box<[Rule]>),
}

/// `$SYS/broker/connection/+/state`: the only `$SYS` topic not refused for writing.
fn is_bridge_state_topic(topic: &str) -> bool {
    let mut levels = topic.split('/');
    levels.next() == Some("$SYS")
        && levels.next() == Some("broker")
        && levels.next() == Some("connection")
        && levels.next().is_some()
        && levels.next() == Some("state")
        && levels.next().is_none()
}

/// The first rule in `rules` that decides `need` on `topic`: `Some(false)` for a matching
/// deny rule, `Some(true)` for a matching rule with the access.
fn decide(rules: &[Rule], topic: &str, need: u8) -> Option<bool> {
    for rule in rules {
        if rule.filter.matches(topic) {
            if rule.access == DENY {
                return Some(false);
            }
            if rule.access & need != 0 {
                return Some(true);
            }
        }
    }
    None
}

impl ClientRules {
    /// Read or write access to a topic name.
    fn check_topic(&self, topic: &str, need: u8) -> bool {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return false;
        }
        if topic.starts_with("$SYS") {
            if need == WRITE && !is_bridge_state_topic(topic) {
                return false;
            }
        } else if topic.starts_with("$share") {
            return false;
        }
        if let Some(decision) = decide(&self.own, topic, need) {
            return decision;
        }
        match &self.patterns {
            PatternRules::DenyAll => false,
            PatternRules::Rules(rules) => decide(rules, topic, need).unwrap_or(false),
        }
    }

    fn check_subscribe(&self, filter: &str) -> SubscribeDecision {
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, filter)) if !group.is_empty() && !group.contains(['+', '#']) => filter,
                _ => return SubscribeDecision::Deny,
            },
            None => filter,
        };
        if !is_valid_filter(filter) {
            return SubscribeDecision::Deny;
        }
        let filter = Filter::new(filter);
        // Rules in the order `check_topic` tries them. With `DenyAll` none follow the
        // client's own rules, and what they leave undecided is refused, as at the end.
        let pattern_rules: &[Rule] = match &self.patterns {
            PatternRules::DenyAll => &[],
            PatternRules::Rules(rules) => rules,
        };
        // An earlier deny rule overlaps the filter; an earlier read rule overlaps it.
        let mut denied_before = false;
        let mut granted_before = false;
        let rest = |granted_before: bool| {
            if granted_before {
                SubscribeDecision::AllowFiltered
            } else {
                SubscribeDecision::Deny
            }
        };
        for rule in self.own.iter().chain(pattern_rules) {
            if rule.access == DENY {
                if rule.filter.covers(&filter) {
                    // Every topic of the filter is refused here unless an earlier read
                    // rule granted it.
                    return rest(granted_before);
                }
                denied_before |= rule.filter.intersects(&filter);
            } else if rule.access & READ != 0 {
                if rule.filter.covers(&filter) {
                    return if denied_before {
                        SubscribeDecision::AllowFiltered
                    } else {
                        SubscribeDecision::AllowAll
                    };
                }
                granted_before |= rule.filter.intersects(&filter);
            }
        }
        rest(granted_before)
    }
}

/// The first space-separated word of `text` and what follows the space after it, as
/// `strtok_r(.., " ", ..)` gives them; `None` when `text` has only spaces.
fn next_word(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start_matches(' ');
    if text.is_empty() {
        return None;
    }
    Some(match text.split_once(' ') {
        Some((word, rest)) => (word, rest),
        None => (text, ""),
    })
}

/// The ACL of one connection: its client's rules with patterns filled in, and a bounded
/// cache of decisions per topic. Pass the shard's current [`AuthSnapshot`] to each check:
/// when its generation differs from the one this was built from, the rules are rebuilt
/// and the cache emptied.
#[derive(Debug)]
pub struct ClientAcl {
    identity: ClientIdentity,
    generation: u64,
    /// `None` when no ACL is configured: everything is allowed.
    rules: Option<ClientRules>,
    cache: HashMap<Box<str>, u8>,
    cache_bytes: usize,
}

// Cache entry bits: for Read and for Write, "known" and "allowed"; for Subscribe, "known"
// and the decision in two bits.
const READ_KNOWN: u8 = 1;
const READ_ALLOWED: u8 = 2;
const WRITE_KNOWN: u8 = 4;
const WRITE_ALLOWED: u8 = 8;
const SUBSCRIBE_KNOWN: u8 = 16;
const SUBSCRIBE_SHIFT: u8 = 5;

fn subscribe_bits(decision: SubscribeDecision) -> u8 {
    let code = match decision {
        SubscribeDecision::Deny => 0,
        SubscribeDecision::AllowAll => 1,
        SubscribeDecision::AllowFiltered => 2,
    };
    SUBSCRIBE_KNOWN | (code << SUBSCRIBE_SHIFT)
}

fn subscribe_from_bits(bits: u8) -> Option<SubscribeDecision> {
    if bits & SUBSCRIBE_KNOWN == 0 {
        return None;
    }
    Some(match (bits >> SUBSCRIBE_SHIFT) & 3 {
        0 => SubscribeDecision::Deny,
        1 => SubscribeDecision::AllowAll,
        _ => SubscribeDecision::AllowFiltered,
    })
}

impl ClientAcl {
    /// The ACL of a client that connected with `identity` (its user name being the one
    /// [`super::Authenticator`] allowed), under `snapshot`.
    pub fn new(snapshot: &AuthSnapshot, identity: ClientIdentity) -> ClientAcl {
        let rules = snapshot.acl().map(|acl| acl.rules_for(&identity));
        ClientAcl {
            identity,
            generation: snapshot.generation(),
            rules,
            cache: HashMap::new(),
            cache_bytes: 0,
        }
    }

    pub fn identity(&self) -> &ClientIdentity {
        &self.identity
    }

    /// The generation of the snapshot the rules come from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Topics with cached decisions.
    pub fn cached_topics(&self) -> usize {
        self.cache.len()
    }

    /// Rebuilds the rules if `snapshot` is not the generation they come from.
    pub fn refresh(&mut self, snapshot: &AuthSnapshot) {
        if snapshot.generation() != self.generation {
            self.rules = snapshot.acl().map(|acl| acl.rules_for(&self.identity));
            self.generation = snapshot.generation();
            self.cache.clear();
            self.cache_bytes = 0;
        }
    }

    /// Whether the client may do `access` on `topic` (a topic name for Read and Write, a
    /// topic filter for Subscribe). Always true when `snapshot` has no ACL.
    pub fn check(&mut self, snapshot: &AuthSnapshot, topic: &str, access: Access) -> bool {
        match access {
            Access::Subscribe => self.check_subscribe(snapshot, topic).is_allowed(),
            Access::Read => self.check_topic(snapshot, topic, READ_KNOWN, READ_ALLOWED, READ),
            Access::Write => self.check_topic(snapshot, topic, WRITE_KNOWN, WRITE_ALLOWED, WRITE),
        }
    }

    fn check_topic(
        &mut self,
        snapshot: &AuthSnapshot,
        topic: &str,
        known: u8,
        allowed: u8,
        need: u8,
    ) -> bool {
        self.refresh(snapshot);
        let Some(rules) = &self.rules else {
            return true;
        };
        if let Some(&bits) = self.cache.get(topic) {
            if bits & known != 0 {
                return bits & allowed != 0;
            }
        }
        let decision = rules.check_topic(topic, need);
        self.remember(topic, known | if decision { allowed } else { 0 });
        decision
    }

    /// The decision for a SUBSCRIBE filter (see [`SubscribeDecision`]). `AllowAll` when
    /// `snapshot` has no ACL.
    pub fn check_subscribe(&mut self, snapshot: &AuthSnapshot, filter: &str) -> SubscribeDecision {
        self.refresh(snapshot);
        let Some(rules) = &self.rules else {
            return SubscribeDecision::AllowAll;
        };
        if let Some(decision) = self.cache.get(filter).and_then(|&b| subscribe_from_bits(b)) {
            return decision;
        }
        let decision = rules.check_subscribe(filter);
        self.remember(filter, subscribe_bits(decision));
        decision
    }

    fn remember(&mut self, topic: &str, bits: u8) {
        if let Some(entry) = self.cache.get_mut(topic) {
            *entry |= bits;
            return;
        }
        if topic.len() > CACHED_TOPIC_BYTES_MAX {
            return;
        }
        if self.cache.len() >= CLIENT_CACHE_ENTRIES_MAX
            || self.cache_bytes + topic.len() > CLIENT_CACHE_BYTES_MAX
        {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.cache_bytes += topic.len();
        self.cache.insert(topic.into(), bits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client_id: &str, username: Option<&str>) -> ClientIdentity {
        ClientIdentity::new(client_id, username)
    }

    #[test]
    fn filter_matching_follows_mqtt() {
        let cases = [
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/+/c", "a//c", true),
            ("+/+", "/x", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS", true),
            ("$SYS/#", "SYS/x", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(
                Filter::new(filter).matches(topic),
                expected,
                "{filter} {topic}"
            );
        }
    }

    #[test]
    fn filter_relations() {
        let f = Filter::new;
        // covers(outer, inner)
        for (outer, inner, expected) in [
            ("#", "a/+/b", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b", true),
            ("a/b", "a/+", false),
            ("+/b", "a/b", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/a", true),
            ("a/+/#", "a/x", true),
            ("a/+/#", "a", false),
        ] {
            assert_eq!(
                f(outer).covers(&f(inner)),
                expected,
                "{outer} covers {inner}"
            );
        }
        for (a, b, expected) in [
            ("a/#", "a", true),
            ("a/+", "+/b", true),
            ("a/+", "b/+", false),
            ("a/b/c", "a/+", false),
            ("+/+/#", "a", false),
            ("#", "$SYS/#", false),
            ("a/+/c", "+/b/#", true),
        ] {
            assert_eq!(f(a).intersects(&f(b)), expected, "{a} meets {b}");
            assert_eq!(f(b).intersects(&f(a)), expected, "{b} meets {a}");
        }
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, expected) in [
            ("topic", "1: `topic` without a topic"),
            ("user alice\ntopic maybe a/b", "2: unknown access \"maybe\""),
            ("pattern read a/#/b", "1: invalid topic filter \"a/#/b\""),
            ("topic read a+", "1: invalid topic filter"),
            ("user", "1: `user` without a user name"),
            ("user   ", "1: `user` without a user name"),
            ("# ok\n\n  # indented", "3: unknown keyword \"#\""),
            ("Topic a", "1: unknown keyword \"Topic\""),
            ("topic\tread\ta", "1: unknown keyword \"topic\\tread\\ta\""),
        ] {
            let error = Acl::parse("acl", text).unwrap_err().to_string();
            assert!(error.starts_with("acl:"), "{error}");
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn parses_like_strtok() {
        // One word after `topic`: the filter, readwrite.
        let acl = Acl::parse("acl", "topic read\ntopic  write   a b  \n").unwrap();
        let anon = id("c", None);
        assert!(acl.check(&anon, "read", Access::Write));
        assert!(acl.check(&anon, "a b", Access::Write));
        assert!(!acl.check(&anon, "a b", Access::Read));
        // Username is the rest of the line.
        let acl = Acl::parse("acl", "user  john smith \ntopic x\n").unwrap();
        assert!(acl.check(&id("c", Some("john smith")), "x", Access::Read));
        assert!(!acl.check(&id("c", Some("john")), "x", Access::Read));
        // CRLF line ends.
        let acl = Acl::parse("acl", "user u\r\ntopic read x\r\n").unwrap();
        assert!(acl.check(&id("c", Some("u")), "x", Access::Read));
    }

    #[test]
    fn fill_scans_left_to_right() {
        let p = Pattern {
            text: "%%c/%u/%x/%".into(),
            access: READ,
            uses_client_id: true,
            uses_username: true,
        };
        assert_eq!(p.fill("id", Some("me")).unwrap(), "%id/me/%x/%");
        assert_eq!(p.fill("id", None), None);
    }

    #[test]
    fn subscribe_decisions() {
        let acl = Acl::parse(
            "acl",
            "user u\ntopic read a/#\ntopic deny a/secret\ntopic read b/+\n\
             topic write w/#\ntopic read $SYS/broker/#\npattern read p/%c/#\n",
        )
        .unwrap();
        let u = id("me", Some("u"));
        use SubscribeDecision::*;
        for (filter, expected) in [
            ("a/#", AllowFiltered),
            ("a/secret", Deny),
            ("a/public/#", AllowAll),
            ("b/x", AllowAll),
            ("b/#", AllowFiltered),
            ("c/#", Deny),
            ("w/#", Deny),
            ("#", AllowFiltered),
            ("$SYS/#", AllowFiltered),
            ("$SYS/broker/uptime", AllowAll),
            ("p/me/#", AllowAll),
            ("p/other/#", Deny),
            ("p/+/x", AllowFiltered),
            ("$share/g/a/public/x", AllowAll),
            ("$share//a", Deny),
            ("$share/g", Deny),
            ("a/#/b", Deny),
        ] {
            assert_eq!(acl.check_subscribe(&u, filter), expected, "{filter}");
        }
    }

    #[test]
    fn dollar_topics() {
        let acl = Acl::parse(
            "acl",
            "user u\ntopic readwrite #\ntopic readwrite $SYS/#\ntopic readwrite $share/#\n",
        )
        .unwrap();
        let u = id("c", Some("u"));
        assert!(acl.check(&u, "$SYS/broker/uptime", Access::Read));
        assert!(!acl.check(&u, "$SYS/broker/uptime", Access::Write));
        assert!(acl.check(&u, "$SYS/broker/connection/b1/state", Access::Write));
        assert!(!acl.check(&u, "$share/g/x", Access::Write));
        assert!(!acl.check(&u, "$share/g/x", Access::Read));
        assert!(!acl.check(&u, "$other/x", Access::Read));
        assert!(!acl.check(&u, "a/+", Access::Write));
        assert!(!acl.check(&u, "", Access::Write));
    }
}
