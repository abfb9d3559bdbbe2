//! Secrets referenced by the document — an environment variable or a file — never inline.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Deserializer, de};

use super::error::{Problem, Segment};

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable: `{ env = "NAME" }`.
    Env(String),
    /// A file, its trailing newline dropped: `{ file = "/run/secrets/jwt" }` (relative to the
    /// document's directory when [loaded](super::Config::load) from a file).
    File(PathBuf),
    /// A value given in code or on a command line ([`Secret::given`]); never read from a
    /// document.
    Given,
}

/// A secret: where it comes from and, once the document is loaded, its value. Its
/// [`Debug`](fmt::Debug) shows the source only.
///
/// A document refers to it as `{ env = "NAME" }` or `{ file = "/path" }`; an inline string is
/// refused (a configuration file is read by whoever reads the ConfigMap or the repository it
/// lives in; Kubernetes hands secrets to a pod as variables or files). Two secrets are equal
/// when their source and their value are: a rotated secret file makes a new configuration.
///
/// ```
/// use palisade::config::{Secret, SecretSource};
///
/// let secret = Secret::given("s3cret");
/// assert_eq!(secret.source(), &SecretSource::Given);
/// assert_eq!(secret.expose(), "s3cret");
/// assert!(!format!("{secret:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    source: SecretSource,
    value: Option<String>,
}

impl Secret {
    /// A secret given as a value (a command-line flag, code).
    pub fn given(value: impl Into<String>) -> Self {
        Secret {
            source: SecretSource::Given,
            value: Some(value.into()),
        }
    }

    /// Where it comes from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }

    /// The value (empty before the document's secrets are resolved, which
    /// [`Config::from_toml`](super::Config::from_toml) does).
    pub fn expose(&self) -> &str {
        self.value.as_deref().unwrap_or_default()
    }

    /// A relative file made relative to `dir`.
    pub(crate) fn relative_to(&mut self, dir: &std::path::Path) {
        if let SecretSource::File(file) = &mut self.source
            && file.is_relative()
        {
            *file = dir.join(&*file);
        }
    }

    /// Reads the variable or the file; the problem names which, never the value.
    pub(crate) fn resolve(&mut self, path: &[Segment]) -> Result<(), Problem> {
        let value = match &self.source {
            SecretSource::Given => return Ok(()),
            SecretSource::Env(name) => std::env::var(name).map_err(|error| {
                let why = match error {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                Problem::at(path, format!("the environment variable `{name}` {why}"))
            })?,
            SecretSource::File(file) => {
                let mut text = std::fs::read_to_string(file).map_err(|error| {
                    Problem::at(
                        path,
                        format!(
                            "the secret file `{}` cannot be read: {error}",
                            file.display()
                        ),
                    )
                })?;
                while text.ends_with(['\n', '\r']) {
                    text.pop();
                }
                text
            }
        };
        if value.is_empty() {
            return Err(Problem::at(path, "the secret is empty"));
        }
        self.value = Some(value);
        Ok(())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The reference as written: exactly one of `env` and `file`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reference {
    env: Option<String>,
    file: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"{ env = "NAME" } or { file = "/path" }"#)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<Secret, E> {
                Err(E::custom(
                    r#"an inline secret is refused (whoever reads the file would read it); accepted: { env = "NAME" } or { file = "/path" }"#,
                ))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Secret, A::Error> {
                let reference = Reference::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let source = match (reference.env, reference.file) {
                    (Some(name), None) if !name.is_empty() => SecretSource::Env(name),
                    (None, Some(file)) => SecretSource::File(file),
                    _ => {
                        return Err(de::Error::custom(
                            r#"a secret names exactly one source; accepted: { env = "NAME" } or { file = "/path" }"#,
                        ));
                    }
                };
                Ok(Secret {
                    source,
                    value: None,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
