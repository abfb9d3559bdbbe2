//! gRPC-aware primitives shared by every Palisade layer.
//!
//! Every layer of Palisade — logging, metrics, trace, JWT, rate limiting, circuit breaking —
//! hangs off the same few pieces, so that all of them read an RPC the same way:
//!
//! - [`Method`] parses `/package.Service/Method` without allocating;
//! - [`Outcome`] is the RPC's gRPC code, read from wherever it really is (trailers,
//!   trailers-only headers, the HTTP status, an error, a drop);
//! - [`ObservedFuture`] and [`ObservedBody`] forward a response unchanged, count gRPC
//!   messages, and tell an [`Observer`] exactly once how the RPC ended — at end of stream, not
//!   at the response headers;
//! - [`ObserveLayer`] / [`Observe`] ([`observe`]) are that machinery as one middleware: a
//!   layer crate writes only its [`observe::Policy`], which decides at the start of each RPC
//!   whether and how to watch it;
//! - [`Rejection`] answers with a trailers-only gRPC response a client reads as a `Status`,
//!   marked ([`LocalRejection`]) so every observer can tell it from the backend's answers
//!   ([`Outcome::rejected_by`]);
//! - [`Matcher`] and [`PerMethod`] select RPCs and per-method policy;
//! - [`CodeSet`], [`Peer`], [`deadline::grpc_timeout`] and (feature `registry`)
//!   [`MethodRegistry`];
//! - [`Rpc`], the per-RPC record the layers of one stack share, put in by [`RecordLayer`];
//!   [`Call`], the request view a policy gets; [`side`]'s markers put the side in a type;
//! - (feature `metrics`) [`recorder::installed`], which every layer that registers `metrics`
//!   handles at build asks, to warn when it is built before the recorder is installed.
//!
//! # Example
//!
//! An observer that sees how each RPC ended, around any `http` service:
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{HeaderMap, HeaderValue, Response};
//! use http_body_util::{BodyExt, Full, StreamBody};
//! use http_body::Frame;
//! use palisade_core::{observe::on_end, Code, ObservedFuture, Side};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! // A unary gRPC response: one 2-byte message, then trailers with grpc-status 0.
//! let mut trailers = HeaderMap::new();
//! trailers.insert("grpc-status", HeaderValue::from_static("0"));
//! let frames = vec![
//!     Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 2, b'h', b'i']))),
//!     Ok(Frame::trailers(trailers)),
//! ];
//! let inner = async move {
//!     Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(frames))))
//! };
//!
//! let (tx, rx) = std::sync::mpsc::channel();
//! let observer = on_end(move |outcome, counts| tx.send((outcome.code(), counts.messages)).unwrap());
//! let response = ObservedFuture::new(inner, Side::Server, observer).await.unwrap();
//! assert!(rx.try_recv().is_err(), "not over at the headers");
//! let collected = response.into_body().collect().await.unwrap();
//! assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
//! assert_eq!(rx.recv().unwrap(), (Code::Ok, 1));
//! # }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admit;
pub mod body;
#[cfg(feature = "registry")]
pub mod build;
pub mod call;
pub mod code;
pub mod counter;
pub mod deadline;
pub mod future;
pub mod headers;
pub mod matcher;
pub mod method;
pub mod observe;
pub mod outcome;
pub mod peer;
#[cfg(feature = "metrics")]
pub mod recorder;
#[cfg(feature = "registry")]
pub mod registry;
pub mod rejection;
pub mod rpc;
pub mod side;
pub mod slots;

pub use body::ObservedBody;
pub use call::Call;
pub use code::{Code, CodeSet};
pub use counter::MessageCounter;
pub use future::ObservedFuture;
pub use matcher::{Matcher, PerMethod};
pub use method::{Method, MethodType};
pub use observe::{Counts, Observe, ObserveLayer, Observer, Side};
pub use outcome::Outcome;
pub use peer::Peer;
#[cfg(feature = "registry")]
pub use registry::{MethodInfo, MethodRegistry};
pub use rejection::{LocalRejection, Rejection, reject};
pub use rpc::{RecordLayer, Rpc};
pub use tonic::Status;
