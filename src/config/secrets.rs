//! Secrets out of the configuration file: any string value written as a whole
//! `"${env:NAME}"` or `"${file:/path}"` is replaced by the environment variable's value or by
//! the file's content, and those values, with the values of keys that hold secrets
//! ([`is_secret_key`]), are kept out of every error the configuration makes.
//!
//! - `${env:NAME}`: the variable's value; a variable not set (or not UTF-8) is an error.
//! - `${file:PATH}`: the file's content, without its final line break (exactly one `\n` or
//!   `\r\n` is removed); a file that cannot be read (or is not UTF-8) is an error. A relative
//!   PATH is taken from the working directory, as the other paths of the file are.
//! - Only a whole value is a reference: `"pre${env:X}"` stays as written, and so does a value
//!   whose NAME or PATH would hold a `}`. A value of two or more `$` and then `{env:…}` or
//!   `{file:…}` loses one `$`: `"$${env:X}"` is the literal text `${env:X}`.
//! - A reference gives a string: a key that takes a number or a boolean cannot be one.
//!
//! [`resolve`] walks the file's parsed document, which knows where each value is written,
//! and rebuilds the text with the string literal of each reference replaced by a TOML basic
//! string of its value, escaped so that it stays on one line. The rebuilt text is then read as
//! the file always was; [`Resolved::original_offset`] takes the position of an error back to
//! the file as written, and [`scrub`] takes the values out of its message. The errors of
//! resolving itself name the key and the reference (`NAME` or `PATH` are not secret), never a
//! value: `kafka.clusters.main.config."sasl.password": ${env:KAFKA_PASSWORD}: environment
//! variable KAFKA_PASSWORD is not set`.

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::file::toml_key;

/// What a secret is shown as.
pub const MASK: &str = "***";

/// Whether the value of `key` is a secret, never to be shown: a librdkafka property such as
/// `sasl.password`, `ssl.key.password`, `ssl.keystore.password`, `ssl.key.pem`,
/// `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config` or `sasl.jaas.config`, and in
/// general any key ending in `password`, `passphrase`, `secret` or `key.pem` (private key
/// material, not `ssl.certificate.pem`), or containing `token`. `key` may be a property name or
/// a whole key path (`kafka.clusters.main.config."sasl.password"`); case does not matter.
/// ferrymq's own keys name files (`tls_key`, `auth.password_file`), never hold a secret.
pub fn is_secret_key(key: &str) -> bool {
    const ENDINGS: [&str; 7] = [
        "password",
        "passphrase",
        "secret",
        "key.pem",
        "sasl.oauthbearer.config",
        "jaas.config",
        "private.key",
    ];
    let key = key.trim_end_matches('"').to_ascii_lowercase();
    ENDINGS.iter().any(|ending| key.ends_with(ending)) || key.contains("token")
}

/// `text` with each occurrence of each secret replaced by `***`: as written, and as Rust's
/// `{:?}` or a TOML basic string would escape it (error messages quote values so). Empty
/// secrets are ignored; overlapping occurrences become one `***`.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut masked: Vec<Range<usize>> = Vec::new();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let debug = format!("{secret:?}");
        let forms = [
            secret.as_str(),
            &debug[1..debug.len() - 1],
            &escape_basic(secret),
        ];
        for form in forms {
            masked.extend(text.match_indices(form).map(|(at, s)| at..at + s.len()));
        }
    }
    if masked.is_empty() {
        return text.to_string();
    }
    masked.sort_by_key(|range| range.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(masked.len());
    for range in masked {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    let mut scrubbed = String::with_capacity(text.len());
    let mut done = 0;
    for range in merged {
        scrubbed.push_str(&text[done..range.start]);
        scrubbed.push_str(MASK);
        done = range.end;
    }
    scrubbed.push_str(&text[done..]);
    scrubbed
}

/// A string value of the file that was a reference: its key, the reference as written and
/// the value it gave. Its `Debug` shows no value.
#[derive(Clone, PartialEq, Eq)]
pub struct Substitution {
    key: String,
    reference: String,
    value: String,
    /// A flag (or RUST_LOG) replaced the value: an error about the key is not the
    /// reference's, though the value is still kept out of errors.
    overridden: bool,
}

impl Substitution {
    /// The key path, as errors name keys: `kafka.clusters.main.config."sasl.password"`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The reference as written: `${env:NAME}` or `${file:PATH}`.
    pub fn reference(&self) -> &str {
        &self.reference
    }

    /// The value it gave. A secret: not to be shown.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Substitution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Substitution")
            .field("key", &self.key)
            .field("reference", &self.reference)
            .field("value", &MASK)
            .field("overridden", &self.overridden)
            .finish()
    }
}

