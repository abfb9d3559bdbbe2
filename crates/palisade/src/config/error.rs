//! What is wrong with a configuration document, where, and what is accepted.

use std::fmt;

/// A configuration document that was refused: where (`FILE:LINE:COL`), which key, what is
/// wrong, what is accepted and, for a misspelt key, the key meant.
///
/// Its [`Display`](fmt::Display) is one line an operator can act on:
///
/// ```text
/// palisade.toml:7:1: key `server.method[0].rat`: unknown key; accepted: method, service, prefix, rate, burst, …; did you mean `rate`?
/// ```
///
/// A secret is never part of it: a missing one is named by its variable or its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(Box<Details>);

/// What a [`ConfigError`] holds (boxed: errors stay small).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Details {
    pub(crate) origin: String,
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) key: Option<String>,
    pub(crate) message: String,
    pub(crate) accepted: Option<String>,
    pub(crate) suggestion: Option<String>,
}

impl ConfigError {
    /// Where the document came from: its path, or the origin given to
    /// [`Config::from_toml`](super::Config::from_toml).
    pub fn origin(&self) -> &str {
        &self.0.origin
    }

    /// The line (from 1) of the offending key or value, when the document has one.
    pub fn line(&self) -> Option<usize> {
        self.0.position.map(|(line, _)| line)
    }

    /// The column (from 1, in characters) of the offending key or value.
    pub fn column(&self) -> Option<usize> {
        self.0.position.map(|(_, column)| column)
    }

    /// The key, as a path: `server.method[1].rate` (array entries count from 0).
    pub fn key(&self) -> Option<&str> {
        self.0.key.as_deref()
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// What would be accepted instead, when that can be said.
    pub fn accepted(&self) -> Option<&str> {
        self.0.accepted.as_deref()
    }

    /// The key probably meant, for a misspelt one.
    pub fn suggestion(&self) -> Option<&str> {
        self.0.suggestion.as_deref()
    }

    pub(crate) fn new(details: Details) -> Self {
        ConfigError(Box::new(details))
    }

    /// An error about the whole document (it could not be read, say).
    pub(crate) fn whole(origin: &str, message: impl Into<String>) -> Self {
        ConfigError::new(Details {
            origin: origin.to_owned(),
            position: None,
            key: None,
            message: message.into(),
            accepted: None,
            suggestion: None,
        })
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.origin)?;
        if let Some((line, column)) = self.0.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.0.key {
            write!(f, "key `{key}`: ")?;
        }
        f.write_str(&self.0.message)?;
        if let Some(accepted) = &self.0.accepted {
            write!(f, "; accepted: {accepted}")?;
        }
        if let Some(suggestion) = &self.0.suggestion {
            write!(f, "; did you mean `{suggestion}`?")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A problem found after the document parsed: the key's path, what is wrong, what is accepted.
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) path: Vec<Segment>,
    pub(crate) message: String,
    pub(crate) accepted: Option<String>,
}

/// One step of a key's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl Problem {
    /// `message` about the key at `path` (`["server", "rate"]`).
    pub(crate) fn at(path: &[Segment], message: impl Into<String>) -> Self {
        Problem {
            path: path.to_vec(),
            message: message.into(),
            accepted: None,
        }
    }

    /// With what is accepted.
    pub(crate) fn accepting(mut self, accepted: impl Into<String>) -> Self {
        self.accepted = Some(accepted.into());
        self
    }
}

/// Builds paths: `path(&base, "rate")`.
pub(crate) fn join(base: &[Segment], key: &str) -> Vec<Segment> {
    let mut path = base.to_vec();
    path.push(Segment::Key(key.to_owned()));
    path
}

/// `server.method[1].rate`.
pub(crate) fn display_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}
