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
use palisade_core::{Code, Matcher, Side, reject};
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
    let breaker = BreakerLayer::builder()
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
    let breaker = BreakerLayer::builder()
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
    let breaker = BreakerLayer::builder()
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
    let breaker = BreakerLayer::builder()
        .side(Side::Server)
        .per_method()
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