/// The references of a configuration file and what they gave, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Substitutions(Vec<Substitution>);

impl Substitutions {
    /// Every substitution, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Substitution> {
        self.0.iter()
    }

    /// Whether the file had no reference.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values the references gave: secrets.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| s.value.as_str())
    }

    /// The substitution of exactly `key`, unless a flag replaced its value.
    pub fn of_key(&self, key: &str) -> Option<&Substitution> {
        self.0.iter().find(|s| s.key == key && !s.overridden)
    }

    /// Notes that a flag replaced the value of `key`, and of every key inside it
    /// (`listener` takes `listener[0].bind`).
    pub fn overridden(&mut self, key: &str) {
        for substitution in &mut self.0 {
            let rest = substitution.key.strip_prefix(key);
            if rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '['])) {
                substitution.overridden = true;
            }
        }
    }

    /// An error `KEY: problem` about a key whose value came from a reference, as
    /// `KEY: REFERENCE: problem`; other errors as they are. Does not scrub.
    pub fn annotate(&self, error: &str) -> String {
        let found = self.0.iter().filter(|s| !s.overridden).find_map(|s| {
            let problem = error.strip_prefix(s.key.as_str())?.strip_prefix(": ")?;
            Some(format!("{}: {}: {problem}", s.key, s.reference))
        });
        found.unwrap_or_else(|| error.to_string())
    }
}

/// One string literal rewritten: where it is in the file and in the rebuilt text, and the
/// substitution it made (none for an escaped `$${…}`).
#[derive(Clone, Debug)]
struct Edit {
    original: Range<usize>,
    rebuilt: Range<usize>,
    substitution: Option<usize>,
}

/// The file's text with its references resolved, and how to take positions back. No `Debug`:
/// its text holds the values.
#[derive(Clone)]
pub struct Resolved<'a> {
    /// The text to deserialize: the file's, with each reference's string literal replaced
    /// by a basic string of its value. Borrowed when the file has neither reference nor
    /// escape.
    pub text: Cow<'a, str>,
    /// What the references gave.
    pub substitutions: Substitutions,
    /// The values of secret keys written in the file itself, kept out of errors too.
    literal_secrets: Vec<String>,
    /// In file order.
    edits: Vec<Edit>,
}

