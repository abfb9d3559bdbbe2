//! Per-message limits: a token per received message on client streams; a stream that runs
//! out is ended with the rejection, whatever its handler does.

mod common;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use common::{Counters, Gated, HELLO, call, per_hour, quota, recorder};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use palisade_core::{Code, MessageCounter, Rpc, Side};
use palisade_demo::frames::{GrpcBody, message};
use palisade_ratelimit::{
    ALLOWED_TOTAL, Limit, REJECTED_TOTAL, RateLimitHeaders, RateLimitLayer, body::BoxError,
};
use tower::{Layer, Service};

/// What a client-streaming handler saw: messages, then how the stream ended.
#[derive(Clone, Debug, Default)]
struct Seen {
    messages: u64,
    error: Option<(Code, Option<String>)>,
}

/// A client-streaming handler: reads the whole request stream, then answers OK — ignoring a
/// stream error, as a careless handler would.
#[derive(Clone, Default)]
struct Drain {
    seen: Arc<Mutex<Seen>>,
}

impl<B> Service<Request<B>> for Drain
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let seen = self.seen.clone();
        Box::pin(async move {
            let mut body = std::pin::pin!(request.into_body());
            let mut counter = MessageCounter::default();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            use bytes::Buf;
                            counter.feed(data.chunk());
                        }
                    }
                    Err(error) => {
                        let status = tonic::Status::from_error(error.into());
                        let pushback = status
                            .metadata()
                            .get("grpc-retry-pushback-ms")
                            .map(|v| v.to_str().unwrap().to_owned());
                        seen.lock().unwrap().error = Some((status.code(), pushback));
                        break;
                    }
                }
            }
            seen.lock().unwrap().messages = counter.messages();
            Ok(Response::new(GrpcBody::unary(b"done", Code::Ok)))
        })
    }
}

fn stream(frames: impl IntoIterator<Item = Bytes>) -> Request<GrpcBody> {
    Request::post(HELLO)
        .body(GrpcBody::new(frames, None))
        .unwrap()
}

fn messages(n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| message(format!("m{i}").as_bytes()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_stream_gets_one_message_per_token_and_is_cut_with_the_rejection() {
    let (recorder, snapshotter) = recorder();
    let drain = Drain::default();
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 4)).per_message())
        .recorder(recorder)
        .build_metered()
        .unwrap();
    let mut service = layer.layer(drain.clone());
    let response = call(&mut service, stream(messages(10))).await;
    // The call's token paid the first message, three more tokens three more; the fifth found
    // none: the handler got an error with the rejection's code and pushback…
    let seen = drain.seen.lock().unwrap().clone();
    assert_eq!(seen.messages, 4);
    assert_eq!(
        seen.error,
        Some((Code::ResourceExhausted, Some("1000".into())))
    );
    // …and, though it answered OK, the client gets the rejection.
    assert_eq!(response.headers()["grpc-status"], "8");
    assert_eq!(response.headers()["grpc-retry-pushback-ms"], "1000");
    let counters = Counters::take(&snapshotter);
    assert_eq!(counters.get(ALLOWED_TOTAL, &[]), 1);
    assert_eq!(counters.get(REJECTED_TOTAL, &[]), 1);

    // The bucket is empty: the next stream is refused at the door.
    let response = call(&mut service, stream(messages(1))).await;
    assert_eq!(response.headers()["grpc-status"], "8");
}

#[tokio::test(start_paused = true)]
async fn a_cut_stream_and_a_refused_call_name_the_layer_in_the_record() {
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 2)).per_message())
        .headers(RateLimitHeaders::Always)
        .build_metered()
        .unwrap();
    let mut service = layer.layer(Drain::default());
    let recorded = |request: &mut Request<GrpcBody>| {
        Rpc::get_or_insert(request.extensions_mut(), Side::Server).clone()
    };
    // The call's token pays the first message, the bucket's last token the second; the
    // third finds none, before the handler answers.
    let mut request = stream(messages(3));
    let record = recorded(&mut request);
    let response = call(&mut service, request).await;
    assert_eq!(response.headers()["grpc-status"], "8");
    // The cut's rejection as it is: its bucket's numbers, not those of the call's admission.
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(record.rejected_by(), Some("ratelimit"));

    // Refused at the door.
    let mut request = stream(messages(1));
    let record = recorded(&mut request);
    let response = call(&mut service, request).await;
    assert_eq!(response.headers()["grpc-status"], "8");
    assert_eq!(record.rejected_by(), Some("ratelimit"));
}

#[tokio::test(start_paused = true)]
async fn messages_are_counted_across_any_frame_split() {
    let drain = Drain::default();
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 3)).per_message())
        .build_metered()
        .unwrap();
    let mut service = layer.layer(drain.clone());
    // Five messages, cut into frames at odd places.
    let all: Vec<u8> = messages(5).iter().flat_map(|m| m.to_vec()).collect();
    let frames = all
        .chunks(3)
        .map(Bytes::copy_from_slice)
        .collect::<Vec<_>>();
    let response = call(&mut service, stream(frames)).await;
    let seen = drain.seen.lock().unwrap().clone();
    assert_eq!(seen.error.map(|e| e.0), Some(Code::ResourceExhausted));
    // Frames completing messages 1 to 3 got through (the first bytes of message 4 may too).
    assert_eq!(seen.messages, 3);
    assert_eq!(response.headers()["grpc-status"], "8");
}

