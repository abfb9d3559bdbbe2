//! Keyed circuits: per method, per endpoint, per custom key, earned by frequency admission and
//! bounded in number for good; skipping.

mod support;

use std::{
    borrow::Cow,
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderValue, Request};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use palisade_breaker::{BreakerLayer, OVERFLOW_BREAKER, State};
use palisade_core::{Code, Matcher, side::Client, slots::ADMISSION_THRESHOLD};
use support::{Backend, Reply, call, open, request};
use tower::Layer;

const BYE: &str = "/palisade.demo.v1.Greeter/SayBye";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

fn builder() -> palisade_breaker::BreakerBuilder<Client> {
    BreakerLayer::client()
        .consecutive_failures(1)
        .backoff(palisade_breaker::Backoff::constant(Duration::from_secs(1)))
}

/// Enough successful calls for a key in steady use to earn its circuit.
async fn earn<S, B>(service: &S, request: impl Fn() -> Request<()>)
where
    S: tower::Service<Request<()>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Display,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    for _ in 0..ADMISSION_THRESHOLD {
        assert_eq!(call(service, request()).await.0, Code::Ok);
    }
}

#[tokio::test(start_paused = true)]
async fn per_method_circuits_are_independent() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder().per_method().build();
    let service = layer.layer(backend.clone());
    earn(&service, || request(support::HELLO)).await;
    earn(&service, || request(BYE)).await;
    backend.set(Reply::Unary(Code::Unavailable));
    call(&service, request(support::HELLO)).await;
    assert_eq!(
        layer.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Open)
    );
    assert_eq!(call(&service, request(support::HELLO)).await, open());

    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, request(BYE)).await.0, Code::Ok);
    let states = layer.states();
    assert!(
        states.contains(&("palisade.demo.v1.Greeter/SayBye".to_owned(), State::Closed))
            && states.contains(&("palisade.demo.v1.Greeter/SayHello".to_owned(), State::Open)),
        "{states:?}"
    );
    assert_eq!(backend.calls(), 18);
}

#[tokio::test(start_paused = true)]
async fn per_authority_reads_the_uri_then_the_host_header() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder().per_authority().build();
    let service = layer.layer(backend.clone());
    let absolute = |authority: &str| request(&format!("http://{authority}{}", support::HELLO));
    let with_host = || {
        let mut with_host = request(support::HELLO);
        with_host
            .headers_mut()
            .insert("host", HeaderValue::from_static("b.internal:50051"));
        with_host
    };
    earn(&service, || absolute("a.internal:50051")).await;
    earn(&service, with_host).await;
    backend.set(Reply::Unary(Code::Unavailable));
    call(&service, absolute("a.internal:50051")).await;
    assert_eq!(call(&service, absolute("a.internal:50051")).await, open());

    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, with_host()).await.0, Code::Ok);
    assert_eq!(layer.state("a.internal:50051"), Some(State::Open));
    assert_eq!(layer.state("b.internal:50051"), Some(State::Closed));
    // No authority at all: the shared overflow circuit.
    assert_eq!(call(&service, request(support::HELLO)).await.0, Code::Ok);
    assert_eq!(layer.state(OVERFLOW_BREAKER), Some(State::Closed));
}

fn tenant(name: &'static str) -> Request<()> {
    let mut request = request(support::HELLO);
    request
        .headers_mut()
        .insert("x-tenant", HeaderValue::from_static(name));
    request
}

