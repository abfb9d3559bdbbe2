//! The side of an RPC as a type: [`Server`] and [`Client`], zero-sized markers.
//!
//! [`Side`] is the runtime value; the markers put it in a type, so that a layer made for one
//! side says so in its type (`RecordLayer<Server>`) and a generic layer reads the value back
//! as a constant ([`OnSide::SIDE`]).
//!
//! # Example
//!
//! ```
//! use palisade_core::side::{Client, OnSide, Server, Side};
//!
//! fn side_of<K: OnSide>() -> Side {
//!     K::SIDE
//! }
//! assert_eq!(side_of::<Server>(), Side::Server);
//! assert_eq!(side_of::<Client>().as_str(), "client");
//! ```

use std::fmt::Debug;

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Server {}
    impl Sealed for super::Client {}
}

/// A side as a type: implemented by [`Server`] and [`Client`] only (sealed).
pub trait OnSide: sealed::Sealed + Copy + Default + Debug + Send + Sync + 'static {
    /// The side's runtime value.
    const SIDE: Side;
}

/// The server side: a layer around a service that answers RPCs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Server;

/// The client side: a layer around a channel that makes RPCs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Client;

impl OnSide for Server {
    const SIDE: Side = Side::Server;
}

impl OnSide for Client {
    const SIDE: Side = Side::Client;
}

/// Which side of an RPC a layer runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Around a server's service: it answers RPCs.
    Server,
    /// Around a client's channel: it makes RPCs.
    Client,
}

impl Side {
    /// `"server"` or `"client"`, as go-grpc-middleware writes `grpc.component`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }

    /// The code an error without a gRPC status gets on this side: `Unknown` on a server,
    /// `Unavailable` on a client (where such errors are transport failures).
    pub const fn error_fallback(self) -> crate::Code {
        match self {
            Side::Server => crate::Code::Unknown,
            Side::Client => crate::Code::Unavailable,
        }
    }
}
