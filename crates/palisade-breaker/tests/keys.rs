//! Keyed circuits: per method, per endpoint, per custom key, bounded in number; skipping.

mod support;

use std::{borrow::Cow, time::Duration};

use http::{HeaderValue, Request};
use palisade_breaker::{BreakerLayer, OVERFLOW_BREAKER, State};
use palisade_core::{Code, Matcher};
use support::{Backend, Reply, call, open, request};
use tower::Layer;

const BYE: &str = "/palisade.demo.v1.Greeter/SayBye";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

fn builder() -> palisade_breaker::Builder {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .backoff(palisade_breaker::Backoff::constant(Duration::from_secs(1)))
}

#[tokio::test(start_paused = true)]
async fn per_method_circuits_are_independent() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = builder().per_method().build();
    let service = layer.layer(backend.clone());
    call(&service, request(support::HELLO)).await;
    assert_eq!(
        layer.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Open)
    );
    assert_eq!(call(&service, request(support::HELLO)).await, open());

    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, request(BYE)).await.0, Code::Ok);
    assert_eq!(
        layer.states(),
        [
            ("palisade.demo.v1.Greeter/SayBye".to_owned(), State::Closed),
            ("palisade.demo.v1.Greeter/SayHello".to_owned(), State::Open),
        ]
    );
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn per_authority_reads_the_uri_then_the_host_header() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = builder().per_authority().build();
    let service = layer.layer(backend.clone());
    let absolute = |authority: &str| request(&format!("http://{authority}{}", support::HELLO));
    call(&service, absolute("a.internal:50051")).await;
    assert_eq!(call(&service, absolute("a.internal:50051")).await, open());

    backend.set(Reply::Unary(Code::Ok));
    let mut with_host = request(support::HELLO);
    with_host
        .headers_mut()
        .insert("host", HeaderValue::from_static("b.internal:50051"));
    assert_eq!(call(&service, with_host).await.0, Code::Ok);
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
    let backend = Backend::new(Reply::Unary(Code::Internal));
    let layer = builder()
        .per_key(|head| {
            let tenant = head.headers().get("x-tenant")?.to_str().ok()?;
            Some(Cow::Borrowed(tenant))
        })
        .build();
    let service = layer.layer(backend.clone());
    call(&service, tenant("acme")).await;
    assert_eq!(call(&service, tenant("acme")).await, open());
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, tenant("globex")).await.0, Code::Ok);
    assert_eq!(layer.state("acme"), Some(State::Open));
    assert_eq!(layer.state("globex"), Some(State::Closed));
}

#[tokio::test(start_paused = true)]
async fn the_number_of_circuits_is_bounded() {
    let backend = Backend::new(Reply::Unary(Code::Ok));
    let layer = builder().per_method().max_breakers(3).build();
    let service = layer.layer(backend.clone());
    for i in 0..1000 {
        assert_eq!(
            call(&service, request(&format!("/junk.Service/M{i}")))
                .await
                .0,
            Code::Ok
        );
        assert!(layer.states().len() <= 4, "{:?}", layer.states());
    }
    // Paths that are not gRPC methods go to the overflow circuit, without a panic.
    for bad in ["/", "//", "/a/b/c", "/%ff/x"] {
        assert_eq!(call(&service, request(bad)).await.0, Code::Ok);
    }
    assert_eq!(layer.state(OVERFLOW_BREAKER), Some(State::Closed));

    // The overflow circuit is one circuit: one failure among those paths opens it for all.
    backend.set(Reply::Unary(Code::Unavailable));
    call(&service, request("/a/b/c")).await;
    assert_eq!(call(&service, request("//")).await, open());
    // A real method still gets a circuit of its own after the flood.
    backend.set(Reply::Unary(Code::Ok));
    assert_eq!(call(&service, request(support::HELLO)).await.0, Code::Ok);
    assert_eq!(
        layer.state("palisade.demo.v1.Greeter/SayHello"),
        Some(State::Closed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_authorities_cannot_evict_an_open_circuit_nor_keep_new_ones_out() {
    let backend = Backend::new(Reply::Unary(Code::Unavailable));
    let layer = builder().per_authority().max_breakers(3).build();
    let service = layer.layer(backend.clone());
    let absolute = |authority: &str| request(&format!("http://{authority}{}", support::HELLO));
    call(&service, absolute("a.internal:50051")).await;
    assert_eq!(layer.state("a.internal:50051"), Some(State::Open));

    backend.set(Reply::Unary(Code::Ok));
    for i in 0..500 {
        assert_eq!(
            call(&service, absolute(&format!("x{i}.evil"))).await.0,
            Code::Ok
        );
    }
    // The open circuit stayed, and still sheds its calls.
    assert_eq!(layer.state("a.internal:50051"), Some(State::Open));
    assert_eq!(call(&service, absolute("a.internal:50051")).await, open());
    // A real endpoint seen after the flood gets its own circuit.
    assert_eq!(
        call(&service, absolute("b.internal:50051")).await.0,
        Code::Ok
    );
    assert_eq!(layer.state("b.internal:50051"), Some(State::Closed));
    // One that keeps calling keeps it while the flood goes on around it.
    for i in 0..100 {
        assert_eq!(
            call(&service, absolute("b.internal:50051")).await.0,
            Code::Ok
        );
        assert_eq!(
            call(&service, absolute(&format!("y{i}.evil"))).await.0,
            Code::Ok
        );
        assert_eq!(layer.state("b.internal:50051"), Some(State::Closed));
    }
    assert!(layer.states().len() <= 4, "{:?}", layer.states());
}

#[tokio::test(start_paused = true)]
async fn with_a_method_registry_only_known_methods_have_circuits() {
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
    let service = layer.layer(backend.clone());
    // Unknown methods are never counted, never rejected, and get no circuit.
    for i in 0..100 {
        let junk = request(&format!("/junk.Service/M{i}"));
        assert_eq!(call(&service, junk).await.0, Code::Unavailable);
    }
    assert_eq!(
        call(&service, request("/junk.Service/M0")).await.0,
        Code::Unavailable
    );
    assert!(layer.states().is_empty(), "{:?}", layer.states());
    // Every known method has its own, whatever max_breakers says.
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
