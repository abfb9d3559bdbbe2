//! [`Call`]: the view of a request a policy gets at the start of an RPC.
//!
//! One type for every layer, instead of a request view per crate: the side, the request's
//! head (headers, extensions, URI — mutable, so trace can inject and jwt can strip), the
//! per-RPC record when the stack has one, and the peer and deadline read once when asked.
//!
//! # Example
//!
//! ```
//! use palisade_core::{call::Call, Side};
//!
//! let request = http::Request::post("/pkg.Greeter/SayHello")
//!     .header("content-type", "application/grpc")
//!     .header("grpc-timeout", "250m")
//!     .body(())
//!     .unwrap();
//! let (mut parts, ()) = request.into_parts();
//! let mut call = Call::new(Side::Server, &mut parts);
//! assert_eq!(call.method().unwrap().full_name(), "pkg.Greeter/SayHello");
//! assert!(call.is_grpc());
//! assert_eq!(call.timeout(), Some(std::time::Duration::from_millis(250)));
//! assert!(call.record().is_none());
//! ```

use std::{fmt, time::Duration};

use http::request::Parts;

use crate::{method::Method, peer::Peer, rpc::Rpc, side::Side};

/// The start of one RPC as a policy sees it; see the [module docs](self).
pub struct Call<'a> {
    side: Side,
    parts: &'a mut Parts,
    peer: Option<Peer>,
    timeout: Option<Option<Duration>>,
    /// Whether [`record_or_insert`](Self::record_or_insert) put this side's record in place
    /// (cleared by [`parts_mut`](Self::parts_mut)), so the middleware need not look again.
    recorded: bool,
}

impl<'a> Call<'a> {
    /// The call whose request head is `parts`, on `side`.
    pub fn new(side: Side, parts: &'a mut Parts) -> Self {
        Self {
            side,
            parts,
            peer: None,
            timeout: None,
            recorded: false,
        }
    }

    /// The side the layer runs on.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The request's head.
    pub fn parts(&self) -> &Parts {
        self.parts
    }

    /// The request's head, mutably: add or remove headers, insert extensions.
    pub fn parts_mut(&mut self) -> &mut Parts {
        self.recorded = false;
        self.parts
    }

    /// The request path.
    pub fn path(&self) -> &str {
        self.parts.uri.path()
    }

    /// The gRPC method, if the path is `/package.Service/Method`.
    pub fn method(&self) -> Option<Method<'_>> {
        Method::from_uri(&self.parts.uri)
    }

    /// Whether the request says it is gRPC: its `content-type` is `application/grpc` or
    /// `application/grpc+…` / `application/grpc;…`.
    pub fn is_grpc(&self) -> bool {
        self.parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.as_bytes().strip_prefix(b"application/grpc"))
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    }

    /// The per-RPC record, if a layer outside on this call's side made one: a record of the
    /// other side (a proxy forwarding its incoming extensions) is not this call's.
    pub fn record(&self) -> Option<&Rpc> {
        Rpc::from_extensions(&self.parts.extensions).filter(|rpc| rpc.side() == self.side)
    }

    /// The per-RPC record, made for this call's side when there is none or the one there is
    /// of the other side (for layers that read the record's facts at the end, and
    /// [`RecordLayer`](crate::rpc::RecordLayer)).
    pub fn record_or_insert(&mut self) -> &Rpc {
        self.recorded = true;
        Rpc::get_or_insert(&mut self.parts.extensions, self.side)
    }

    /// Puts this side's record in place, unless [`record_or_insert`](Self::record_or_insert)
    /// already did (a policy's `start` that read the record's start): one lookup, not two.
    pub(crate) fn ensure_record(&mut self) {
        if !self.recorded {
            self.record_or_insert();
        }
    }

    /// The peer (remote and local address, TLS certificates), read once from tonic's
    /// connection info.
    pub fn peer(&mut self) -> &Peer {
        let extensions = &self.parts.extensions;
        self.peer
            .get_or_insert_with(|| Peer::from_extensions(extensions))
    }

    /// The caller's `grpc-timeout`, read once.
    pub fn timeout(&mut self) -> Option<Duration> {
        let headers = &self.parts.headers;
        *self
            .timeout
            .get_or_insert_with(|| crate::deadline::grpc_timeout(headers))
    }
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("side", &self.side)
            .field("method", &self.parts.method)
            .field("uri", &self.parts.uri)
            .field("record", &self.record())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(content_type: &str) -> Parts {
        http::Request::post("/a.B/C")
            .header("content-type", content_type)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn grpc_content_types() {
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            let mut parts = parts(value);
            assert_eq!(
                Call::new(Side::Server, &mut parts).is_grpc(),
                grpc,
                "{value}"
            );
        }
    }

    #[test]
    fn the_record_is_made_once() {
        let mut parts = parts("application/grpc");
        let mut call = Call::new(Side::Client, &mut parts);
        let start = call.record_or_insert().start();
        assert_eq!(call.record().unwrap().start(), start);
        assert_eq!(call.record().unwrap().side(), Side::Client);
        assert!(call.peer().remote_addr.is_none());
    }

    #[test]
    fn ensure_record_keeps_the_record_made_and_makes_a_removed_one_again() {
        let mut parts = parts("application/grpc");
        let mut call = Call::new(Side::Server, &mut parts);
        call.ensure_record();
        let start = call.record().unwrap().start();
        call.ensure_record();
        assert_eq!(call.record().unwrap().start(), start, "not replaced");

        // A policy that took the record out through `parts_mut` gets a new one.
        call.parts_mut().extensions.remove::<Rpc>();
        call.ensure_record();
        assert!(call.record().is_some());
    }

    #[test]
    fn a_record_of_the_other_side_is_not_used() {
        let mut parts = parts("application/grpc");
        let server = Rpc::new(Side::Server);
        parts.extensions.insert(server.clone());
        let mut call = Call::new(Side::Client, &mut parts);
        assert!(
            call.record().is_none(),
            "the server's record is not the client's"
        );
        let client = call.record_or_insert().clone();
        assert_eq!(client.side(), Side::Client);
        assert!(client.set_subject("alice".into()));
        assert_eq!(
            server.subject(),
            None,
            "nothing is written into the server's record"
        );
    }
}
