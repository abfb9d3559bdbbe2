//! Over a real tonic server on 127.0.0.1:0: what a tonic client sees.

mod common;

use std::{num::NonZeroU32, time::Duration};

use common::{Counters, recorder};
use palisade_core::Code;
use palisade_core::admit;
use palisade_demo::{pb::HelloRequest, spawn};
use palisade_metrics::MetricsLayer;
use palisade_ratelimit::RateLimitAdmission;
use palisade_ratelimit::{
    Key, Limit, Matcher, Quota, REJECTED_TOTAL, RateLimitHeaders, RateLimitLayer,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tower::{ServiceBuilder, util::Either, util::MapResponseLayer};

/// `n` calls a minute, bursts of `n`: no token comes back during a test.
fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap())
}

/// The demo's methods, as a server is given them.
fn registry() -> palisade_core::MethodRegistry {
    palisade_core::MethodRegistry::from_encoded_file_descriptor_set(
        palisade_demo::FILE_DESCRIPTOR_SET,
    )
    .expect("the demo's descriptors")
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_tonic_client_sees_resource_exhausted_with_the_pushback() {
    let layer = RateLimitLayer::server()
        .limit(Limit::per_key(Key::peer_ip(), per_minute(2)))
        .skip(Matcher::health_and_reflection())
        .build()
        .unwrap();
    let server = spawn(layer).await;
    let mut client = server.client().await;
    for _ in 0..2 {
        let reply = client.say_hello(hello()).await.unwrap();
        assert_eq!(reply.get_ref().message, "Hello, Ada!");
    }
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // The next token of a 2-per-minute bucket is at most 30 s away.
    assert!((1..=30_000).contains(&pushback), "{pushback}");
    // No x-ratelimit-* unless asked for.
    assert!(status.metadata().get("x-ratelimit-remaining").is_none());

    // Skipped health checks are never limited.
    let mut health = HealthClient::new(server.channel().await);
    for _ in 0..5 {
        let response = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(response.get_ref().status, 1, "SERVING");
    }
}

#[tokio::test]
async fn the_code_is_configurable_and_x_ratelimit_headers_are_optional() {
    let layer = RateLimitLayer::server()
        .limit(Limit::global(per_minute(3)))
        .code(Code::Unavailable)
        .message("slow down")
        .headers(RateLimitHeaders::Always)
        .build()
        .unwrap();
    let server = spawn(layer).await;
    let mut client = server.client().await;
    for remaining in ["2", "1", "0"] {
        let reply = client.say_hello(hello()).await.unwrap();
        assert_eq!(reply.metadata().get("x-ratelimit-limit").unwrap(), "3");
        assert_eq!(
            reply.metadata().get("x-ratelimit-remaining").unwrap(),
            remaining
        );
        let reset: u64 = reply
            .metadata()
            .get("x-ratelimit-reset")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
    }
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "slow down");
    assert_eq!(status.metadata().get("x-ratelimit-remaining").unwrap(), "0");
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
}

#[tokio::test]
async fn every_rejected_call_is_one_resource_exhausted_in_palisade_metrics_outside() {
    let (recorder, snapshotter) = recorder();
    // Servers are given the registry: their methods' series are theirs from the first call.
    let metrics = MetricsLayer::server()
        .registry(registry())
        .recorder(recorder.clone())
        .build();
    let ratelimit = RateLimitLayer::server()
        .limit(Limit::global(per_minute(4)))
        .registry(registry())
        .recorder(recorder)
        .build()
        .unwrap();
    let server = spawn(ServiceBuilder::new().layer(metrics).layer(ratelimit)).await;
    let mut client = server.client().await;
    let mut rejected = 0;
    for _ in 0..11 {
        match client.say_hello(hello()).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                rejected += 1;
            }
        }
    }
    assert_eq!(rejected, 7);
    let method = [
        ("grpc_service", "palisade.demo.v1.Greeter"),
        ("grpc_method", "SayHello"),
    ];
    let counters = Counters::take(&snapshotter);
    let handled = |code| {
        counters.get(
            "grpc_server_handled_total",
            &[method[0], method[1], ("grpc_code", code)],
        )
    };
    assert_eq!(handled("ResourceExhausted"), 7);
    assert_eq!(handled("OK"), 4);
    assert_eq!(counters.get(REJECTED_TOTAL, &method), 7);
    assert_eq!(counters.get("palisade_ratelimit_allowed_total", &method), 4);
}

