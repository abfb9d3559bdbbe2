//! Deadlines for gRPC on tower: what Go's `context` gives every grpc-go service — the
//! caller's deadline enforced on the server, and carried to the calls its handler makes.
//!
//! - **Server** ([`DeadlineLayer::server`]): the caller's `grpc-timeout`, capped by
//!   [`max`](DeadlineBuilder::max), or a [`default`](DeadlineBuilder::default) when it sent
//!   none. When the deadline passes before the response head, the handler's future is
//!   dropped and the call answered with a trailers-only `DEADLINE_EXCEEDED` (code 4,
//!   `deadline exceeded`, marked `by("deadline")` so other Palisade layers know it is local);
//!   when it passes while the response streams, the stream ends with trailers
//!   `grpc-status: 4` after the messages already sent. A malformed `grpc-timeout` (not 1 to
//!   8 digits and one of the units `H M S m u n`) is answered `INVALID_ARGUMENT`
//!   (`malformed grpc-timeout`); a zero one `DEADLINE_EXCEEDED` at once, without calling the
//!   handler.
//! - **The handler sees its deadline**: a [`Deadline`] in the request extensions
//!   ([`Deadline::from_extensions`]), and [`current()`] while the handler's future and the
//!   response body are polled — entered around each poll as palisade-trace enters its
//!   OpenTelemetry context, on the same thread-local pattern (it is also a
//!   `palisade_core::observe::Scope`). A task the handler spawns does not inherit it:
//!   [`Deadline::enter`] it there.
//! - **Client** ([`DeadlineLayer::client`]): the call's `grpc-timeout` is the smallest of the
//!   request's own, the method's default ([`default`](DeadlineBuilder::default),
//!   [`per_method`](DeadlineBuilder::per_method)) and the current deadline, less a
//!   [`margin`](DeadlineBuilder::margin) (5 ms by default, never below zero) left to the
//!   handler to answer its own caller. A call with nothing left is not sent: it is answered
//!   `DEADLINE_EXCEEDED` at once, marked `by("deadline")`. The client enforces what it sent
//!   too, so a hung channel still ends at the deadline.
//!
//! A server that capped the caller's deadline or gave it the default rewrites the request's
//! `grpc-timeout` to match, so inner layers and handlers reading the header agree with
//! [`current()`]. Time is tokio's clock: `tokio::time::pause` drives every deadline in tests.
//!
//! **With tonic.** tonic enforces `grpc-timeout` itself, outside every layer, and ends an
//! expired call with `CANCELLED` ("Timeout expired"): its server before the routes, its
//! `Channel` under the client's layers. On a client, the layer answers an error of the channel
//! at or after the deadline it sent as `DEADLINE_EXCEEDED`. On a server, tonic's timer starts a
//! moment before the layer's: when both fire in the same timer tick (always with paused time,
//! nearly always otherwise) the layer's `DEADLINE_EXCEEDED` wins, since tonic polls the call
//! before its timer; when the two straddle a millisecond tick, the caller sees tonic's
//! `CANCELLED` — the handler is dropped at the deadline either way.
//!
//! # Example
//!
//! A 100 ms deadline on a handler that would take a second:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use palisade_core::LocalRejection;
//! use palisade_deadline::DeadlineLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let layer = DeadlineLayer::server().max(Duration::from_secs(30)).build().unwrap();
//! let handler = service_fn(|_: Request<Full<Bytes>>| async {
//!     // The deadline is current while the handler runs.
//!     let left = palisade_deadline::current().unwrap().remaining();
//!     assert_eq!(left, Duration::from_millis(100));
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
//! });
//! let service = layer.layer(handler);
//!
//! let request = Request::post("/pkg.Greeter/SayHello")
//!     .header("content-type", "application/grpc")
//!     .header("grpc-timeout", "100m")
//!     .body(Full::default())
//!     .unwrap();
//! let start = tokio::time::Instant::now();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(start.elapsed(), Duration::from_millis(100));
//! assert_eq!(response.headers()["grpc-status"], "4");
//! assert_eq!(LocalRejection::of(&response).unwrap().layer(), "deadline");
//! # }
//! ```
//!
//! # Why its own future and body
//!
//! The layer does not run on palisade-core's `Admit` or `Observe`: answering
//! `DEADLINE_EXCEEDED` after the call started means rewriting the response — dropping the
//! inner future for a rejection, or ending the inner body with trailers of its own — which
//! neither middleware does, so [`ResponseFuture`] and [`ResponseBody`] are the crate's own.
//! Since they wrap every poll anyway, they also enter the current deadline (the `Scope`
//! `Observe` would enter) and answer an already-passed deadline (what `Admit` would reject)
//! with one branch each, instead of a second future and body around them.
#![forbid(unsafe_code)]

mod body;
mod deadline;
mod future;
mod layer;
mod service;

use std::{error::Error, fmt, time::Duration};

pub use body::ResponseBody;
pub use deadline::{Deadline, Entered, current};
pub use future::ResponseFuture;
pub use layer::{DEFAULT_MARGIN, DeadlineBuilder, DeadlineLayer};
pub use service::Timeout;

/// The layer's name: on its rejections' mark ([`palisade_core::LocalRejection`]) and its
/// preset slot.
pub const NAME: &str = "deadline";

/// What [`DeadlineBuilder::build`] refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max` is zero: every call would fail.
    ZeroMax,
    /// `default` (or a per-method timeout) is zero: every call without a deadline would fail.
    ZeroDefault,
    /// `default` is longer than `max`.
    DefaultOverMax {
        /// The default given.
        default: Duration,
        /// The max given.
        max: Duration,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroMax => f.write_str("the max deadline is zero"),
            ConfigError::ZeroDefault => f.write_str("a default deadline is zero"),
            ConfigError::DefaultOverMax { default, max } => write!(
                f,
                "the default deadline ({default:?}) is longer than the max ({max:?})"
            ),
        }
    }
}

impl Error for ConfigError {}
