//! Over the wire: a real tonic server on 127.0.0.1:0 and a tonic client through the layer.

use std::{
    future::{Ready, ready},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{StreamExt, future::Either};
use http::{Request, Response};
use palisade_breaker::{Backoff, BreakerLayer, State, Transition};
use palisade_core::{Code, Matcher, Side, reject, side::Server};
use palisade_demo::{
    SAY_HELLO,
    pb::{HelloRequest, greeter_client::GreeterClient},
    spawn,
};
use tower::{Layer, Service, ServiceBuilder};

/// A server-side switch: while `down`, every call is answered `UNAVAILABLE` by the "backend".
#[derive(Clone, Default)]
struct Outage {
    down: Arc<AtomicBool>,
    hellos: Arc<AtomicUsize>,
}

impl Outage {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// `SayHello` calls that reached the server.
    fn hellos(&self) -> usize {
        self.hellos.load(Ordering::SeqCst)
    }
}

impl<S> Layer<S> for Outage {
    type Service = OutageService<S>;

    fn layer(&self, inner: S) -> OutageService<S> {
        OutageService {
            inner,
            outage: self.clone(),
        }
    }
}

#[derive(Clone)]
struct OutageService<S> {
    inner: S,
    outage: Outage,
}

impl<S, B> Service<Request<B>> for OutageService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.uri().path() == SAY_HELLO {
            self.outage.hellos.fetch_add(1, Ordering::SeqCst);
        }
        if self.outage.down.load(Ordering::SeqCst) {
            Either::Left(ready(Ok(reject(Code::Unavailable, "backend down"))))
        } else {
            Either::Right(self.inner.call(request))
        }
    }
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_tonic_client_sees_the_circuit_open_in_an_outage_and_close_after_recovery() {
    let outage = Outage::default();
    let server = spawn(outage.clone()).await;
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let breaker = BreakerLayer::client()
        .name("greeter")
        .consecutive_failures(3)
        .backoff(Backoff::constant(Duration::from_secs(5)))
        .on_state_change({
            let transitions = transitions.clone();
            move |t: &Transition<'_>| transitions.lock().unwrap().push((t.from, t.to))
        })
        .build();
    let channel = ServiceBuilder::new()
        .layer(breaker.clone())
        .service(server.channel().await);
    let mut client = GreeterClient::new(channel);

    assert_eq!(
        client.say_hello(hello()).await.unwrap().get_ref().message,
        "Hello, Ada!"
    );

    // The backend goes down: three UNAVAILABLE answers from the server open the circuit.
    outage.set_down(true);
    for _ in 0..3 {
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "backend down")
        );
    }
    assert_eq!(breaker.state("greeter"), Some(State::Open));
    assert_eq!(outage.hellos(), 4);

    // Open: the client answers itself, the server sees nothing.
    for _ in 0..20 {
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "circuit open")
        );
    }
    assert_eq!(outage.hellos(), 4);

    // Still down at the first probe: it reopens.
    tokio::time::advance(Duration::from_secs(5)).await;
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.message(), "backend down");
    assert_eq!(breaker.state("greeter"), Some(State::Open));
    assert_eq!(outage.hellos(), 5);

    // The backend recovers; after the backoff the probe succeeds and the circuit closes.
    outage.set_down(false);
    assert_eq!(
        client.say_hello(hello()).await.unwrap_err().message(),
        "circuit open"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..5 {
        assert_eq!(
            client.say_hello(hello()).await.unwrap().get_ref().message,
            "Hello, Ada!"
        );
    }
    assert_eq!(breaker.state("greeter"), Some(State::Closed));
    assert_eq!(outage.hellos(), 10);
    assert_eq!(
        *transitions.lock().unwrap(),
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_counts_when_it_ends_with_its_trailers() {
    let server = spawn(tower::layer::util::Identity::new()).await;
    let breaker = BreakerLayer::client()
        .name("greeter")
        .consecutive_failures(2)
        .build();
    let mut client = GreeterClient::new(breaker.layer(server.channel().await));
    // Three replies, then UNAVAILABLE in the trailers: the headers said nothing yet.
    let failing = HelloRequest {
        count: 3,
        fail_code: Code::Unavailable as i32,
        ..hello()
    };
    for _ in 0..2 {
        let mut stream = client
            .say_hello_stream(failing.clone())
            .await
            .unwrap()
            .into_inner();
        for _ in 0..3 {
            assert_eq!(stream.next().await.unwrap().unwrap().message, "Hello, Ada!");
            assert_eq!(breaker.state("greeter"), Some(State::Closed));
        }
        assert_eq!(
            stream.next().await.unwrap().unwrap_err().code(),
            Code::Unavailable
        );
    }
    assert_eq!(breaker.state("greeter"), Some(State::Open));
}

#[tokio::test(start_paused = true)]
async fn transport_errors_open_the_client_circuit() {
    let server = spawn(tower::layer::util::Identity::new()).await;
    let breaker = BreakerLayer::client()
        .name("greeter")
        .consecutive_failures(2)
        .build();
    let mut client = GreeterClient::new(breaker.layer(server.channel().await));
    assert!(client.say_hello(hello()).await.is_ok());
    server.shutdown().await;
    for _ in 0..2 {
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_ne!(status.message(), "circuit open");
    }
    assert_eq!(breaker.state("greeter"), Some(State::Open));
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "circuit open")
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_sheds_one_failing_method_and_serves_the_others() {
    let outage = Outage::default();
    // A server keyed by method names its methods: each has its circuit from the start.
    let registry = palisade_core::MethodRegistry::from_encoded_file_descriptor_set(
        palisade_demo::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    let breaker = BreakerLayer::server()
        .per_method()
        .registry(registry)
        .skip(Matcher::health_and_reflection())
        .consecutive_failures(2)
        .build();
    // The breaker sits outside the outage switch, so it sees the failures and shields the
    // handler behind it.
    let server = spawn(
        ServiceBuilder::new()
            .layer(breaker.clone())
            .layer(outage.clone()),
    )
    .await;
    let mut client = server.client().await;
    let failing = HelloRequest {
        fail_code: Code::Internal as i32,
        ..hello()
    };
    for _ in 0..2 {
        let status = client.say_hello(failing.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
    }
    assert_eq!(
        breaker.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Open)
    );
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "circuit open")
    );
    assert_eq!(outage.hellos(), 2);

    // Another method of the same service still works.
    let replies: Vec<_> = client
        .say_hello_stream(HelloRequest {
            count: 2,
            ..hello()
        })
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    assert_eq!(replies.len(), 2);
    assert!(replies.iter().all(Result::is_ok));
    assert_eq!(
        breaker.state("palisade.demo.v1.Greeter/SayHelloStream"),
        Some(State::Closed)
    );
}

fn quota_of(rate: u32, burst: u32, per_hour: bool) -> palisade_ratelimit::Quota {
    let rate = std::num::NonZeroU32::new(rate).unwrap();
    let quota = if per_hour {
        palisade_ratelimit::Quota::per_hour(rate)
    } else {
        palisade_ratelimit::Quota::per_second(rate)
    };
    quota.with_burst(std::num::NonZeroU32::new(burst).unwrap())
}

#[tokio::test(start_paused = true)]
async fn the_clients_own_rate_limiter_never_opens_its_breaker() {
    let server = spawn(tower::layer::util::Identity::new()).await;
    // The default failure codes, and codes that include the limiter's own code: a rejection
    // made by a Palisade layer is never the backend's failure, whatever its code.
    for failures in [
        palisade_breaker::DEFAULT_FAILURE_CODES,
        palisade_breaker::DEFAULT_FAILURE_CODES.with(Code::ResourceExhausted),
    ] {
        let breaker = BreakerLayer::client()
            .name("greeter")
            .consecutive_failures(3)
            .failure_codes(failures)
            .build();
        let limiter = palisade_ratelimit::RateLimitLayer::client()
            .limit(palisade_ratelimit::Limit::global(quota_of(1, 1, false)))
            .max_wait(Duration::ZERO)
            .build()
            .unwrap();
        // The recommended client order: the breaker outside the rate limiter.
        let channel = ServiceBuilder::new()
            .layer(breaker.clone())
            .layer(limiter)
            .service(server.channel().await);
        let mut client = GreeterClient::new(channel);
        assert!(client.say_hello(hello()).await.is_ok());
        for _ in 0..3 {
            let status = client.say_hello(hello()).await.unwrap_err();
            assert_eq!(status.code(), Code::ResourceExhausted);
        }
        assert_eq!(breaker.state("greeter"), Some(State::Closed));
    }
}

#[tokio::test(start_paused = true)]
async fn a_servers_quota_answers_do_not_open_the_clients_breaker() {
    let limit = palisade_ratelimit::RateLimitLayer::server()
        .limit(palisade_ratelimit::Limit::global(quota_of(1, 1, true)))
        .build()
        .unwrap();
    let server = spawn(limit).await;
    let breaker = BreakerLayer::client()
        .name("greeter")
        .consecutive_failures(3)
        .build();
    let mut client = GreeterClient::new(breaker.layer(server.channel().await));
    assert!(client.say_hello(hello()).await.is_ok());
    for _ in 0..3 {
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    }
    assert_eq!(breaker.state("greeter"), Some(State::Closed));
}

use palisade_demo::raw::Raw;

/// One unary call of `path` carrying `body` as its message, unchecked.
async fn raw_call(
    channel: tonic::transport::Channel,
    path: &str,
    body: &'static [u8],
) -> Result<bytes::Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path.to_owned()).unwrap();
    grpc.unary(
        tonic::Request::new(bytes::Bytes::from_static(body)),
        path,
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

fn server_breaker() -> palisade_breaker::BreakerBuilder<Server> {
    BreakerLayer::server()
        .name("greeter")
        .consecutive_failures(3)
        .backoff(Backoff::constant(Duration::from_secs(30)))
}

#[tokio::test(start_paused = true)]
async fn malformed_request_bodies_do_not_open_a_server_breaker() {
    let breaker = server_breaker().build();
    let server = spawn(breaker.clone()).await;
    let channel = server.channel().await;
    // Field 1 announces 5 bytes and brings 1: tonic's decode error, answered INTERNAL.
    for _ in 0..3 {
        let status = raw_call(channel.clone(), SAY_HELLO, &[0x0a, 0x05, b'a'])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
    }
    assert_eq!(breaker.state("greeter"), Some(State::Closed));
    let mut client = GreeterClient::new(channel);
    assert_eq!(
        client.say_hello(hello()).await.unwrap().get_ref().message,
        "Hello, Ada!"
    );
}

/// Tells a channel of the end of every call it wraps (inside the breaker: the breaker has
/// counted a call by the time this end arrives).
#[derive(Clone)]
struct Ends(tokio::sync::mpsc::UnboundedSender<Code>);

impl palisade_core::Observer for Ends {
    fn on_end(self, outcome: palisade_core::Outcome, _: palisade_core::Counts) {
        let _ = self.0.send(outcome.code());
    }
}

impl<S> Layer<S> for Ends {
    type Service = EndsService<S>;

    fn layer(&self, inner: S) -> EndsService<S> {
        EndsService(inner, self.clone())
    }
}

#[derive(Clone)]
struct EndsService<S>(S, Ends);

impl<S, B, R> Service<Request<B>> for EndsService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    R: http_body::Body,
    S::Error: 'static,
{
    type Response = Response<palisade_core::ObservedBody<R, Ends>>;
    type Error = S::Error;
    type Future = palisade_core::ObservedFuture<S::Future, Ends>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        palisade_core::ObservedFuture::new(self.0.call(request), Side::Server, self.1.clone())
    }
}

