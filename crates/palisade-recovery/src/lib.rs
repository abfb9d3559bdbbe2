//! A handler's panic answered as `INTERNAL` for that RPC alone: the connection and every
//! other RPC on it go on.
//!
//! [`RecoveryLayer`] catches a panic of the services it wraps wherever it happens:
//!
//! - in the inner service's `call`, or while its response future is polled: no response head
//!   went out yet, so the RPC is answered trailers-only — `grpc-status: 13`,
//!   `grpc-message: internal error` — marked as palisade-core's
//!   [`LocalRejection`](palisade_core::LocalRejection) by `recovery` (so palisade-logging
//!   writes `palisade.rejected_by=recovery`);
//! - while its response body is polled (a streaming handler): the head and maybe some messages
//!   went out, so the body ends with the trailers `grpc-status: 13` / `internal error` after
//!   the messages already sent.
//!
//! Every layer outside sees an ordinary `INTERNAL` answer, never a cancelled call or an
//! unwinding poll. Each panic is logged once at `ERROR` (target `palisade_recovery`, fields
//! `grpc.service`, `grpc.method`, `grpc.code`, `panic.message` — bounded, see
//! [`RecoveryBuilder::max_message_len`] — and `panic.stage`), counted in
//! `palisade_panics_total{grpc_service,grpc_method}` ([`PANICS_TOTAL`], labels bounded by the
//! method registry as palisade-metrics bounds its own) and handed to the
//! [`on_panic`](RecoveryBuilder::on_panic) hook.
//!
//! Put it innermost, next to the routes: `Server::builder().layer(layers).layer(recovery)`
//! puts it inside every layer of `layers`. A panic in the inner service's `poll_ready` is not
//! caught (there is no RPC to answer yet), nor one in a [`skip`](RecoveryBuilder::skip)ped
//! RPC.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use palisade_core::LocalRejection;
//! use palisade_recovery::RecoveryLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let handler = service_fn(|request: Request<Full<Bytes>>| async move {
//!     if request.uri().path() == "/pkg.Greeter/Fail" {
//!         panic!("the handler has a bug");
//!     }
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
//! });
//! let service = RecoveryLayer::server().build().layer(handler);
//!
//! // A panicking RPC: a trailers-only INTERNAL, marked as recovery's.
//! let request = Request::post("/pkg.Greeter/Fail").body(Full::default()).unwrap();
//! let response = service.clone().oneshot(request).await.unwrap();
//! assert_eq!(response.headers()["grpc-status"], "13");
//! assert_eq!(response.headers()["grpc-message"], "internal error");
//! assert_eq!(LocalRejection::of(&response).unwrap().layer(), "recovery");
//!
//! // Every other RPC is answered as before.
//! let request = Request::post("/pkg.Greeter/Hello").body(Full::default()).unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert!(response.headers().get("grpc-status").is_none());
//! # }
//! ```
//!
//! # Why not tower-http's `CatchPanic`
//!
//! tower-http's `CatchPanic`, with a `ResponseForPanic` answering a trailers-only `INTERNAL`,
//! serves the response-future half (a panic in `call` or in the response future), and it is
//! cheaper on a call that does not panic. It does not serve the rest:
//!
//! - it cannot catch a panic while the body is polled — a streaming handler's panic still
//!   unwinds out of the body, and the stream is reset instead of ending with `INTERNAL`;
//! - its handler sees only the payload, not the RPC, so the log line, the counter's labels
//!   and the hook could not name the method;
//! - it changes every response's body into an `UnsyncBoxBody` (one allocation per call, a
//!   `dyn` call per frame, the body no longer `Sync`).
//!
//! Putting it under this layer's body catching would pay both. Measured in-process on the
//! project's `peers/recovery` bench cases (a unary OK call, nothing panicking; callgrind
//! through `palisade-bench-count`, and the benches' interleaved wall-clock pairing on a loaded
//! 2-core machine), over a bare service of 5 510 instructions / ≈ 465 ns per call:
//!
//! | | instructions per call | ns per call (median, IQR) |
//! |---|---|---|
//! | `RecoveryLayer` | + 736 | + 108 (100–115) |
//! | `CatchPanicLayer::custom` | + 497 | + 60 (55–66) |
//!
//! This layer's extra cost is what buys the rest: the method's slot, found at `call`
//! (≈ 155 instructions, ≈ 30 ns), the `catch_unwind` around every poll of the body
//! (≈ 30 instructions a frame) and a larger inline body and future to move (the inner body
//! stays unboxed).
#![forbid(unsafe_code)]

mod body;
mod config;
mod future;
mod layer;
mod report;
mod service;

pub use body::ResponseBody;
pub use config::{DEFAULT_MAX_DYNAMIC_METHODS, RecoveryBuilder};
pub use future::ResponseFuture;
pub use layer::RecoveryLayer;
pub use report::{
    DEFAULT_MAX_MESSAGE_LEN, MESSAGE, NAME, NON_STRING_PAYLOAD, PANICS_TOTAL, PanicReport,
    PanicStage,
};
pub use service::Recovery;

/// The panic's `ERROR` event; here, at the crate's root, so that its target is
/// `palisade_recovery` (tracing's macros take no `target:` before dotted field names).
fn log_panic(service: &str, method: &str, message: &str, stage: &'static str) {
    tracing::error!(
        grpc.service = service,
        grpc.method = method,
        grpc.code = "Internal",
        panic.message = message,
        panic.stage = stage,
        "handler panicked; the RPC was answered with INTERNAL"
    );
}
