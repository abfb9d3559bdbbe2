//! The requests every in-process bench sends: what a tonic server hands its layers, and what a
//! tonic client hands its channel's layers.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http::{HeaderValue, Request};
use palisade_demo::frames::GrpcBody;
use tonic::transport::server::TcpConnectInfo;

use crate::env;

/// `HelloRequest { name: "Ada" }` with its 5-byte gRPC prefix.
pub const HELLO_ADA: &[u8] = b"\x00\x00\x00\x00\x05\x0a\x03Ada";

/// A W3C `traceparent` whose caller sampled the trace.
pub const TRACEPARENT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The same trace, not sampled by the caller.
pub const TRACEPARENT_NOT_SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// How many distinct peers (client IP addresses) server requests come from, in turn.
pub const PEERS: usize = 1000;

/// Makes requests, one per call, built outside the timed part of a bench.
///
/// Server requests are what tonic's server gives its layers for a unary `SayHello`: `POST`,
/// the path, `content-type: application/grpc`, `te: trailers`, `grpc-timeout`, a `user-agent`,
/// an `authorization` bearer token (a real HS256 JWT, see [`env::Env`]), a `traceparent`,
/// tonic's `TcpConnectInfo` in the extensions (the remote address cycles through
/// [`PEERS`] addresses), and a body holding one request message.
///
/// Client requests are what a tonic client gives its channel's layers: the same without the
/// token, the `traceparent` and the connection info (client layers add the first two).
#[derive(Clone, Debug)]
pub struct Requests {
    server: bool,
    tokens: Arc<[HeaderValue]>,
    traceparent: Option<HeaderValue>,
    next: usize,
}

impl Requests {
    /// Server requests, with the environment's token and a sampled `traceparent`.
    pub fn server() -> Self {
        Self {
            server: true,
            tokens: Arc::from([env::get().bearer.clone()]),
            traceparent: Some(HeaderValue::from_static(TRACEPARENT_SAMPLED)),
            next: 0,
        }
    }

    /// Client requests.
    pub fn client() -> Self {
        Self {
            server: false,
            tokens: Arc::from([]),
            traceparent: None,
            next: 0,
        }
    }

    /// With a `traceparent` whose caller did not sample the trace.
    pub fn not_sampled(mut self) -> Self {
        self.traceparent = Some(HeaderValue::from_static(TRACEPARENT_NOT_SAMPLED));
        self
    }

    /// With a token never seen before on each request (cycling through the environment's pool
    /// of fresh tokens, many more than a verified-token cache holds).
    pub fn fresh_tokens(mut self) -> Self {
        self.tokens = env::get().fresh_tokens();
        self
    }

    /// The next request.
    pub fn request(&mut self) -> Request<GrpcBody> {
        let i = self.next;
        self.next = self.next.wrapping_add(1);
        let mut builder = Request::builder()
            .method("POST")
            .uri(palisade_demo::SAY_HELLO)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", "1S")
            .header("user-agent", "tonic/0.14");
        if self.server {
            builder = builder.header("authorization", &self.tokens[i % self.tokens.len()]);
            if let Some(traceparent) = &self.traceparent {
                builder = builder.header("traceparent", traceparent);
            }
            builder = builder.extension(TcpConnectInfo {
                local_addr: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051)),
                remote_addr: Some(peer(i)),
            });
        }
        builder
            .body(GrpcBody::new([Bytes::from_static(HELLO_ADA)], None))
            .expect("a valid request")
    }
}

/// The `i`-th of [`PEERS`] client addresses.
pub fn peer(i: usize) -> SocketAddr {
    let n = (i % PEERS) as u32;
    let ip = Ipv4Addr::from(0x0a00_0000 | (n + 1));
    SocketAddr::new(IpAddr::V4(ip), 40000 + (n % 20000) as u16)
}
