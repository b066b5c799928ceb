//! The compiled `[[kafka.mapping]]` list: which mappings an MQTT topic reaches, and for each
//! the cluster, the parsed topic and key templates, the headers and the ack mode.
//!
//! Built once per shard from the [`KafkaConfig`], whose templates it parses (and, through
//! [`super::validate`], once at startup to refuse a bad one); each shard owns its copy, so
//! matching needs no lock. Matching uses the broker's subscription trie with the mapping index
//! as subscriber, so its cost depends on the filters that can match, not on how many mappings
//! there are, and it allocates nothing once the match buffer has grown to the largest number
//! of mappings one topic reaches.

use crate::config::{ConfigError, KafkaConfig};
use crate::topic::SubscriptionTree;
// Re-exported: the bridge reads them from a `Mapping` and should not need the config module.
pub use crate::config::{AckMode, HeaderField, OnRefused};

use super::template::{validate_kafka_topic, Template};

/// The default record key: the MQTT topic, so one topic's messages share a partition and stay
/// in order.
const KEY_DEFAULT: &str = "{topic}";

/// A set of [`HeaderField`]s, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderSet(u16);

// One bit per field.
const _: () = assert!(HeaderField::ALL.len() <= u16::BITS as usize);

impl HeaderSet {
    pub const EMPTY: HeaderSet = HeaderSet(0);

    fn bit(field: HeaderField) -> u16 {
        1 << field as u16
    }

    pub fn insert(&mut self, field: HeaderField) {
        self.0 |= HeaderSet::bit(field);
    }