#[tokio::test(start_paused = true)]
async fn a_callers_short_deadline_does_not_open_a_server_breaker() {
    let breaker = server_breaker().build();
    let (tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let server = spawn(ServiceBuilder::new().layer(breaker.clone()).layer(Ends(tx))).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        let mut request = tonic::Request::new(HelloRequest {
            delay_ms: 60_000,
            ..hello()
        });
        request.set_timeout(Duration::from_millis(1));
        let status = client.say_hello(request).await.unwrap_err();
        assert_ne!(status.message(), "circuit open");
        // The server dropped the call: the breaker has seen it end.
        assert_eq!(ends.recv().await, Some(Code::Cancelled));
    }
    assert_eq!(breaker.state("greeter"), Some(State::Closed));
    assert_eq!(
        client.say_hello(hello()).await.unwrap().get_ref().message,
        "Hello, Ada!"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_random_paths_leaves_real_methods_their_circuits() {
    let breaker = server_breaker().per_method().max_breakers(4).build();
    let server = spawn(breaker.clone()).await;
    let channel = server.channel().await;
    for i in 0..50 {
        let status = raw_call(channel.clone(), &format!("/junk{i}.Service/Method"), b"")
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }
    let mut client = GreeterClient::new(channel);
    // A method in steady use earns its circuit within its first calls.
    for _ in 0..palisade_core::slots::ADMISSION_THRESHOLD {
        assert!(client.say_hello(hello()).await.is_ok());
    }
    assert_eq!(
        breaker.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Closed),
        "{:?}",
        breaker.states()
    );
    assert_eq!(breaker.states().len(), 2, "{:?}", breaker.states());
    // Its circuit is its own: failures of SayHello open it, and the flood cannot evict it.
    let failing = HelloRequest {
        fail_code: Code::Unavailable as i32,
        ..hello()
    };
    for _ in 0..3 {
        client.say_hello(failing.clone()).await.unwrap_err();
    }
    let channel = server.channel().await;
    for i in 50..100 {
        raw_call(channel.clone(), &format!("/junk{i}.Service/Method"), b"")
            .await
            .unwrap_err();
    }
    assert_eq!(
        breaker.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Open)
    );
    let status = client.say_hello(hello()).await.unwrap_err();
    assert_eq!(status.message(), "circuit open");
}

