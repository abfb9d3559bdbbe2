//! Parsing a document into the typed configuration, and placing each error at its line.

use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Details, Problem, Segment, display_path};

/// The document parsed and deserialized into `T`, or the first error, placed.
pub(crate) fn parse<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let table = DeTable::parse(text).map_err(|error| syntax(&error, text, origin))?;
    let deserializer = toml::de::Deserializer::from(table);
    serde_path_to_error::deserialize(deserializer).map_err(|error| typed(error, text, origin))
}

/// A TOML syntax error: its position and message, no key (there may be none yet).
fn syntax(error: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    ConfigError::new(Details {
        origin: origin.to_owned(),
        position: error.span().map(|span| position(text, span.start)),
        key: None,
        message: format!("not valid TOML: {}", error.message().trim_end()),
        accepted: None,
        suggestion: None,
    })
}

/// A value of the wrong type or shape, or an unknown key.
fn typed(
    error: serde_path_to_error::Error<toml::de::Error>,
    text: &str,
    origin: &str,
) -> ConfigError {
    let mut path: Vec<Segment> = error
        .path()
        .iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect();
    let inner = error.into_inner();
    let message = inner.message().trim_end().to_owned();
    let mut out = Details {
        origin: origin.to_owned(),
        position: inner.span().map(|span| position(text, span.start)),
        key: None,
        message: message.clone(),
        accepted: None,
        suggestion: None,
    };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let names = backticked(rest);
        if let Some((field, accepted)) = names.split_first() {
            if path.last() != Some(&Segment::Key(field.clone())) {
                path.push(Segment::Key(field.clone()));
            }
            out.message = if path.len() == 1 || table_at(text, &path) {
                "unknown table".to_owned()
            } else {
                "unknown key".to_owned()
            };
            out.accepted = Some(accepted.join(", "));
            out.suggestion = closest(field, accepted);
        }
    } else if let Some(rest) = message.strip_prefix("unknown variant ") {
        let names = backticked(rest);
        if let Some((value, accepted)) = names.split_first() {
            out.message = format!("unknown value {value:?}");
            out.accepted = Some(accepted.join(", "));
            out.suggestion = closest(value, accepted);
        }
    } else if let Some(missing) = message.strip_prefix("missing field ") {
        out.message = format!("missing key {missing}");
    } else {
        for (serde, said) in [
            ("expected u32", "expected a whole number, 0 or more"),
            ("expected u64", "expected a whole number, 0 or more"),
        ] {
            out.message = out.message.replace(serde, said);
        }
    }
    if out.position.is_none() {
        out.position = locate_in(text, &path).map(|span| position(text, span.start));
    }
    out.key = (!path.is_empty()).then(|| display_path(&path));
    ConfigError::new(out)
}

/// A problem found after the document parsed, placed at its key.
pub(crate) fn placed(problem: Problem, text: &str, origin: &str) -> ConfigError {
    ConfigError::new(Details {
        origin: origin.to_owned(),
        position: locate_in(text, &problem.path).map(|span| position(text, span.start)),
        key: (!problem.path.is_empty()).then(|| display_path(&problem.path)),
        message: problem.message,
        accepted: problem.accepted,
        suggestion: None,
    })
}

/// The names between backticks in serde's `unknown field `x`, expected one of `a`, `b``.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The accepted name closest to `given`, if it is close enough to be a typo.
fn closest(given: &str, accepted: &[String]) -> Option<String> {
    accepted
        .iter()
        .map(|name| (strsim::damerau_levenshtein(given, name), name))
        .filter(|(distance, name)| *distance <= (name.len() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name.clone())
}

/// Whether the value at `path` is a table (an unknown `[server.breaker]` is a table, not a key).
fn table_at(text: &str, path: &[Segment]) -> bool {
    let Ok(table) = DeTable::parse(text) else {
        return false;
    };
    let mut value: Option<&DeValue<'_>> = None;
    let mut root = Some(table.get_ref());
    for segment in path {
        let next = match (segment, root.take(), value) {
            (Segment::Key(key), Some(table), _)
            | (Segment::Key(key), None, Some(DeValue::Table(table))) => table
                .iter()
                .find(|(name, _)| name.get_ref() == key)
                .map(|(_, found)| found),
            (Segment::Index(index), None, Some(DeValue::Array(array))) => array.get(*index),
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        value = Some(next.get_ref());
    }
    matches!(value, Some(DeValue::Table(_)))
}

/// The span of the key at `path` in `text` (or of its nearest ancestor the document has).
fn locate_in(text: &str, path: &[Segment]) -> Option<Range<usize>> {
    let table = DeTable::parse(text).ok()?;
    let mut best = None;
    let mut value: Option<&DeValue<'_>> = None;
    let mut root = Some(table.get_ref());
    for segment in path {
        match segment {
            Segment::Key(key) => {
                let table = match (root.take(), value) {
                    (Some(table), _) => table,
                    (None, Some(DeValue::Table(table))) => table,
                    _ => break,
                };
                let Some((name, found)) = table.iter().find(|(name, _)| name.get_ref() == key)
                else {
                    break;
                };
                best = Some(name.span());
                value = Some(found.get_ref());
            }
            Segment::Index(index) => {
                let Some(DeValue::Array(array)) = value else {
                    break;
                };
                let Some(item) = array.get(*index) else {
                    break;
                };
                best = Some(item.span());
                value = Some(item.get_ref());
            }
        }
    }
    best
}

/// `(line, column)`, both from 1, of the byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (line, before[line_start..].chars().count() + 1)
}