    pub fn contains(self, field: HeaderField) -> bool {
        self.0 & HeaderSet::bit(field) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The fields in the set, in [`HeaderField::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = HeaderField> {
        HeaderField::ALL
            .into_iter()
            .filter(move |&field| self.contains(field))
    }
}

impl FromIterator<HeaderField> for HeaderSet {
    fn from_iter<I: IntoIterator<Item = HeaderField>>(fields: I) -> HeaderSet {
        let mut set = HeaderSet::EMPTY;
        for field in fields {
            set.insert(field);
        }
        set
    }
}

/// One `[[kafka.mapping]]`, ready for the per-message path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Position in the file, as in the key `kafka.mapping[INDEX]`.
    pub index: usize,
    /// Index into [`Mappings::cluster_names`].
    pub cluster_index: usize,
    pub topic: Template,
    /// The record key; the MQTT topic when the file gives none.
    pub key: Template,
    pub headers: HeaderSet,
    pub ack: AckMode,
    /// Whether matched messages also go to MQTT subscribers.
    pub mqtt_subscribers: bool,
    /// Whether messages from Kafka sources go through it too (`from_sources`).
    pub from_sources: bool,
    /// What becomes of a record Kafka refuses for good.
    pub on_refused: OnRefused,
    /// Where refused records go with `on_refused = "dead_letter"`.
    pub dead_letter: Option<DeadLetter>,
}

/// The dead-letter destination of a mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// Index into [`Mappings::cluster_names`].
    pub cluster_index: usize,
    pub topic: String,
}

/// Every mapping of the configuration and the trie that finds those of a topic.
pub struct Mappings {
    /// In file order: `mappings[i].index == i`.
    mappings: Vec<Mapping>,
    /// In name order, as in `KafkaConfig::clusters`.
    cluster_names: Vec<String>,
    /// Each mapping's filter, subscribed by the mapping's index.
    tree: SubscriptionTree<usize, ()>,
    /// Indices matched by the current call; kept to reuse its capacity.
    matched: Vec<usize>,
}

impl Mappings {
    /// Compiles `config`: checks it ([`KafkaConfig::validate`]), then parses each mapping's
    /// topic and key templates and checks the Kafka topic names known now (a literal `topic`,
    /// `dead_letter_topic`). This is the one place templates are parsed. The error is one line
    /// naming the key, as the configuration's errors do: `kafka.mapping[2].topic: ...`.
    pub fn new(config: &KafkaConfig) -> Result<Mappings, ConfigError> {
        config.validate()?;
        let cluster_names: Vec<String> = config.clusters.keys().cloned().collect();
        let cluster_index = |name: &str| {
            cluster_names
                .iter()
                .position(|known| known == name)
                .expect("a cluster's name is listed")
        };
        let mut tree = SubscriptionTree::new();
        let mut mappings = Vec::with_capacity(config.mappings.len());
        for (index, m) in config.mappings.iter().enumerate() {
            let error = |key: &str, problem: String| {
                ConfigError::new(format!("kafka.mapping[{index}].{key}: {problem}"))
            };
            // `validate` checked that the mapping names a known cluster.
            let cluster = config.cluster_of(m).expect("validated cluster");
            let topic = Template::parse(&m.topic).map_err(|e| error("topic", e))?;
            // A topic that depends on the message is sanitized when rendered instead.
            if let Some(name) = topic.is_literal() {
                validate_kafka_topic(name).map_err(|e| error("topic", e))?;
            }
            let key = Template::parse(m.key.as_deref().unwrap_or(KEY_DEFAULT))
                .map_err(|e| error("key", e))?;
            let dead_letter = match config.dead_letter_cluster_of(m) {
                Some(cluster) => {
                    // `validate` checked that `dead_letter` has its topic.
                    let topic = m.dead_letter_topic.clone().expect("validated");
                    validate_kafka_topic(&topic).map_err(|e| error("dead_letter_topic", e))?;
                    Some(DeadLetter {
                        cluster_index: cluster_index(cluster),
                        topic,
                    })
                }
                None => None,
            };
            mappings.push(Mapping {
                index,
                cluster_index: cluster_index(cluster),
                topic,
                key,
                headers: m.headers.iter().copied().collect(),
                ack: m.ack,
                mqtt_subscribers: m.mqtt_subscribers,
                from_sources: m.from_sources,
                on_refused: m.on_refused,
                dead_letter,
            });
            tree.subscribe(&m.mqtt, index, ());
        }
        Ok(Mappings {
            matched: Vec::with_capacity(mappings.len()),
            mappings,
            cluster_names,
            tree,
        })
    }

    /// Cluster names by index, as [`Mapping::cluster_index`] refers to them.
    pub fn cluster_names(&self) -> &[String] {
        &self.cluster_names
    }

    /// Every mapping, in file order.
    pub fn as_slice(&self) -> &[Mapping] {
        &self.mappings
    }

    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    /// Calls `f` for each mapping whose filter matches `topic` (a topic name), in file order,
    /// so records of one message are made in the same order on every shard. As for
    /// subscriptions, a filter starting with a wildcard does not match a `$` topic.
    pub fn for_each_match(&mut self, topic: &str, mut f: impl FnMut(&Mapping)) {
        let Mappings {
            mappings,
            tree,
            matched,
            ..
        } = self;
        if mappings.is_empty() {
            return;
        }
        matched.clear();
        tree.for_each_match(topic, |m| matched.push(*m.key()));
        // Each index is subscribed once, to one filter, so it is reported at most once.
        matched.sort_unstable();
        for &index in matched.iter() {
            f(&mappings[index]);
        }
    }

    /// Whether a message on `topic` also goes to MQTT subscribers: false when a matching
    /// mapping has `mqtt_subscribers = false`.
    pub fn forwards_to_subscribers(&mut self, topic: &str) -> bool {
        let mut forwards = true;
        self.for_each_match(topic, |m| forwards &= m.mqtt_subscribers);
        forwards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::template::RenderContext;
    use crate::config::Config;
    use crate::protocol::UserProperty;

    const CLUSTERS: &str = "[kafka.clusters.main]\nbootstrap = \"k1:9092,k2:9092\"\n\
                            [kafka.clusters.audit]\nbootstrap = \"a1:9092\"\n";

    fn kafka(mappings: &str) -> KafkaConfig {
        let text = format!("{CLUSTERS}{mappings}");
        Config::from_toml(&text, "test.toml").expect(&text).kafka
    }

    fn compile(mappings: &str) -> Mappings {
        Mappings::new(&kafka(mappings)).expect(mappings)
    }

    fn matches(mappings: &mut Mappings, topic: &str) -> Vec<usize> {
        let mut found = Vec::new();
        mappings.for_each_match(topic, |m| found.push(m.index));
        found
    }

    /// Four overlapping filters, deliberately not in the order the trie would report them.
    const OVERLAPPING: &str = "\
        [[kafka.mapping]]\nmqtt = \"devices/+/telemetry/#\"\ncluster = \"main\"\n\
        topic = \"telemetry\"\n\
        [[kafka.mapping]]\nmqtt = \"#\"\ncluster = \"audit\"\ntopic = \"everything\"\n\
        [[kafka.mapping]]\nmqtt = \"devices/d1/telemetry/temp\"\ncluster = \"main\"\n\
        topic = \"d1-temp\"\nmqtt_subscribers = false\n\
        [[kafka.mapping]]\nmqtt = \"devices/#\"\ncluster = \"main\"\ntopic = \"devices\"\n";

    #[test]
    fn matches_come_in_file_order() {
        let mut mappings = compile(OVERLAPPING);
        assert_eq!(mappings.len(), 4);
        assert_eq!(
            matches(&mut mappings, "devices/d1/telemetry/temp"),
            [0, 1, 2, 3]
        );
        assert_eq!(
            matches(&mut mappings, "devices/d2/telemetry/temp"),
            [0, 1, 3]
        );
        assert_eq!(matches(&mut mappings, "devices/d2/status"), [1, 3]);
        assert_eq!(matches(&mut mappings, "devices"), [1, 3]);
        assert_eq!(matches(&mut mappings, "other"), [1]);
        // A filter starting with a wildcard does not take `$` topics.
        assert_eq!(
            matches(&mut mappings, "$SYS/broker/uptime"),
            Vec::<usize>::new()
        );
        // Repeated calls give the same answer from the reused buffer.
        assert_eq!(
            matches(&mut mappings, "devices/d1/telemetry/temp"),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn clusters_are_indexed_by_name() {
        let mappings = compile(OVERLAPPING);
        assert_eq!(mappings.cluster_names(), ["audit", "main"]);
        let clusters: Vec<_> = mappings
            .as_slice()
            .iter()
            .map(|m| mappings.cluster_names()[m.cluster_index].as_str())
            .collect();
        assert_eq!(clusters, ["main", "audit", "main", "main"]);
    }

    #[test]
    fn a_sink_mapping_keeps_messages_from_subscribers() {
        let mut mappings = compile(OVERLAPPING);
        assert!(!mappings.forwards_to_subscribers("devices/d1/telemetry/temp"));
        assert!(mappings.forwards_to_subscribers("devices/d2/telemetry/temp"));
        assert!(mappings.forwards_to_subscribers("other"));
        let mut none = Mappings::new(&KafkaConfig::default()).expect("empty");
        assert!(none.is_empty());
        assert!(none.forwards_to_subscribers("any/topic"));
        assert_eq!(matches(&mut none, "any/topic"), Vec::<usize>::new());
    }

    #[test]
    fn defaults_and_templates_are_compiled() {
        let mut mappings = compile(
            "[[kafka.mapping]]\nmqtt = \"devices/+/telemetry/#\"\ncluster = \"main\"\n\
             topic = \"telemetry.{2}\"\nkey = \"{client_id}/{prop:site}\"\n\
             headers = [\"qos\", \"user_properties\", \"retain\"]\nack = \"none\"\n\
             [[kafka.mapping]]\nmqtt = \"devices/#\"\ncluster = \"audit\"\ntopic = \"audit\"\n",
        );
        let properties = [UserProperty::new("site", "lyon")];
        let ctx = RenderContext {
            topic: "devices/d7/telemetry/temp",
            client_id: "c7",
            username: None,
            user_properties: &properties,
        };
        let mut rendered = Vec::new();
        mappings.for_each_match(ctx.topic, |m| {
            let (mut topic, mut key) = (Vec::new(), Vec::new());
            m.topic.render(&ctx, &mut topic);
            m.key.render(&ctx, &mut key);
            let text = |bytes| String::from_utf8(bytes).expect("UTF-8");
            rendered.push((text(topic), text(key)));
        });
        assert_eq!(
            rendered,
            [
                ("telemetry.d7".to_string(), "c7/lyon".to_string()),
                ("audit".to_string(), "devices/d7/telemetry/temp".to_string()),
            ]
        );

        let [first, second] = mappings.as_slice() else {
            panic!("two mappings");
        };
        assert_eq!(first.ack, AckMode::None);
        let headers: Vec<_> = first.headers.iter().collect();
        assert_eq!(
            headers,
            [
                HeaderField::Qos,
                HeaderField::Retain,
                HeaderField::UserProperties
            ]
        );
        assert_eq!(first.topic.max_level(), 2);
        // Defaults: key = the MQTT topic, three headers, ack = kafka, MQTT subscribers too.
        assert_eq!(second.key, Template::parse("{topic}").expect("parses"));
        let headers: Vec<_> = second.headers.iter().collect();
        assert_eq!(
            headers,
            [
                HeaderField::MqttTopic,
                HeaderField::ClientId,
                HeaderField::Qos
            ]
        );
        assert_eq!(second.ack, AckMode::Kafka);
        assert!(second.mqtt_subscribers);
        assert_eq!(second.topic.is_literal(), Some("audit"));
    }

    #[test]
    fn the_only_cluster_is_the_default() {
        let config = Config::from_toml(
            "[kafka.clusters.only]\nbootstrap = \"k:9092\"\n\
             [[kafka.mapping]]\nmqtt = \"a/#\"\ntopic = \"a\"\n",
            "test.toml",
        )
        .expect("parses");
        let mappings = Mappings::new(&config.kafka).expect("compiles");
        assert_eq!(mappings.cluster_names(), ["only"]);
        assert_eq!(mappings.as_slice()[0].cluster_index, 0);
    }

    #[test]
    fn invalid_configurations_are_refused() {
        let error = Mappings::new(&kafka(
            "[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\ntopic = \"a\"\n\
             [[kafka.mapping]]\nmqtt = \"b\"\ncluster = \"backup\"\ntopic = \"b\"\n",
        ))
        .err()
        .expect("unknown cluster");
        assert_eq!(
            error.to_string(),
            "kafka.mapping[1].cluster: \"backup\" is not a cluster (known: audit, main)"
        );
    }

    /// The errors of what only the bridge parses, as `ferrymq` prints them: one line naming
    /// the key, the reference a value came from, and never the value.
    #[test]
    fn templates_and_topic_names_are_checked_naming_the_key() {
        let ok = "[[kafka.mapping]]\nmqtt = \"ok\"\ncluster = \"main\"\ntopic = \"ok\"\n";
        let cases = [
            (
                "topic = \"t.{clientid}\"\n",
                "kafka.mapping[1].topic: unknown placeholder {clientid} (known: {client_id}, \
                 {username}, {topic}, {1}, {2}..., {prop:NAME})",
            ),
            (
                "topic = \"devices/all\"\n",
                "kafka.mapping[1].topic: \"devices/all\" is not a Kafka topic name: '/' is not \
                 allowed (only ASCII letters, digits, '.', '_' and '-')",
            ),
            (
                "topic = \"\"\n",
                "kafka.mapping[1].topic: a Kafka topic name cannot be empty",
            ),
            (
                "topic = \"t\"\nkey = \"{1\"\n",
                "kafka.mapping[1].key: unclosed '{' in \"{1\"; write '{{' for a literal brace",
            ),
            (
                "topic = \"t\"\non_refused = \"dead_letter\"\ndead_letter_topic = \"a b\"\n",
                "kafka.mapping[1].dead_letter_topic: \"a b\" is not a Kafka topic name: ' ' is \
                 not allowed (only ASCII letters, digits, '.', '_' and '-')",
            ),
            (
                "topic = \"${env:TOPIC}\"\n",
                "kafka.mapping[1].topic: ${env:TOPIC}: \"***\" is not a Kafka topic name: '/' \
                 is not allowed (only ASCII letters, digits, '.', '_' and '-')",
            ),
        ];
        for (second, expected) in cases {
            let text = format!(
                "{CLUSTERS}{ok}[[kafka.mapping]]\nmqtt = \"a\"\ncluster = \"main\"\n{second}"
            );
            let env = |name: &str| (name == "TOPIC").then(|| "secret/topic".into());
            let config = Config::from_toml_with_env(&text, "test.toml", &env).expect(&text);
            // Plain data: the configuration takes the strings as they are.
            config.validate().expect(&text);
            let error = crate::bridge::validate(&config)
                .expect_err(&text)
                .to_string();
            assert_eq!(error, expected);
            assert_eq!(
                Mappings::new(&config.kafka).err().map(|e| e.to_string()),
                Some(expected.replace("${env:TOPIC}: \"***\"", "\"secret/topic\"")),
                "Mappings::new names the key too; only the bridge's validate hides values"
            );
        }
        // A topic that depends on the message is sanitized when rendered, not refused.
        compile("[[kafka.mapping]]\nmqtt = \"a/#\"\ncluster = \"main\"\ntopic = \"t/{1}\"\n");
    }

    #[test]
    fn header_sets_hold_each_field() {
        let mut set = HeaderSet::EMPTY;
        assert!(set.is_empty());
        for field in HeaderField::ALL {
            assert!(!set.contains(field));
            set.insert(field);
            assert!(set.contains(field));
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), HeaderField::ALL);
    }
}
