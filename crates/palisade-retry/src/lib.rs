//! gRPC retries and hedging for tonic and tower clients, as the gRPC retry design (A6)
//! specifies them: per-method [`RetryPolicy`] and [`HedgePolicy`], a per-channel
//! [`RetryBudget`] (on by default), the server's `grpc-retry-pushback-ms`, the call's
//! deadline, and a bounded replay buffer for the request body.
//!
//! tower's `Retry` needs a request it can clone, which an `http::Request` with a streaming
//! body is not; [`RetryLayer`] reads the body once into a buffer each attempt replays, and
//! answers with the response of the attempt that counts, unchanged.
//!
//! # Example
//!
//! A backend that is unavailable for the first two attempts of every call, behind a layer that
//! makes up to three:
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use palisade_core::Matcher;
//! use palisade_retry::{RetryLayer, RetryPolicy};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let backend = service_fn(|request: Request<tonic::body::Body>| async move {
//!     let previous: u32 = request.headers().get("grpc-previous-rpc-attempts")
//!         .map_or(0, |value| value.to_str().unwrap().parse().unwrap());
//!     let mut response = Response::new(Full::new(Bytes::new()));
//!     let code = if previous < 2 { "14" } else { "0" }; // UNAVAILABLE, then OK
//!     response.headers_mut().insert("grpc-status", code.parse().unwrap());
//!     Ok::<_, Infallible>(response)
//! });
//! let retry = RetryLayer::client()
//!     .retry(
//!         Matcher::any(),
//!         RetryPolicy::new(3).initial_backoff(Duration::from_millis(10)),
//!     )
//!     .build()
//!     .unwrap();
//! let response = retry
//!     .layer(backend)
//!     .oneshot(Request::post("/shop.Cart/Get").body(Full::new(Bytes::from_static(b"\0\0\0\0\0"))).unwrap())
//!     .await
//!     .unwrap();
//! assert_eq!(response.headers()["grpc-status"], "0", "the third attempt answered");
//! # }
//! ```
//!
//! # What is retried, and when
//!
//! - An attempt is made again only if it failed with a retryable code (`UNAVAILABLE` unless
//!   set; a transport error counts as `UNAVAILABLE`, as tonic reports it) **before any
//!   response message**: a trailers-only answer. Response headers that are not trailers-only
//!   commit the call — a stream that delivered a message and then failed is never replayed.
//! - A rejection made in this process by a Palisade layer inside (an open breaker, a local
//!   in-flight or rate limit: its response carries a
//!   [`LocalRejection`](palisade_core::LocalRejection)) is never retried and never counted
//!   against the budget.
//! - The server's `grpc-retry-pushback-ms` sets the next attempt's delay; a negative or
//!   malformed one, or one longer than [`max_pushback`](RetryBuilder::max_pushback), means no
//!   more attempts.
//! - The [`RetryBudget`] spends a token per retryable failure and earns a fraction back per
//!   success; below half, no retry or hedge is made
//!   (`palisade_retry_budget_exhausted_total`).
//! - The deadline is the first attempt's `grpc-timeout` (a deadline layer outside sets it):
//!   no attempt starts once it has passed or would pass during the backoff, and each attempt
//!   carries what is left of it. Enforcing it is the deadline layer's job.
//! - The request body is kept up to [`max_buffer`](RetryBuilder::max_buffer) per call and
//!   [`max_buffer_total`](RetryBuilder::max_buffer_total) for the layer; a larger body is sent
//!   once, unretried, and the buffer goes with the call. Once the call is committed, nothing
//!   more of the body is kept and what the answering attempt has sent is given back.
//! - Each attempt after the first sends `grpc-previous-rpc-attempts`, is counted in
//!   `palisade_retry_attempts_total{grpc_service,grpc_method}`, and raises the per-RPC
//!   record's [`attempts`](palisade_core::Rpc::attempts), which the access log writes as
//!   `grpc.attempts` and the trace as the client span's `palisade.attempts` (each attempt is
//!   a server span under it).
//!
//! The layer order and why: `docs/ARCHITECTURE.md` in the repository.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod budget;
mod config;
mod counters;
mod future;
mod head;
mod layer;
mod policy;
mod service;
mod verdict;

pub use body::ReplayError;
pub use budget::{MAX_TOKENS, RetryBudget};
pub use config::{
    ConfigError, DEFAULT_MAX_BUFFER, DEFAULT_MAX_BUFFER_TOTAL, DEFAULT_MAX_DYNAMIC_METHODS,
    DEFAULT_MAX_PUSHBACK, RetryBuilder,
};
pub use counters::{ATTEMPTS_TOTAL, BUDGET_EXHAUSTED_TOTAL};
pub use future::{GRPC_PREVIOUS_RPC_ATTEMPTS, ResponseFuture};
pub use layer::RetryLayer;
pub use policy::{HedgePolicy, MAX_ATTEMPTS, RetryPolicy};
pub use service::Retry;
