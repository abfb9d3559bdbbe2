//! Selecting RPCs: by method, service, prefix, list, negation or closure.

use std::{fmt, sync::Arc};

use crate::method::Method;

/// Selects RPCs by their method. Layers take one to skip RPCs or to choose per-method policy.
///
/// Names are written as OpenTelemetry writes them: a method is `package.Service/Method`, a
/// service is `package.Service`. A request whose path is not a gRPC method matches only
/// [`Matcher::any`], negations, and closures that accept `None`.
///
/// # Example
///
/// ```
/// use palisade_core::{Matcher, Method};
///
/// let public = Matcher::health_and_reflection();
/// let health = Method::parse("/grpc.health.v1.Health/Check").unwrap();
/// let reflection = Method::parse("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo").unwrap();
/// let hello = Method::parse("/palisade.demo.v1.Greeter/SayHello").unwrap();
/// assert!(public.matches(Some(&health)) && public.matches(Some(&reflection)));
/// assert!(!public.matches(Some(&hello)));
///
/// let stream_only = Matcher::method("palisade.demo.v1.Greeter/SayHelloStream");
/// let greeter_but_stream = Matcher::service("palisade.demo.v1.Greeter").and(stream_only.not());
/// assert!(greeter_but_stream.matches(Some(&hello)));
/// ```
#[derive(Clone)]
pub struct Matcher(Kind);

