//! Reading the TOML file: the one-line error `file:line:column: key: problem`, with the key
//! path found from the error's position, and key paths as errors write them.

use std::borrow::Cow;

use super::secrets::Resolved;

/// A TOML key as written in a key path: bare when it can be, quoted otherwise
/// (`"compression.type"`).
pub(crate) fn toml_key(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{key:?}"))
    }
}

/// Turns a TOML error into one line: `file:line:column: key: problem`, where `key` is the
/// path of the offending key (`listener[1].bind`), found from the error's position. `error`
/// is about `resolved.text`; the position is given in `text`, the file as written, whose
/// parsed `document` names the key, and the message is scrubbed of what references gave. An
/// error in a reference's value reads `file:line:column: key: reference: problem`.
pub(super) fn describe_toml_error(
    text: &str,
    file: &str,
    error: &toml::de::Error,
    resolved: &Resolved<'_>,
    document: Option<&toml::de::DeTable<'_>>,
) -> String {
    // serde says "field"; the file's reader knows them as keys.
    let message = resolved
        .scrub(error.message().trim())
        .replace('\n', "; ")
        .replacen("unknown field", "unknown key", 1);
    let Some(span) = error.span() else {
        return format!("{file}: {message}");
    };
    let (offset, substitution) = resolved.original_offset(span.start);
    let message = match substitution {
        Some(substitution) => format!("{}: {message}", substitution.reference()),
        None => message,
    };
    let (line, column) = line_and_column(text, offset);
    // A syntax error leaves no document to find the key in; the position says enough.
    let key = document.and_then(|document| key_at_table(document, offset, ""));
    match key {
        Some(key) => format!("{file}:{line}:{column}: {key}: {message}"),
        None => format!("{file}:{line}:{column}: {message}"),
    }
}

/// One-based line and column of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The path of the deepest key whose name or value covers `offset`.
fn key_at_table(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    table.iter().find_map(|(key, value)| {
        let name = toml_key(key.get_ref());
        let path = if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}.{name}")
        };
        key_at_value(value, offset, &path).or_else(|| {
            (key.span().contains(&offset) || value.span().contains(&offset)).then_some(path)
        })
    })
}

fn key_at_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    offset: usize,
    path: &str,
) -> Option<String> {
    match value.get_ref() {
        toml::de::DeValue::Table(table) => key_at_table(table, offset, path),
        toml::de::DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = format!("{path}[{i}]");
            key_at_value(item, offset, &path)
                .or_else(|| item.span().contains(&offset).then_some(path))
        }),
        _ => None,
    }
}