impl<'a> Resolved<'a> {
    /// The text as it is, with nothing to resolve (a file that does not parse).
    pub fn unchanged(text: &'a str) -> Resolved<'a> {
        Resolved {
            text: Cow::Borrowed(text),
            substitutions: Substitutions::default(),
            literal_secrets: Vec::new(),
            edits: Vec::new(),
        }
    }

    /// Where a byte offset of [`Resolved::text`] is in the file as written, and the
    /// substitution whose value it lies in, if any (then the offset is the start of the
    /// reference's literal).
    pub fn original_offset(&self, offset: usize) -> (usize, Option<&Substitution>) {
        let mut shift: isize = 0;
        for edit in &self.edits {
            if offset < edit.rebuilt.start {
                break;
            }
            if offset < edit.rebuilt.end {
                let substitution = edit.substitution.map(|i| &self.substitutions.0[i]);
                return (edit.original.start, substitution);
            }
            shift = edit.original.end as isize - edit.rebuilt.end as isize;
        }
        (offset.saturating_add_signed(shift), None)
    }

    /// `message` without the values the references gave, nor those of secret keys (see
    /// [`scrub`]).
    pub fn scrub(&self, message: &str) -> String {
        let mut values: Vec<String> = self.substitutions.values().map(str::to_string).collect();
        values.extend(self.literal_secrets.iter().cloned());
        scrub(message, &values)
    }
}

/// Where to read a reference's value from.
enum Source<'v> {
    Env(&'v str),
    File(&'v str),
}

/// What a string value is: a reference, an escaped reference (the value without its first
/// `$`), or neither.
enum Reading<'v> {
    Reference(Source<'v>),
    Escaped(&'v str),
    Plain,
}

fn read_value(value: &str) -> Reading<'_> {
    let dollars = value.bytes().take_while(|&b| b == b'$').count();
    if dollars == 0 {
        return Reading::Plain;
    }
    let Some(inner) = value[dollars..]
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return Reading::Plain;
    };
    let source = if let Some(name) = inner.strip_prefix("env:") {
        Source::Env(name)
    } else if let Some(path) = inner.strip_prefix("file:") {
        Source::File(path)
    } else {
        return Reading::Plain;
    };
    let (Source::Env(argument) | Source::File(argument)) = source;
    if argument.contains('}') {
        return Reading::Plain;
    }
    if dollars > 1 {
        return Reading::Escaped(&value[1..]);
    }
    Reading::Reference(source)
}

/// Reads the value of one reference; the error is the problem, without key or reference.
fn fetch(source: &Source<'_>, env: &dyn Fn(&str) -> Option<OsString>) -> Result<String, String> {
    match *source {
        Source::Env(name) => {
            if name.is_empty() {
                return Err("no variable name".into());
            }
            if name.contains(['=', '\0']) {
                return Err(format!("{name:?} is not a variable name"));
            }
            env(name)
                .ok_or_else(|| format!("environment variable {name} is not set"))?
                .into_string()
                .map_err(|_| format!("environment variable {name} is not valid UTF-8"))
        }
        Source::File(path) => {
            if path.is_empty() {
                return Err("no file path".into());
            }
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            let mut text =
                String::from_utf8(bytes).map_err(|_| format!("{path} is not UTF-8 text"))?;
            if text.ends_with("\r\n") {
                text.truncate(text.len() - 2);
            } else if text.ends_with('\n') {
                text.truncate(text.len() - 1);
            }
            Ok(text)
        }
    }
}

/// A string value found in the document: where its literal is, its key path, its value.
struct Found {
    span: Range<usize>,
    key: String,
    value: String,
}

fn find_strings(table: &DeTable<'_>, prefix: &str, found: &mut Vec<Found>) {
    for (key, value) in table.iter() {
        let name = toml_key(key.get_ref());
        let path = if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}.{name}")
        };
        find_in_value(value, path, found);
    }
}