#[tokio::test]
async fn the_client_layer_fails_at_once_without_sending() {
    let (recorder, snapshotter) = recorder();
    // The server counts what reaches it.
    let server = spawn(
        MetricsLayer::server()
            .registry(registry())
            .recorder(recorder.clone())
            .build(),
    )
    .await;
    let channel = ServiceBuilder::new()
        .layer(
            RateLimitLayer::client()
                .limit(Limit::global(per_minute(2)))
                .max_wait(Duration::from_millis(100))
                .recorder(recorder)
                .build()
                .unwrap(),
        )
        .service(server.channel().await);
    let mut client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
    client.say_hello(hello()).await.unwrap();
    client.say_hello(hello()).await.unwrap();
    // The next token is 30 s away, past the 100 ms the layer waits.
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    let method = [
        ("grpc_service", "palisade.demo.v1.Greeter"),
        ("grpc_method", "SayHello"),
    ];
    let counters = Counters::take(&snapshotter);
    assert_eq!(counters.get("grpc_server_started_total", &method), 2);
    let client_side = [method[0], method[1], ("grpc_component", "client")];
    assert_eq!(counters.get(REJECTED_TOTAL, &client_side), 1);
    assert_eq!(
        counters.get("palisade_ratelimit_allowed_total", &client_side),
        2
    );
}

/// The lead's `server` example wiring, as a test: `--rate`, `--burst`, `--rate-key`.
#[tokio::test]
async fn rate_flags_as_the_server_example_wires_them() {
    fn layer(rate: u32, burst: u32, rate_key: &str) -> Option<RateLimitLayer> {
        let rate = NonZeroU32::new(rate)?;
        let quota =
            Quota::per_second(rate).with_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let limit = match rate_key {
            "global" => Limit::global(quota),
            "peer" => Limit::per_key(Key::peer_ip(), quota),
            "subject" => Limit::per_key(
                Key::extension(|subject: &Subject| {
                    Some(palisade_ratelimit::KeyValue::from(subject.0.as_str()))
                }),
                quota,
            ),
            other => match other.strip_prefix("metadata:").map(Key::try_metadata) {
                Some(Ok(key)) => Limit::per_key(key, quota),
                _ => panic!("--rate-key: global, peer, subject or metadata:NAME"),
            },
        };
        Some(RateLimitLayer::server().limit(limit).build().unwrap())
    }
    /// The layer in the stack, or (`--rate 0`) the service as it is, its responses' bodies in
    /// the layer's type (`admit::ResponseBody::passed`), so that the stack has one type.
    fn in_stack(layer: Option<RateLimitLayer>) -> Either<RateLimitLayer, MapResponseLayer<Passed>> {
        match layer {
            Some(layer) => Either::Left(layer),
            None => Either::Right(MapResponseLayer::new(|response: http::Response<_>| {
                response.map(admit::ResponseBody::passed)
            })),
        }
    }
    type Passed = fn(
        http::Response<tonic::body::Body>,
    )
        -> http::Response<admit::ResponseBody<tonic::body::Body, RateLimitAdmission>>;
    #[derive(Clone)]
    struct Subject(String);

    assert!(layer(0, 1, "global").is_none(), "--rate 0 is off");
    // Off, in the stack.
    let server = spawn(in_stack(layer(0, 1, "global"))).await;
    let mut client = server.client().await;
    for _ in 0..5 {
        client.say_hello(hello()).await.unwrap();
    }
    for key in ["global", "peer", "subject", "metadata:x-api-key"] {
        let server = spawn(in_stack(layer(1, 2, key))).await;
        let mut client = server.client().await;
        client.say_hello(hello()).await.unwrap();
        client.say_hello(hello()).await.unwrap();
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{key}");
    }
}

/// A subject some earlier layer (palisade-jwt, in the server example) put into the
/// extensions: here a stand-in reading `x-sub`.
#[derive(Clone)]
struct Claims {
    sub: String,
}