type MatchFn = dyn Fn(Option<&Method<'_>>) -> bool + Send + Sync;

#[derive(Clone)]
enum Kind {
    Any,
    Method(Arc<str>),
    Service(Arc<str>),
    Prefix(Arc<str>),
    AnyOf(Arc<[Matcher]>),
    AllOf(Arc<[Matcher]>),
    Not(Arc<Matcher>),
    Fn(Arc<MatchFn>),
}

impl Matcher {
    /// Every request, gRPC or not.
    pub fn any() -> Self {
        Matcher(Kind::Any)
    }

    /// No request.
    pub fn none() -> Self {
        Matcher::any().not()
    }

    /// One method, `package.Service/Method` (a leading `/` is accepted too).
    pub fn method(full_name: impl AsRef<str>) -> Self {
        let name = full_name.as_ref();
        Matcher(Kind::Method(name.strip_prefix('/').unwrap_or(name).into()))
    }

    /// Every method of one service, `package.Service`.
    pub fn service(service: impl AsRef<str>) -> Self {
        Matcher(Kind::Service(service.as_ref().into()))
    }

    /// Every method whose full name (`package.Service/Method`) starts with `prefix`, such as
    /// `grpc.reflection.` for every version of server reflection.
    pub fn prefix(prefix: impl AsRef<str>) -> Self {
        Matcher(Kind::Prefix(prefix.as_ref().into()))
    }

    /// Any of the given matchers.
    pub fn any_of(matchers: impl IntoIterator<Item = Matcher>) -> Self {
        Matcher(Kind::AnyOf(matchers.into_iter().collect()))
    }

    /// All of the given matchers.
    pub fn all_of(matchers: impl IntoIterator<Item = Matcher>) -> Self {
        Matcher(Kind::AllOf(matchers.into_iter().collect()))
    }

    /// A closure over the parsed method (`None` for a path that is not a gRPC method).
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(Option<&Method<'_>>) -> bool + Send + Sync + 'static,
    {
        Matcher(Kind::Fn(Arc::new(f)))
    }

    /// `grpc.health.v1.Health` and every `grpc.reflection.*` service: the usual public,
    /// unlimited, unlogged endpoints.
    pub fn health_and_reflection() -> Self {
        Matcher::any_of([
            Matcher::service("grpc.health.v1.Health"),
            Matcher::prefix("grpc.reflection."),
        ])
    }

    /// Requests this matcher does not match.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Self {
        Matcher(Kind::Not(Arc::new(self)))
    }

    /// Requests both matchers match.
    pub fn and(self, other: Matcher) -> Self {
        Matcher::all_of([self, other])
    }

    /// Requests either matcher matches.
    pub fn or(self, other: Matcher) -> Self {
        Matcher::any_of([self, other])
    }

    /// Whether the matcher selects this method (`None`: the path was not a gRPC method).
    pub fn matches(&self, method: Option<&Method<'_>>) -> bool {
        match &self.0 {
            Kind::Any => true,
            Kind::Method(name) => method.is_some_and(|m| m.full_name() == &**name),
            Kind::Service(service) => method.is_some_and(|m| m.service() == &**service),
            Kind::Prefix(prefix) => method.is_some_and(|m| m.full_name().starts_with(&**prefix)),
            Kind::AnyOf(all) => all.iter().any(|m| m.matches(method)),
            Kind::AllOf(all) => all.iter().all(|m| m.matches(method)),
            Kind::Not(inner) => !inner.matches(method),
            Kind::Fn(f) => f(method),
        }
    }

    /// Whether this is [`Matcher::any`] itself: it selects every request without reading the
    /// path, so a policy keyed on it can skip parsing the path.
    pub fn is_any(&self) -> bool {
        matches!(self.0, Kind::Any)
    }

    /// Whether the matcher selects the request path.
    pub fn matches_path(&self, path: &str) -> bool {
        self.matches(Method::parse(path).as_ref())
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Any => f.write_str("Any"),
            Kind::Method(m) => f.debug_tuple("Method").field(m).finish(),
            Kind::Service(s) => f.debug_tuple("Service").field(s).finish(),
            Kind::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            Kind::AnyOf(all) => f.debug_tuple("AnyOf").field(all).finish(),
            Kind::AllOf(all) => f.debug_tuple("AllOf").field(all).finish(),
            Kind::Not(inner) => f.debug_tuple("Not").field(inner).finish(),
            Kind::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// Per-method policy: rules of (matcher, value), the first match wins, with an optional
/// default.
///
/// # Example
///
/// ```
/// use palisade_core::{Matcher, Method, PerMethod};
///
/// let quotas = PerMethod::new()
///     .rule(Matcher::method("shop.Cart/Checkout"), 10)
///     .rule(Matcher::service("shop.Cart"), 100)
///     .default_value(1000);
/// let checkout = Method::parse("/shop.Cart/Checkout").unwrap();
/// let other = Method::parse("/shop.Search/Find").unwrap();
/// assert_eq!(quotas.get(Some(&checkout)), Some(&10));
/// assert_eq!(quotas.get(Some(&other)), Some(&1000));
/// ```
#[derive(Clone, Debug)]
pub struct PerMethod<T> {
    rules: Vec<(Matcher, T)>,
    default: Option<T>,
}

impl<T> Default for PerMethod<T> {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: None,
        }
    }
}

impl<T> PerMethod<T> {
    /// No rules and no default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule; rules are tried in the order they were added.
    #[must_use]
    pub fn rule(mut self, matcher: Matcher, value: T) -> Self {
        self.rules.push((matcher, value));
        self
    }

    /// Sets the value for requests no rule matches.
    #[must_use]
    pub fn default_value(mut self, value: T) -> Self {
        self.default = Some(value);
        self
    }

    /// The value for a method: the first matching rule's, else the default.
    pub fn get(&self, method: Option<&Method<'_>>) -> Option<&T> {
        self.rules
            .iter()
            .find(|(matcher, _)| matcher.matches(method))
            .map(|(_, value)| value)
            .or(self.default.as_ref())
    }

    /// The rules, in order, and the default.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.rules
            .iter()
            .map(|(_, value)| value)
            .chain(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_grpc_paths_match_only_any_and_negations() {
        for matcher in [
            Matcher::method("a/b"),
            Matcher::service("a"),
            Matcher::prefix(""),
            Matcher::health_and_reflection(),
        ] {
            assert!(!matcher.matches_path("/"), "{matcher:?}");
            assert!(matcher.clone().not().matches_path("/"), "{matcher:?}");
        }
        assert!(Matcher::any().matches_path("not a path"));
        assert!(!Matcher::none().matches_path("/a/b"));
        assert!(Matcher::from_fn(|m| m.is_none()).matches_path("//"));
    }

    #[test]
    fn method_names_with_or_without_slash() {
        assert!(Matcher::method("/a.B/C").matches_path("/a.B/C"));
        assert!(Matcher::method("a.B/C").matches_path("/a.B/C"));
        assert!(!Matcher::method("a.B/C").matches_path("/a.B/CD"));
        assert!(!Matcher::service("a.B").matches_path("/a.BC/D"));
    }
}
