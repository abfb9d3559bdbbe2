//! In-process gRPC frames for unit tests and benchmarks: prefixed messages, trailers, a body
//! made of them, and a service that answers with one.

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::{Ready, ready},
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;

/// A gRPC message: the 5-byte prefix (uncompressed, big-endian length) and the payload.
///
/// ```
/// assert_eq!(&palisade_demo::frames::message(b"hi")[..], &[0, 0, 0, 0, 2, b'h', b'i']);
/// ```
pub fn message(payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + payload.len());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(payload.len()).expect("a message under 4 GiB"));
    buf.put_slice(payload);
    buf.freeze()
}

/// Trailers with `grpc-status` and, when given, a `grpc-message` (plain ASCII).
pub fn trailers(code: Code, message: Option<&str>) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Some(message) = message {
        trailers.insert(
            "grpc-message",
            HeaderValue::from_str(message).expect("an ASCII grpc-message"),
        );
    }
    trailers
}

/// A response or request body made of data frames and optional trailers.
#[derive(Debug, Default)]
pub struct GrpcBody {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl GrpcBody {
    /// The given data frames, then the trailers if any.
    pub fn new(data: impl IntoIterator<Item = Bytes>, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: data.into_iter().collect(),
            trailers,
        }
    }

    /// One message, then trailers with `code`: a unary gRPC response.
    pub fn unary(payload: &[u8], code: Code) -> Self {
        Self::new([message(payload)], Some(trailers(code, None)))
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.iter().map(|d| d.len() as u64).sum())
    }
}

/// A tower service answering every request with a unary gRPC response: one small `HelloReply` message,
/// then trailers with `code` — the bare service benches compare layers against.
#[derive(Clone, Copy, Debug)]
pub struct UnaryService {
    code: Code,
}

/// A [`UnaryService`] answering with `code`.
pub fn unary_service(code: Code) -> UnaryService {
    UnaryService { code }
}

const PAYLOAD: &[u8] = b"\x0a\x0fHello, Palisade";

impl<B> tower_service::Service<Request<B>> for UnaryService {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<GrpcBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        let mut response = Response::new(GrpcBody::unary(PAYLOAD, self.code));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        ready(Ok(response))
    }
}
