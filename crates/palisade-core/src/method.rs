//! Parsing the gRPC method out of a request path.

use std::fmt;

/// A gRPC method, parsed from a request path of the form `/package.Service/Method`.
///
/// Parsing borrows from the path and never allocates. Anything that is not exactly
/// `/` + service + `/` + method, both non-empty, is not a gRPC method and parses to `None`.
///
/// # Example
///
/// ```
/// use palisade_core::Method;
///
/// let m = Method::parse("/palisade.demo.v1.Greeter/SayHello").unwrap();
/// assert_eq!(m.service(), "palisade.demo.v1.Greeter");
/// assert_eq!(m.package(), Some("palisade.demo.v1"));
/// assert_eq!(m.service_name(), "Greeter");
/// assert_eq!(m.method(), "SayHello");
/// assert_eq!(m.path(), "/palisade.demo.v1.Greeter/SayHello");
///
/// for bad in ["", "/", "//", "/a", "/a/", "/a/b/c", "a/b"] {
///     assert!(Method::parse(bad).is_none(), "{bad:?}");
/// }
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method<'a> {
    path: &'a str,
    split: usize,
}

impl<'a> Method<'a> {
    /// Parses a request path; `None` unless it is `/service/method` with both parts non-empty.
    pub fn parse(path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix('/')?;
        let slash = rest.find('/')?;
        let (service, method) = (&rest[..slash], &rest[slash + 1..]);
        if service.is_empty() || method.is_empty() || method.contains('/') {
            return None;
        }
        Some(Self {
            path,
            split: slash + 1,
        })
    }

    /// Parses raw path bytes; non-UTF-8 input is not a method.
    pub fn parse_bytes(path: &'a [u8]) -> Option<Self> {
        Self::parse(std::str::from_utf8(path).ok()?)
    }

    /// Parses the path of a request URI.
    pub fn from_uri(uri: &'a http::Uri) -> Option<Self> {
        Self::parse(uri.path())
    }

    /// Parses the path of a request.
    pub fn from_request<B>(request: &'a http::Request<B>) -> Option<Self> {
        Self::from_uri(request.uri())
    }

    /// The fully qualified service, `package.Service`.
    pub fn service(&self) -> &'a str {
        &self.path[1..self.split]
    }

    /// The method name, `Method`.
    pub fn method(&self) -> &'a str {
        &self.path[self.split + 1..]
    }

    /// The protobuf package, when the service has one.
    pub fn package(&self) -> Option<&'a str> {
        let service = self.service();
        service.rfind('.').map(|dot| &service[..dot])
    }

    /// The service name without its package.
    pub fn service_name(&self) -> &'a str {
        let service = self.service();
        service
            .rfind('.')
            .map_or(service, |dot| &service[dot + 1..])
    }

    /// The whole path, `/package.Service/Method`.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// `package.Service/Method`: the path without its leading slash, as OpenTelemetry names spans.
    pub fn full_name(&self) -> &'a str {
        &self.path[1..]
    }
}

impl fmt::Debug for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("service", &self.service())
            .field("method", &self.method())
            .finish()
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.full_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_paths_are_not_methods() {
        for bad in [
            "", "/", "//", "/a", "/a/", "//b", "/a/b/c", "a/b", "/a/b/", "///",
        ] {
            assert_eq!(Method::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Method::parse_bytes(b"/\xff\xfe/b"), None);
    }

    #[test]
    fn parts_of_a_method() {
        let m = Method::parse("/Svc/M").unwrap();
        assert_eq!((m.service(), m.method()), ("Svc", "M"));
        assert_eq!(m.package(), None);
        assert_eq!(m.service_name(), "Svc");
        assert_eq!(m.full_name(), "Svc/M");
        assert_eq!(m.to_string(), "Svc/M");
        let m = Method::parse_bytes("/a.b.C/ünï".as_bytes()).unwrap();
        assert_eq!(m.package(), Some("a.b"));
        assert_eq!(m.method(), "ünï");
    }
}

/// The type of a gRPC method, as go-grpc-prometheus names it in `grpc_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodType {
    /// One request, one response.
    Unary,
    /// A stream of requests, one response.
    ClientStream,
    /// One request, a stream of responses.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl MethodType {
    /// The type from the streaming flags of a method descriptor.
    pub const fn from_streaming(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => MethodType::Unary,
            (true, false) => MethodType::ClientStream,
            (false, true) => MethodType::ServerStream,
            (true, true) => MethodType::BidiStream,
        }
    }

    /// `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MethodType::Unary => "unary",
            MethodType::ClientStream => "client_stream",
            MethodType::ServerStream => "server_stream",
            MethodType::BidiStream => "bidi_stream",
        }
    }
}
