//! The server and client stacks from one TOML document, built by the layers' own builders
//! (docs/ARCHITECTURE.md, *The configuration document*).
//!
//! A document has a `[server]` and a `[client]` table, each taking every flag of the `server`
//! and `client` programs by name (`--max-concurrent` is `max_concurrent`, durations in
//! milliseconds), plus per-method policy in `[[server.method]]` and `[[client.method]]`
//! entries, each selecting its calls with exactly one of `method = "pkg.Service/Method"`,
//! `service = "pkg.Service"` or `prefix = "pkg."` (palisade-core's [`Matcher`]).
//!
//! [`Config::from_toml`] and [`Config::load`] refuse, before anything is built, a document
//! that cannot be right — bad TOML, a wrong type, an unknown key or table, a zero rate, `burst`
//! without `rate`, an entry with no matcher or two, an unknown code, `retries` outside 1–5,
//! a policy a layer cannot apply per method, a secret that cannot be read — with a
//! [`ConfigError`] naming the file, line, column and key, what is wrong and what is accepted
//! (and the key meant, for a misspelt one). A loaded [`Config`] is whole: [`ServerConfig`] and
//! [`ClientConfig`] make their layers from it with the layers' builders, again each time they
//! are asked (a reload builds a new stack from a new `Config`; `Config: PartialEq` tells
//! whether anything changed).
//!
//! Secrets are referenced, never inline: `jwt_secret = { env = "NAME" }` or
//! `{ file = "/path" }` ([`Secret`]).
//!
//! # Example
//!
//! ```
//! use palisade::config::Config;
//! use palisade::core::MethodRegistry;
//!
//! let config = Config::from_toml(
//!     r#"
//!     [server]
//!     rate = 5
//!     burst = 5
//!
//!     [[server.method]]
//!     service = "grpc.reflection.v1.ServerReflection"
//!     log = "off"
//!     "#,
//!     "palisade.toml",
//! )?;
//! let stack = config.server.unwrap().layers(MethodRegistry::default())?;
//! # let _ = stack;
//!
//! let error = Config::from_toml("[server]\nmax_concurent = 4\n", "palisade.toml").unwrap_err();
//! assert_eq!(
//!     error.to_string().split("; accepted").next().unwrap(),
//!     "palisade.toml:2:1: key `server.max_concurent`: unknown key",
//! );
//! assert_eq!(error.suggestion(), Some("max_concurrent"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use palisade_core::Matcher;
use serde::Deserialize;

mod client;
mod error;
mod load;
mod secret;
mod server;

pub use client::{ClientConfig, ClientMethod, ConfigClientStack, GrpcCode};
pub use error::ConfigError;
pub use secret::{Secret, SecretSource};
pub use server::{Auth, ConfigServerStack, MethodLog, ServerConfig, ServerMethod};

use error::{Problem, Segment, join};

/// A whole configuration document: `[server]` and `[client]`, each optional.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The `[server]` table.
    pub server: Option<ServerConfig>,
    /// The `[client]` table.
    pub client: Option<ClientConfig>,
}

impl Config {
    /// A configuration, from a document's text; `origin` names it in errors (its path).
    ///
    /// Secrets are read now (each from its variable or file; a relative path is relative to
    /// the working directory).
    ///
    /// # Errors
    ///
    /// The first thing wrong with it, placed at its line and key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::from_toml_in(text, origin, None)
    }

    fn from_toml_in(text: &str, origin: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config = load::parse(text, origin)?;
        if let Some(dir) = dir {
            config.relative_to(dir);
        }
        config
            .check()
            .map_err(|problem| load::placed(problem, text, origin))?;
        Ok(config)
    }

    /// Relative paths in the document are relative to its directory.
    fn relative_to(&mut self, dir: &Path) {
        if let Some(server) = &mut self.server {
            if let Some(secret) = &mut server.jwt_secret {
                secret.relative_to(dir);
            }
            if let Some(path) = &mut server.jwks_file
                && path.is_relative()
            {
                *path = dir.join(&*path);
            }
        }
        if let Some(client) = &mut self.client
            && let Some(secret) = &mut client.jwt_secret
        {
            secret.relative_to(dir);
        }
    }

    /// A configuration, from the document at `path`. Relative paths in it (a secret's
    /// `file`, `jwks_file`) are relative to the document's directory.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or [`from_toml`](Self::from_toml)'s errors.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::whole(&origin, format!("cannot be read: {error}")))?;
        Config::from_toml_in(&text, &origin, path.parent())
    }

    fn check(&mut self) -> Result<(), Problem> {
        if let Some(server) = &mut self.server {
            server.check()?;
            if let Some(secret) = &mut server.jwt_secret {
                secret.resolve(&[
                    Segment::Key("server".into()),
                    Segment::Key("jwt_secret".into()),
                ])?;
            }
        }
        if let Some(client) = &mut self.client {
            client.check()?;
            if let Some(secret) = &mut client.jwt_secret {
                secret.resolve(&[
                    Segment::Key("client".into()),
                    Segment::Key("jwt_secret".into()),
                ])?;
            }
        }
        Ok(())
    }
}

/// How the programs write their logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// A method entry's matcher keys.
struct MatchKeys<'a> {
    method: Option<&'a str>,
    service: Option<&'a str>,
    prefix: Option<&'a str>,
}

impl MatchKeys<'_> {
    fn matcher(&self) -> Option<Matcher> {
        match (self.method, self.service, self.prefix) {
            (Some(method), None, None) => Some(Matcher::method(method)),
            (None, Some(service), None) => Some(Matcher::service(service)),
            (None, None, Some(prefix)) => Some(Matcher::prefix(prefix)),
            _ => None,
        }
    }

    fn check(&self, base: &[Segment]) -> Result<(), Problem> {
        let given: Vec<&str> = [
            ("method", self.method),
            ("service", self.service),
            ("prefix", self.prefix),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.map(|_| key))
        .collect();
        const ACCEPTED: &str = r#"exactly one of method = "pkg.Service/Method", service = "pkg.Service", prefix = "pkg.""#;
        match given.as_slice() {
            [] => return Err(Problem::at(base, "the entry selects no call").accepting(ACCEPTED)),
            [_] => {}
            [_, second, ..] => {
                return Err(Problem::at(
                    &join(base, second),
                    format!("the entry has two matchers: `{}` and `{second}`", given[0]),
                )
                .accepting(ACCEPTED));
            }
        }
        if let Some(method) = self.method {
            let name = method.strip_prefix('/').unwrap_or(method);
            let valid = name.split_once('/').is_some_and(|(service, method)| {
                !service.is_empty() && !method.is_empty() && !method.contains('/')
            });
            if !valid {
                return Err(Problem::at(
                    &join(base, "method"),
                    format!("{method:?} is not a method name"),
                )
                .accepting(r#""pkg.Service/Method""#));
            }
        }
        if let Some(service) = self.service
            && (service.is_empty() || service.contains('/'))
        {
            return Err(Problem::at(
                &join(base, "service"),
                format!("{service:?} is not a service name"),
            )
            .accepting(r#""pkg.Service" (no method: use `method` for one)"#));
        }
        if self.prefix == Some("") {
            return Err(
                Problem::at(&join(base, "prefix"), "an empty prefix selects every call")
                    .accepting(r#"a prefix such as "pkg.", or set the key in the table itself"#),
            );
        }
        Ok(())
    }
}