#[test]
fn server_and_client_builders_set_the_side() {
    let server = format!("{:?}", BreakerLayer::server());
    let client = format!("{:?}", BreakerLayer::client());
    assert!(server.contains("side: Server"), "{server}");
    assert!(client.contains("side: Client"), "{client}");
    // And the layers they build.
    let layer = format!("{:?}", BreakerLayer::server().build());
    assert!(layer.contains("side: Server"), "{layer}");
}

/// A call of `SayHello` that waits `delay_ms` in its handler, with a `deadline`.
fn slow_hello(delay_ms: u32, fail_code: Code, deadline: Duration) -> tonic::Request<HelloRequest> {
    let mut request = tonic::Request::new(HelloRequest {
        delay_ms,
        fail_code: fail_code as i32,
        ..hello()
    });
    request.set_timeout(deadline);
    request
}

#[tokio::test(start_paused = true)]
async fn a_hung_dependency_opens_the_server_breaker_though_every_caller_has_a_deadline() {
    let breaker = server_breaker().build();
    let (tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let server = spawn(ServiceBuilder::new().layer(breaker.clone()).layer(Ends(tx))).await;
    let mut client = server.client().await;
    // The handlers never finish in time; each caller gives up after 2 s, and tonic drops
    // the call at its grpc-timeout.
    for _ in 0..3 {
        let request = slow_hello(3_600_000, Code::Ok, Duration::from_secs(2));
        let status = client.say_hello(request).await.unwrap_err();
        assert_ne!(status.message(), "circuit open");
        assert_eq!(ends.recv().await, Some(Code::Cancelled));
    }
    assert_eq!(breaker.state("greeter"), Some(State::Open));
    let status = client
        .say_hello(slow_hello(0, Code::Ok, Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "circuit open")
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_exceeded_answer_fails_a_server_breaker_only_past_the_minimum() {
    let breaker = server_breaker()
        .min_deadline_failure(Duration::from_millis(500))
        .build();
    let (tx, mut ends) = tokio::sync::mpsc::unbounded_channel();
    let server = spawn(ServiceBuilder::new().layer(breaker.clone()).layer(Ends(tx))).await;
    let mut client = server.client().await;
    // A handler that passed the caller's deadline on, and answers DEADLINE_EXCEEDED after
    // 10 ms: the caller's short deadline, not the server's failure.
    for _ in 0..5 {
        let request = slow_hello(10, Code::DeadlineExceeded, Duration::from_secs(60));
        let status = client.say_hello(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(ends.recv().await, Some(Code::DeadlineExceeded));
    }
    assert_eq!(breaker.state("greeter"), Some(State::Closed));
    // After 600 ms, past the minimum: the dependency is slow, the server fails.
    for _ in 0..3 {
        let request = slow_hello(600, Code::DeadlineExceeded, Duration::from_secs(60));
        let status = client.say_hello(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(ends.recv().await, Some(Code::DeadlineExceeded));
    }
    assert_eq!(breaker.state("greeter"), Some(State::Open));
}

/// tonic's exact answers to requests it cannot decode: the breaker recognises them by these
/// messages, so a tonic release that changes them must fail here.
#[tokio::test(start_paused = true)]
async fn tonics_request_decode_answers_are_pinned() {
    let breaker = server_breaker().consecutive_failures(1).build();
    let server = spawn(breaker.clone()).await;
    let channel = server.channel().await;
    // Field 1 announces 5 bytes and brings 1.
    let status = raw_call(channel.clone(), SAY_HELLO, &[0x0a, 0x05, b'a'])
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Internal,
            "failed to decode Protobuf message: HelloRequest.name: buffer underflow"
        )
    );
    // A unary method called with no request message at all.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let status = grpc
        .client_streaming::<_, bytes::Bytes, bytes::Bytes, _>(
            tonic::Request::new(futures_util::stream::empty()),
            http::uri::PathAndQuery::from_static(SAY_HELLO),
            Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Internal, "Missing request message.")
    );
    // Both recognised: one failure would have opened this circuit.
    assert_eq!(breaker.state("greeter"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn request_decode_errors_count_when_the_option_is_off() {
    let breaker = server_breaker().ignore_request_decode_errors(false).build();
    let server = spawn(breaker.clone()).await;
    let channel = server.channel().await;
    for _ in 0..3 {
        let status = raw_call(channel.clone(), SAY_HELLO, &[0x0a, 0x05, b'a'])
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal);
    }
    assert_eq!(breaker.state("greeter"), Some(State::Open));
}