#[tokio::test(start_paused = true)]
async fn streams_within_their_tokens_and_limits_without_per_message_are_untouched() {
    let drain = Drain::default();
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 3)))
        .limit(Limit::global(quota(1, 100)).per_message())
        .build_metered()
        .unwrap();
    let mut service = layer.layer(drain.clone());
    for _ in 0..3 {
        let response = call(&mut service, stream(messages(20))).await;
        assert!(response.headers().get("grpc-status").is_none());
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let seen = drain.seen.lock().unwrap().clone();
        assert_eq!((seen.messages, seen.error), (20, None));
    }
}

/// A bidi handler: answers at once (its response stream has started) and leaves the request
/// stream to the test.
struct Stash<B> {
    body: Arc<Mutex<Option<B>>>,
}

impl<B> Stash<B> {
    fn new() -> Self {
        Self {
            body: Arc::default(),
        }
    }
}

impl<B> Clone for Stash<B> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
        }
    }
}

impl<B: Send + 'static> Service<Request<B>> for Stash<B> {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<GrpcBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        *self.body.lock().unwrap() = Some(request.into_body());
        std::future::ready(Ok(Response::new(GrpcBody::unary(b"hi", Code::Ok))))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_after_the_response_started_ends_with_the_rejection_in_its_trailers() {
    let stash = Stash::new();
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 2)).per_message())
        .build_metered()
        .unwrap();
    let mut service = layer.layer(stash.clone());
    let response = call(&mut service, stream(messages(5))).await;
    assert!(
        response.headers().get("grpc-status").is_none(),
        "the response has started"
    );
    let body = stash.body.lock().unwrap().take().unwrap();
    let error = body.collect().await.unwrap_err();
    assert_eq!(
        tonic::Status::from_error(error).code(),
        Code::ResourceExhausted
    );
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().unwrap();
    assert_eq!(trailers["grpc-status"], "8");
    assert_eq!(trailers["grpc-message"], "rate limit exceeded");
    assert!(trailers.get("grpc-retry-pushback-ms").is_some());
}

#[test]
fn per_message_limits_need_a_metered_layer() {
    let error = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 2)).per_message())
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        palisade_ratelimit::ConfigError::PerMessageNeedsMetered
    );
    assert!(error.to_string().contains("build_metered()"));
    let error = RateLimitLayer::client()
        .limit(Limit::global(quota(1, 2)).per_message())
        .build()
        .unwrap_err();
    assert_eq!(
        error,
        palisade_ratelimit::ConfigError::PerMessageNeedsMetered
    );
    assert_eq!(
        RateLimitLayer::server().build().unwrap_err(),
        palisade_ratelimit::ConfigError::NoLimit
    );
    assert!(
        RateLimitLayer::server()
            .limit(Limit::global(quota(1, 2)).per_message())
            .build_metered()
            .is_ok()
    );
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_never_cuts_a_stream() {
    let (recorder, snapshotter) = recorder();
    let drain = Drain::default();
    let layer = RateLimitLayer::server()
        .limit(Limit::global(quota(1, 2)).per_message())
        .shadow(true)
        .recorder(recorder)
        .build_metered()
        .unwrap();
    let mut service = layer.layer(drain.clone());
    let response = call(&mut service, stream(messages(10))).await;
    assert!(response.headers().get("grpc-status").is_none());
    let seen = drain.seen.lock().unwrap().clone();
    assert_eq!((seen.messages, seen.error), (10, None));
    let counters = Counters::take(&snapshotter);
    assert_eq!(
        counters.get(REJECTED_TOTAL, &[]),
        1,
        "counted once per stream"
    );
}

/// A handler that reads the request stream for 10 ms at most, then drops it and answers OK.
#[derive(Clone, Default)]
struct Impatient;

impl<B> Service<Request<B>> for Impatient
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(async move {
            let body = request.into_body();
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(10), body.collect()).await;
            Ok(Response::new(GrpcBody::unary(b"done", Code::Ok)))
        })
    }
}

/// A stream dropped while paying for a message (a later per-message limit's backend has not
/// answered) never delivers it: the earlier limits' tokens for it go back.
#[tokio::test(start_paused = true)]
async fn a_stream_dropped_while_paying_for_a_message_gives_its_tokens_back() {
    let gate = Gated::default();
    gate.open();
    let layer = RateLimitLayer::server()
        .backend(gate.clone())
        .limit(Limit::global(per_hour(2)).per_message().named("first"))
        .limit(Limit::global(per_hour(9)).per_message().named("gate"))
        .build_metered()
        .unwrap();
    let mut service = layer.layer(Impatient);
    // The call pays its first message at the door (the gate open); the second takes the first
    // limit's last token, then waits on the gate (closed) until the handler gives up.
    let pending = service.call(stream(messages(2)));
    gate.close();
    let response = pending.await.unwrap();
    assert_eq!(response.headers().get("grpc-status"), None, "answered OK");
    gate.open();
    let response = call(&mut service, stream(messages(1))).await;
    assert_eq!(
        response.headers().get("grpc-status"),
        None,
        "the first limit's token came back"
    );
}