fn with_claims(mut request: http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> {
    if let Some(sub) = request.headers().get("x-sub").and_then(|v| v.to_str().ok()) {
        let sub = sub.to_owned();
        request.extensions_mut().insert(Claims { sub });
    }
    request
}

#[tokio::test]
async fn per_subject_limits_read_what_an_earlier_layer_put_in_the_extensions() {
    let subject = Key::extension(|claims: &Claims| {
        Some(palisade_ratelimit::KeyValue::from(claims.sub.as_str()))
    });
    let ratelimit = RateLimitLayer::server()
        .limit(
            Limit::per_key(subject, per_minute(1)).when_keyless(palisade_ratelimit::NoKey::Reject),
        )
        .build()
        .unwrap();
    let stack = ServiceBuilder::new()
        .map_request(with_claims as fn(_) -> _)
        .layer(ratelimit);
    let server = spawn(stack).await;
    let mut client = server.client().await;
    let as_subject = |sub: &'static str| {
        let mut request = tonic::Request::new(hello());
        request.metadata_mut().insert("x-sub", sub.parse().unwrap());
        request
    };
    client.say_hello(as_subject("ada")).await.unwrap();
    client.say_hello(as_subject("grace")).await.unwrap();
    for sub in ["ada", "grace"] {
        let status = client.say_hello(as_subject(sub)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{sub}");
    }
    // No subject: refused, with "do not retry".
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "-1"
    );
}

use palisade_demo::raw::Raw;

/// A bidi handler, `/test.Chat/Talk`: answers one message at once (the response has started),
/// reads its request stream to the end or to its error, then fails with rich details
/// (`grpc-status-details-bin`) in its trailers.
#[derive(Clone, Debug)]
struct Chat;

const TALK: &str = "/test.Chat/Talk";
const HANDLER_DETAILS: &[u8] = b"the handler's own details";

impl tonic::server::NamedService for Chat {
    const NAME: &'static str = "test.Chat";
}

impl tower::Service<http::Request<tonic::body::Body>> for Chat {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        use http_body_util::BodyExt;
        type Frame = Result<http_body::Frame<bytes::Bytes>, tonic::Status>;
        let (tx, rx) = tokio::sync::mpsc::channel::<Frame>(4);
        tokio::spawn(async move {
            let mut body = request.into_body();
            let first = palisade_demo::frames::message(b"first");
            let _ = tx.send(Ok(http_body::Frame::data(first))).await;
            while let Some(Ok(_)) = body.frame().await {}
            let mut trailers = http::HeaderMap::new();
            tonic::Status::with_details(
                tonic::Code::Internal,
                "the handler failed",
                bytes::Bytes::from_static(HANDLER_DETAILS),
            )
            .add_header(&mut trailers)
            .unwrap();
            let _ = tx.send(Ok(http_body::Frame::trailers(trailers))).await;
        });
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(frames));
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        std::future::ready(Ok(response))
    }
}

/// Item 8 over the wire: a bidi stream cut by the metered rate limiter, after its handler put
/// rich details in its trailers, reaches a tonic client as RESOURCE_EXHAUSTED with no details
/// (`Status::details()` empty) — not the rejection's code beside the handler's stale details.
#[tokio::test]
async fn a_stream_cut_by_the_metered_limiter_carries_no_stale_details() {
    let layer = RateLimitLayer::server()
        .limit(Limit::global(per_minute(2)).per_message())
        .build_metered()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Chat)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let talk = |messages: usize| {
        let stream = futures_util::stream::iter(
            (0..messages).map(|i| bytes::Bytes::from(format!("message {i}"))),
        );
        tonic::Request::new(stream)
    };

    // Within its tokens (the call's own): the client decodes the handler's details.
    grpc.ready().await.unwrap();
    let mut replies = grpc
        .streaming(talk(1), http::uri::PathAndQuery::from_static(TALK), Raw)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap(), "first");
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(
        status.details(),
        HANDLER_DETAILS,
        "the details reach the client"
    );

    // The second call takes the last token; its second message finds none: cut.
    grpc.ready().await.unwrap();
    let mut replies = grpc
        .streaming(talk(5), http::uri::PathAndQuery::from_static(TALK), Raw)
        .await
        .expect("the response started")
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap(), "first");
    let status = replies.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "rate limit exceeded");
    assert!(status.details().is_empty(), "stale details: {status:?}");
    assert!(
        status
            .metadata()
            .get_bin("grpc-status-details-bin")
            .is_none(),
        "{status:?}"
    );
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
