//! What a layer hangs off the observed body: one call per message, exactly one at the end.

use crate::outcome::Outcome;

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

/// Counts of what passed through one observed body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Complete gRPC messages.
    pub messages: u64,
    /// Bytes of DATA frames, prefixes included.
    pub bytes: u64,
}

/// Watches one RPC (or one request body): told of each complete gRPC message, and of the
/// end exactly once.
///
/// `on_end` takes `self`, so it can only run once; every path an RPC can end by reaches it:
/// trailers, trailers-only headers, an end without trailers, a body error, an early drop, the
/// inner future failing or being dropped.
///
/// # Example
///
/// ```
/// use palisade_core::{Counts, Observer, Outcome};
///
/// struct PrintOnEnd;
///
/// impl Observer for PrintOnEnd {
///     fn on_end(self, outcome: Outcome, counts: Counts) {
///         println!("{:?} after {} messages", outcome.code(), counts.messages);
///     }
/// }
/// ```
pub trait Observer {
    /// A complete gRPC message went through.
    fn on_message(&mut self) {}

    /// The RPC (or request body) ended, with this outcome and these counts.
    fn on_end(self, outcome: Outcome, counts: Counts);
}

impl Observer for () {
    fn on_end(self, _: Outcome, _: Counts) {}
}

/// An [`Observer`] made of a closure that runs at the end; see [`on_end`].
#[derive(Clone, Copy, Debug)]
pub struct OnEnd<F>(F);

/// An observer from a closure, called once at the end of the RPC.
///
/// ```
/// use palisade_core::observe::on_end;
/// let observer = on_end(|outcome, counts| println!("{outcome:?} {counts:?}"));
/// # let _ = observer;
/// ```
pub fn on_end<F: FnOnce(Outcome, Counts)>(f: F) -> OnEnd<F> {
    OnEnd(f)
}

impl<F: FnOnce(Outcome, Counts)> Observer for OnEnd<F> {
    fn on_end(self, outcome: Outcome, counts: Counts) {
        (self.0)(outcome, counts)
    }
}