fn find_in_value(value: &Spanned<DeValue<'_>>, path: String, found: &mut Vec<Found>) {
    match value.get_ref() {
        DeValue::String(text) => found.push(Found {
            span: value.span(),
            key: path,
            value: text.to_string(),
        }),
        DeValue::Table(table) => find_strings(table, &path, found),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                find_in_value(item, format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

/// Resolves the references of `text`, whose parsed document is `document`, reading
/// environment variables with `env` (`std::env::var_os` but in tests). The error is one line,
/// `KEY: REFERENCE: problem`, with no value in it.
pub fn resolve<'a>(
    text: &'a str,
    document: &DeTable<'_>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Resolved<'a>, String> {
    let mut strings = Vec::new();
    find_strings(document, "", &mut strings);
    strings.sort_by_key(|found| found.span.start);

    let mut rebuilt = String::new();
    let mut substitutions = Vec::new();
    let mut literal_secrets = Vec::new();
    let mut edits = Vec::new();
    let mut copied = 0;
    for found in strings {
        let (value, substitution) = match read_value(&found.value) {
            Reading::Plain => {
                if is_secret_key(&found.key) {
                    literal_secrets.push(found.value);
                }
                continue;
            }
            Reading::Escaped(literal) => (literal.to_string(), None),
            Reading::Reference(source) => {
                let value = fetch(&source, env)
                    .map_err(|problem| format!("{}: {}: {problem}", found.key, found.value))?;
                substitutions.push(Substitution {
                    key: found.key,
                    reference: found.value,
                    value: value.clone(),
                    overridden: false,
                });
                (value, Some(substitutions.len() - 1))
            }
        };
        rebuilt.push_str(&text[copied..found.span.start]);
        let start = rebuilt.len();
        rebuilt.push('"');
        rebuilt.push_str(&escape_basic(&value));
        rebuilt.push('"');
        edits.push(Edit {
            original: found.span.clone(),
            rebuilt: start..rebuilt.len(),
            substitution,
        });
        copied = found.span.end;
    }
    if edits.is_empty() {
        return Ok(Resolved {
            literal_secrets,
            ..Resolved::unchanged(text)
        });
    }
    rebuilt.push_str(&text[copied..]);
    Ok(Resolved {
        text: Cow::Owned(rebuilt),
        substitutions: Substitutions(substitutions),
        literal_secrets,
        edits,
    })
}

/// The inside of a TOML basic string holding `value`: quotes, backslashes and control
/// characters escaped, so it is one line.
fn escape_basic(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => escaped.push_str("\\\""),
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(escaped, "\\u{:04X}", u32::from(c));
            }
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use super::*;
    use crate::config::{BrokerArgs, Config, ConfigError};

    /// Parses `text` as test.toml with the environment variables `vars` only.
    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Config::from_toml_with_env(text, "test.toml", &|name| {
            vars.get(name).map(OsString::from)
        })
    }

    fn error_of(text: &str, vars: &[(&str, &str)]) -> String {
        parse_with(text, vars).expect_err(text).to_string()
    }

    /// A directory of its own under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "ferrymq-config-secrets-{}-{name}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        /// Writes `content` to the file `name`; its path as a TOML basic string's inside.
        fn file(&self, name: &str, content: &[u8]) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, content).expect("write");
            path.to_str().expect("UTF-8 path").to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CLUSTER: &str = "[kafka.clusters.main]\nbootstrap = \"k:9092\"\n";

    #[test]
    fn env_references_are_replaced_by_the_variables() {
        let text = format!(
            "{CLUSTER}config = {{ \"sasl.username\" = \"${{env:USER}}\", \
             \"sasl.password\" = \"${{env:KAFKA_PASSWORD}}\" }}\n"
        );
        let config =
            parse_with(&text, &[("USER", "ferry"), ("KAFKA_PASSWORD", "hunter2")]).expect("parses");
        let properties = &config.kafka.clusters["main"].config;
        assert_eq!(properties["sasl.username"], "ferry");
        assert_eq!(properties["sasl.password"], "hunter2");
        let keys: Vec<_> = config
            .substitutions
            .iter()
            .map(|s| (s.key(), s.reference()))
            .collect();
        assert_eq!(
            keys,
            [
                (
                    "kafka.clusters.main.config.\"sasl.username\"",
                    "${env:USER}"
                ),
                (
                    "kafka.clusters.main.config.\"sasl.password\"",
                    "${env:KAFKA_PASSWORD}"
                ),
            ]
        );
        assert_eq!(config.secret_values(), ["hunter2", "ferry"]);
        let shown = format!("{:?}", config.substitutions);
        assert!(
            !shown.contains("hunter2") && !shown.contains("ferry"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_variable_names_key_and_variable() {
        let text =
            format!("{CLUSTER}config = {{ \"sasl.password\" = \"${{env:KAFKA_PASSWORD}}\" }}\n");
        assert_eq!(
            error_of(&text, &[]),
            "kafka.clusters.main.config.\"sasl.password\": ${env:KAFKA_PASSWORD}: environment \
             variable KAFKA_PASSWORD is not set"
        );
        assert_eq!(
            error_of("[log]\nlevel = \"${env:}\"\n", &[]),
            "log.level: ${env:}: no variable name"
        );
    }

    #[test]
    fn file_references_lose_one_final_line_break() {
        let dir = TempDir::new("found");
        let cases: [(&[u8], &str); 6] = [
            (b"s3cret\n", "s3cret"),
            (b"s3cret\r\n", "s3cret"),
            (b"s3cret", "s3cret"),
            (b"s3cret\n\n", "s3cret\n"),
            (b"two\nlines\r\n\r\n", "two\nlines\r\n"),
            (b"", ""),
        ];
        for (i, (content, expected)) in cases.into_iter().enumerate() {
            let path = dir.file(&format!("secret-{i}"), content);
            let text =
                format!("{CLUSTER}config = {{ \"ssl.key.password\" = \"${{file:{path}}}\" }}\n");
            let config = parse_with(&text, &[]).expect(&text);
            assert_eq!(
                config.kafka.clusters["main"].config["ssl.key.password"], expected,
                "{content:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_file_names_key_and_path_not_content() {
        let dir = TempDir::new("unreadable");
        let missing = dir.0.join("absent").to_str().expect("UTF-8").to_string();
        let text = format!("{CLUSTER}config = {{ \"sasl.password\" = \"${{file:{missing}}}\" }}\n");
        let error = error_of(&text, &[]);
        assert!(
            error.starts_with(&format!(
                "kafka.clusters.main.config.\"sasl.password\": ${{file:{missing}}}: cannot read \
                 {missing}: "
            )),
            "{error}"
        );
        // A directory cannot be read as a file.
        let directory = dir.0.to_str().expect("UTF-8");
        let error = error_of(&format!("[log]\nlevel = \"${{file:{directory}}}\"\n"), &[]);
        assert!(
            error.starts_with(&format!(
                "log.level: ${{file:{directory}}}: cannot read {directory}: "
            )),
            "{error}"
        );
        // Content that is not text is named as such, not shown.
        let binary = dir.file("binary", b"hunter2\xff\n");
        let error = error_of(&format!("[log]\nlevel = \"${{file:{binary}}}\"\n"), &[]);
        assert_eq!(
            error,
            format!("log.level: ${{file:{binary}}}: {binary} is not UTF-8 text")
        );
        assert!(!error.contains("hunter2"));
    }

    #[test]
    fn only_a_whole_value_is_a_reference() {
        let vars = [("X", "hunter2")];
        for value in [
            "k:9092${env:X}",
            "${env:X}k:9092",
            "${env:X} ",
            "${env:X}${env:X}",
            "${env:X",
            "{env:X}",
            "${ENV:X}",
            "${vault:X}",
        ] {
            let text = format!("[spool]\ndata_dir = \"{value}\"\n");
            let config = parse_with(&text, &vars).expect(value);
            assert_eq!(config.spool.data_dir, PathBuf::from(value));
            assert!(config.substitutions.is_empty(), "{value}");
        }
    }

    #[test]
    fn two_dollars_escape_a_reference() {
        let cases = [
            ("$${env:X}", "${env:X}"),
            ("$${file:/etc/secret}", "${file:/etc/secret}"),
            ("$$${env:X}", "$${env:X}"),
        ];
        for (written, read) in cases {
            // A literal string: the escape works in every kind of string.
            let text = format!("[spool]\ndata_dir = '{written}'\n");
            let config = parse_with(&text, &[("X", "hunter2")]).expect(written);
            assert_eq!(config.spool.data_dir, PathBuf::from(read));
            assert!(config.substitutions.is_empty());
        }
    }

    #[test]
    fn references_in_arrays_inline_and_nested_tables() {
        let text = "[[listener]]\nbind = \"127.0.0.1:1883\"\n\
                    [[listener]]\nbind = \"${env:BIND}\"\n\
                    [broker]\ncores = \"${env:CORES}\"\n\
                    [kafka.clusters.main]\nbootstrap = \"${env:BOOTSTRAP}\"\n\
                    config = { \"sasl.password\" = \"${env:P}\", \"linger.ms\" = 5 }\n\
                    [[kafka.mapping]]\nmqtt = \"a/#\"\ntopic = \"${env:TOPIC}\"\n\
                    headers = [\"qos\", \"${env:HEADER}\"]\n";
        let vars = [
            ("BIND", "0.0.0.0:2883"),
            ("CORES", "0-1"),
            ("BOOTSTRAP", "k1:9092,k2:9092"),
            ("P", "hunter2"),
            ("TOPIC", "telemetry.{1}"),
            ("HEADER", "retain"),
        ];
        let config = parse_with(text, &vars).expect("parses");
        config.validate().expect("valid");
        assert_eq!(config.listeners[1].bind, "0.0.0.0:2883".parse().unwrap());
        assert_eq!(config.broker.cores, Some(vec![0, 1]));
        let main = &config.kafka.clusters["main"];
        assert_eq!(main.bootstrap, "k1:9092,k2:9092");
        assert_eq!(main.config["sasl.password"], "hunter2");
        assert_eq!(main.config["linger.ms"], "5");
        let mapping = &config.kafka.mappings[0];
        assert_eq!(mapping.topic, "telemetry.{1}");
        assert_eq!(
            mapping.headers,
            [
                crate::config::HeaderField::Qos,
                crate::config::HeaderField::Retain
            ]
        );
        let keys: Vec<_> = config.substitutions.iter().map(|s| s.key()).collect();
        assert_eq!(
            keys,
            [
                "listener[1].bind",
                "broker.cores",
                "kafka.clusters.main.bootstrap",
                "kafka.clusters.main.config.\"sasl.password\"",
                "kafka.mapping[0].topic",
                "kafka.mapping[0].headers[1]",
            ]
        );
    }

    #[test]
    fn values_with_quotes_backslashes_and_line_breaks_survive_exactly() {
        let value = "a\"b'c\\d\ne\r\nf\tg\u{1}h\u{7f}i\u{85}j é \"\"\" ${env:Y}";
        let dir = TempDir::new("exact");
        let path = dir.file("secret", format!("{value}\n").as_bytes());
        let text = format!(
            "{CLUSTER}config = {{ \"sasl.password\" = \"${{env:P}}\", \
             \"ssl.key.pem\" = \"\"\"${{file:{path}}}\"\"\" }}\n"
        );
        let config = parse_with(&text, &[("P", value)]).expect("parses");
        let properties = &config.kafka.clusters["main"].config;
        assert_eq!(properties["sasl.password"], value);
        assert_eq!(properties["ssl.key.pem"], value);
    }

    #[test]
    fn a_wrong_typed_value_names_key_and_reference_not_value() {
        let text = "# comment\n[broker]\nconnections_max = \"${env:N}\"\n";
        let error = error_of(text, &[("N", "hunter2")]);
        assert_eq!(
            error,
            "test.toml:3:19: broker.connections_max: ${env:N}: invalid type: string \"***\", \
             expected usize"
        );
        let text = "[[listener]]\nbind = \"${env:BIND}\"\n";
        let error = error_of(text, &[("BIND", "hunter\"2\\")]);
        assert_eq!(
            error,
            "test.toml:2:8: listener[0].bind: ${env:BIND}: \"***\" is not an IP address and port"
        );
        let text = "[[kafka.mapping]]\nmqtt = \"a\"\ntopic = \"t\"\n\
                    headers = [\"qos\", \"${env:H}\"]\n";
        let error = error_of(text, &[("H", "hunter2")]);
        assert!(
            error.starts_with(
                "test.toml:4:19: kafka.mapping[0].headers[1]: ${env:H}: unknown variant `***`"
            ),
            "{error}"
        );
        assert!(!error.contains("hunter"), "{error}");
    }

    #[test]
    fn later_errors_keep_their_line_and_column() {
        // A reference in a multi-line string (three lines in the file, one when rebuilt), a
        // value with line breaks, and one longer than its reference on the error's line.
        let text = |linger_ms: &str, linger_us: &str| {
            format!(
                "[broker]\nmetrics_bind = \"\"\"\n${{env:M}}\"\"\"\n\
                 [kafka.clusters.main]\nbootstrap = \"${{env:B}}\"\n\
                 config = {{ \"sasl.password\" = \"${{env:P}}\", \"linger.ms\" = {linger_ms} }}\n\
                 [batching]\nlinger_us = {linger_us}\n"
            )
        };
        let vars = [
            ("M", "127.0.0.1:9100"),
            ("B", "k1:9092\n\n\nk2:9092"),
            ("P", "a much longer password than its reference"),
        ];
        let bad_property = text("0.5", "0");
        let column = bad_property.lines().nth(5).unwrap().find("0.5").unwrap() + 1;
        assert_eq!(
            error_of(&bad_property, &vars),
            format!(
                "test.toml:6:{column}: kafka.clusters.main.config.\"linger.ms\": invalid type: \
                 floating point `0.5`, expected a string, integer or boolean"
            )
        );
        assert_eq!(
            error_of(&text("5", "-1"), &vars),
            "test.toml:8:13: batching.linger_us: invalid value: integer `-1`, expected u64"
        );
        parse_with(&text("5", "0"), &vars).expect("parses");
    }

    #[test]
    fn validation_errors_name_the_reference_and_hide_values() {
        let text = "[kafka.clusters.main]\nbootstrap = \"${env:B}\"\n\
                    config = { \"sasl.password\" = \"pass\\\"word\" }\n";
        let config = parse_with(text, &[("B", "pass\"word")]).expect("parses");
        assert_eq!(
            config.validate().expect_err("bad bootstrap").to_string(),
            "kafka.clusters.main.bootstrap: ${env:B}: \"***\" in \"***\" is not host:port"
        );
        // A flag replacing the value: the error is the flag's, not the reference's.
        let text = "[spool]\ndata_dir = \"${env:D}\"\n";
        let mut config = parse_with(text, &[("D", "/var/lib/ferrymq")]).expect("parses");
        config.apply(&BrokerArgs {
            data_dir: Some(PathBuf::new()),
            ..BrokerArgs::default()
        });
        assert_eq!(
            config.validate().expect_err("empty").to_string(),
            "spool.data_dir: cannot be empty"
        );
    }

    #[test]
    fn secret_values_cover_secret_keys_and_references() {
        let text = format!(
            "{CLUSTER}config = {{ \"sasl.password\" = \"literal\", \"acks\" = \"all\", \
             \"sasl.oauthbearer.client.secret\" = \"\" }}\n\
             [spool]\ndata_dir = \"${{env:D}}\"\n"
        );
        let mut config = parse_with(&text, &[("D", "/d")]).expect("parses");
        assert_eq!(config.secret_values(), ["literal", "/d"]);
        let password = "kafka.clusters.main.config.\"sasl.password\"";
        assert_eq!(config.shown(password, "literal"), "***");
        assert_eq!(
            config.shown("kafka.clusters.main.config.acks", "all"),
            "all"
        );
        assert_eq!(config.shown("spool.data_dir", "/d"), "***");
        // A flag's value is not a reference's; the value of a secret key stays hidden.
        config.apply(&BrokerArgs {
            data_dir: Some(PathBuf::from("/flag")),
            ..BrokerArgs::default()
        });
        assert_eq!(config.shown("spool.data_dir", "/flag"), "/flag");
        assert_eq!(config.secret_values(), ["literal", "/d"]);
    }

    #[test]
    fn secret_keys() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.assertion.private.key.passphrase",
            "sasl.oauthbearer.assertion.private.key.pem",
            "sasl.jaas.config",
            "sasl.oauthbearer.token.endpoint.url",
            "SASL.PASSWORD",
            "kafka.clusters.main.config.\"sasl.password\"",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "sasl.username",
            "sasl.mechanism",
            "ssl.certificate.pem",
            "ssl.ca.pem",
            "ssl.key.location",
            "security.protocol",
            "bootstrap",
            "tls_key",
            "auth.password_file",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn toml_errors_hide_secret_keys_written_in_the_file() {
        let text = "[a]\ntoken = \"tok-value\"\nname = \"not secret\"\n";
        let document = DeTable::parse(text).expect("parses");
        let resolved = resolve(text, document.get_ref(), &|_| None).expect("resolves");
        assert_eq!(resolved.text, text);
        assert_eq!(
            resolved.scrub("x tok-value, not secret"),
            "x ***, not secret"
        );
    }

    #[test]
    fn scrub_masks_every_form_of_each_secret() {
        let secrets = ["hun\"ter2".to_string(), String::new(), "ter".to_string()];
        assert_eq!(
            scrub(
                "raw hun\"ter2, debug \"hun\\\"ter2\", part ter, none",
                &secrets
            ),
            "raw ***, debug \"***\", part ***, none"
        );
        let overlapping = ["abcd".to_string(), "cdef".to_string()];
        assert_eq!(scrub("xabcdefx", &overlapping), "x***x");
        assert_eq!(scrub("nothing here", &overlapping), "nothing here");
    }
}