#[tokio::test(start_paused = true)]
async fn per_custom_key() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder()
        .per_key(|head| {
            let tenant = head.headers().get("x-tenant")?.to_str().ok()?;
            Some(Cow::Borrowed(tenant))
        })
        .build();
    let service = layer.layer(backend.clone());
    earn(&service, || tenant("acme")).await;
    earn(&service, || tenant("globex")).await;
    backend.set(Reply::Unary(Code::Internal));
    call(&service, tenant("acme")).await;
    assert_eq!(call(&service, tenant("acme")).await, open());
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, tenant("globex")).await.0, Code::Ok);
    assert_eq!(layer.state("acme"), Some(State::Open));
    assert_eq!(layer.state("globex"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_key_shares_the_overflow_circuit_until_it_earned_its_own() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder().per_method().build();
    let service = layer.layer(backend.clone());
    for _ in 1..ADMISSION_THRESHOLD {
        assert_eq!(call(&service, request(support::HELLO)).await.0, Code::Ok);
        assert_eq!(
            layer.states(),
            [(OVERFLOW_BREAKER.to_owned(), State::Closed)],
            "first come is not enough"
        );
    }
    assert_eq!(call(&service, request(support::HELLO)).await.0, Code::Ok);
    assert_eq!(
        layer.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn the_number_of_circuits_is_bounded() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder().per_method().max_breakers(3).build();
    let service = layer.layer(backend.clone());
    // Ten methods in steady use, more than the room: three earn a circuit, for good.
    for _ in 0..3 * ADMISSION_THRESHOLD {
        for i in 0..10 {
            let path = format!("/steady.Service/M{i}");
            assert_eq!(call(&service, request(&path)).await.0, Code::Ok);
            assert!(layer.states().len() <= 4, "{:?}", layer.states());
        }
    }
    assert_eq!(layer.states().len(), 4, "{:?}", layer.states());
    // Paths that are not gRPC methods go to the overflow circuit, without a panic.
    for bad in ["/", "//", "/a/b/c", "/%ff/x"] {
        assert_eq!(call(&service, request(bad)).await.0, Code::Ok);
    }
    assert_eq!(layer.state(OVERFLOW_BREAKER), Some(State::Closed));

    // The overflow circuit is one circuit: one failure among those paths opens it for all.
    backend.set(Reply::Unary(Code::Unavailable));
    call(&service, request("/a/b/c")).await;
    assert_eq!(call(&service, request("//")).await, open());
    assert_eq!(layer.states().len(), 4, "{:?}", layer.states());
}

/// Counts the `breaker` label values a layer registers series for.
#[derive(Clone, Default)]
struct Series(Arc<Mutex<HashSet<String>>>);

impl Series {
    fn labels(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn note(&self, key: &Key) {
        for label in key.labels() {
            if label.key() == "breaker" {
                self.0.lock().unwrap().insert(label.value().to_owned());
            }
        }
    }
}

impl Recorder for Series {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.note(key);
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.note(key);
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_one_off_keys_makes_no_circuit_and_no_series() {
    let series = Series::default();
    let _recorder = metrics::set_default_local_recorder(&series);
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder().per_authority().max_breakers(3).build();
    let service = layer.layer(backend.clone());
    let absolute = |authority: &str| request(&format!("http://{authority}{}", support::HELLO));
    for i in 0..2000 {
        assert_eq!(
            call(&service, absolute(&format!("x{i}.evil"))).await.0,
            Code::Ok
        );
    }
    assert_eq!(
        layer.states(),
        [(OVERFLOW_BREAKER.to_owned(), State::Closed)]
    );
    assert_eq!(series.labels(), 1, "only the overflow circuit's series");
    // A real endpoint seen after the flood earns its own within its first few calls…
    earn(&service, || absolute("b.internal:50051")).await;
    assert_eq!(layer.state("b.internal:50051"), Some(State::Closed));
    // …and keys in steady use past the room never make more circuits, nor series.
    for _ in 0..2 * ADMISSION_THRESHOLD {
        for i in 0..20 {
            call(&service, absolute(&format!("y{i}.evil"))).await;
        }
    }
    assert_eq!(layer.states().len(), 4, "{:?}", layer.states());
    assert_eq!(series.labels(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_keys_cannot_reset_a_real_circuits_failures() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = BreakerLayer::client()
        .consecutive_failures(3)
        .per_authority()
        .max_breakers(3)
        .build();
    let service = layer.layer(backend.clone());
    let absolute = |authority: &str| request(&format!("http://{authority}{}", support::HELLO));
    earn(&service, || absolute("a.internal:50051")).await;
    let mut flood = 0;
    for _ in 0..3 {
        backend.set(Reply::Unary(Code::Unavailable));
        call(&service, absolute("a.internal:50051")).await;
        // Between its failures, a flood of new keys (which once evicted its circuit, and its
        // count of failures with it).
        backend.set(Reply::Unary(Code::Ok));
        for _ in 0..500 {
            flood += 1;
            call(&service, absolute(&format!("x{flood}.evil"))).await;
        }
    }
    assert_eq!(layer.state("a.internal:50051"), Some(State::Open));
    assert_eq!(call(&service, absolute("a.internal:50051")).await, open());
}

#[tokio::test(start_paused = true)]
async fn with_a_method_registry_known_methods_have_circuits_from_the_start() {
    let registry = palisade_core::MethodRegistry::new()
        .with_method(
            "palisade.demo.v1.Greeter/SayHello",
            palisade_core::MethodType::Unary,
        )
        .with_method(
            "palisade.demo.v1.Greeter/SayBye",
            palisade_core::MethodType::Unary,
        );
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = builder()
        .per_method()
        .registry(registry)
        .max_breakers(1)
        .build();
    let known = [
        ("palisade.demo.v1.Greeter/SayBye".to_owned(), State::Closed),
        (
            "palisade.demo.v1.Greeter/SayHello".to_owned(),
            State::Closed,
        ),
    ];
    assert_eq!(layer.states(), known);
    let service = layer.layer(backend.clone());
    // Unknown methods are never counted, never rejected, and get no circuit.
    for _ in 0..3 {
        for i in 0..100 {
            let junk = request(&format!("/junk.Service/M{i}"));
            assert_eq!(call(&service, junk).await.0, Code::Unavailable);
        }
    }
    assert_eq!(layer.states(), known);
    // Every known method has its own, whatever max_breakers says, from its first call.
    call(&service, request(support::HELLO)).await;
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, request(BYE)).await.0, Code::Ok);
    assert_eq!(
        layer.states(),
        [
            ("palisade.demo.v1.Greeter/SayBye".to_owned(), State::Closed),
            ("palisade.demo.v1.Greeter/SayHello".to_owned(), State::Open),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn skipped_calls_bypass_an_open_circuit_and_are_not_counted() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = builder()
        .name("backend")
        .skip(Matcher::health_and_reflection())
        .build();
    let service = layer.layer(backend.clone());
    // Failing health checks do not open the circuit.
    for _ in 0..5 {
        assert_eq!(call(&service, request(HEALTH)).await.0, Code::Unavailable);
    }
    assert_eq!(layer.state("backend"), Some(State::Closed));
    call(&service, request(support::HELLO)).await;
    assert_eq!(layer.state("backend"), Some(State::Open));
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, request(HEALTH)).await.0, Code::Ok);
    assert_eq!(call(&service, request(support::HELLO)).await, open());
    assert_eq!(backend.calls(), 7);
}
