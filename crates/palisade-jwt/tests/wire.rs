//! Over the wire: a real tonic server (palisade-demo) behind the server layer, a tonic client
//! behind the client layer.

mod common;

use std::time::Duration;

use common::SECRET;
use palisade_core::Matcher;
use palisade_demo::{Greeter, pb::HelloRequest, pb::greeter_client::GreeterClient, spawn_with};
use palisade_jwt::{JwtAuthLayer, Policy, StandardClaims, mint::HmacMinter};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tower::ServiceBuilder;

fn subject(extensions: &http::Extensions) -> Option<String> {
    extensions
        .get::<StandardClaims>()
        .and_then(|c| c.subject().map(str::to_owned))
}

fn server_layer() -> JwtAuthLayer {
    JwtAuthLayer::server()
        .secret(SECRET)
        .issuer("palisade-demo")
        .audience("greeter")
        .skip(Matcher::health_and_reflection())
        .policy(
            Matcher::method("palisade.demo.v1.Greeter/SayHelloStream"),
            Policy::authenticated().scopes(["greeter.stream"]),
        )
        .build()
        .unwrap()
}

fn minter() -> HmacMinter {
    HmacMinter::hs256(SECRET)
        .subject("demo-client")
        .issuer("palisade-demo")
        .audience("greeter")
        .ttl(Duration::from_secs(300))
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        count: 2,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_subject_reaches_the_handler_and_scopes_guard_streaming() {
    let server = spawn_with(Greeter::new().with_subject(subject), server_layer()).await;
    let channel = server.channel().await;

    // A client minting its own token (no scope).
    let attach = JwtAuthLayer::client().source(minter()).build().unwrap();
    let mut client = GreeterClient::new(
        ServiceBuilder::new()
            .layer(attach.clone())
            .service(channel.clone()),
    );
    let reply = client.say_hello(hello()).await.unwrap().into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.subject.as_str()),
        ("Hello, Ada!", "demo-client")
    );
    let status = client.say_hello_stream(hello()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "insufficient scope");
    assert_eq!(attach.refreshes(), 1, "the token is minted once and reused");

    // With the scope, the stream flows.
    let scoped = JwtAuthLayer::client()
        .source(minter().scope("greeter.stream"))
        .build()
        .unwrap();
    let mut client =
        GreeterClient::new(ServiceBuilder::new().layer(scoped).service(channel.clone()));
    let mut stream = client.say_hello_stream(hello()).await.unwrap().into_inner();
    let mut replies = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.subject, "demo-client");
        replies += 1;
    }
    assert_eq!(replies, 2);
}

#[tokio::test]
async fn bad_tokens_are_refused_on_the_wire() {
    let server = spawn_with(Greeter::new().with_subject(subject), server_layer()).await;
    let channel = server.channel().await;

    // No token at all.
    let status = GreeterClient::new(channel.clone())
        .say_hello(hello())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "missing token")
    );

    // Forged (another secret), expired, and for another audience.
    let forged = HmacMinter::hs256("not the secret")
        .subject("mallory")
        .issuer("palisade-demo")
        .audience("greeter");
    let wrong_audience = minter().audience("billing");
    for (minter, message) in [(forged, "invalid token"), (wrong_audience, "invalid token")] {
        let attach = JwtAuthLayer::client()
            .bearer(minter.mint().unwrap().value())
            .build()
            .unwrap();
        let mut client =
            GreeterClient::new(ServiceBuilder::new().layer(attach).service(channel.clone()));
        let status = client.say_hello(hello()).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unauthenticated, message)
        );
    }
    let expired = common::hs256(&serde_json::json!({
        "sub": "demo-client", "iss": "palisade-demo", "aud": "greeter", "exp": common::now() - 3600
    }));
    let attach = JwtAuthLayer::client().bearer(expired).build().unwrap();
    let status = GreeterClient::new(ServiceBuilder::new().layer(attach).service(channel.clone()))
        .say_hello(hello())
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "token expired")
    );

    // A huge token: refused by the layer or by the HTTP/2 header limit, never served.
    let huge = JwtAuthLayer::client()
        .bearer("x".repeat(64 * 1024))
        .build()
        .unwrap();
    let result = GreeterClient::new(ServiceBuilder::new().layer(huge).service(channel.clone()))
        .say_hello(hello())
        .await;
    assert!(result.is_err());

    // Health stays public.
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}
