//! Exact counter values over a real tonic server and client (palisade-demo), server and client
//! layers together, for every way an RPC can end.

mod support;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use http_body_util::BodyExt;
use palisade_core::{Code, MethodRegistry, MethodType, Rejection, side::Client};
use palisade_demo::{
    FILE_DESCRIPTOR_SET,
    frames::GrpcBody,
    pb::{HelloReply, HelloRequest, greeter_client::GreeterClient},
};
use palisade_metrics::MetricsLayer;
use support::{Recorded, Samples};
use tonic::{
    body::Body,
    codegen::http::uri::PathAndQuery,
    server::NamedService,
    transport::{Channel, Server},
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const GREETER: &str = "palisade.demo.v1.Greeter";

fn registry() -> MethodRegistry {
    MethodRegistry::from_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .unwrap()
        .with_method("palisade.test.Uploader/Upload", MethodType::ClientStream)
}

/// A server layer, and a client on a channel to it behind a client layer, recording into one
/// test recorder each.
struct Setup {
    server: Recorded,
    client: Recorded,
    _demo: palisade_demo::TestServer,
    greeter: GreeterClient<palisade_metrics::Metrics<Channel, Client>>,
    channel: palisade_metrics::Metrics<Channel, Client>,
}

async fn setup() -> Setup {
    let server = Recorded::new();
    let client = Recorded::new();
    let server_layer = MetricsLayer::server()
        .registry(registry())
        .recorder(server.recorder.clone())
        .build();
    let demo = palisade_demo::spawn(
        ServiceBuilder::new()
            .layer(server_layer)
            .layer(RejectLayer)
            .into_inner(),
    )
    .await;
    let client_layer = MetricsLayer::client()
        .registry(registry())
        .recorder(client.recorder.clone())
        .build();
    // As it comes: the request body passes unchanged, so the layer fits a `Channel`.
    let channel = client_layer.layer(demo.channel().await);
    Setup {
        server,
        client,
        greeter: GreeterClient::new(channel.clone()),
        channel,
        _demo: demo,
    }
}

fn hello(count: u32, fail_code: Code) -> HelloRequest {
    HelloRequest {
        name: "Ada".into(),
        count,
        fail_code: fail_code as i32,
        ..Default::default()
    }
}

/// The counters of one method on one side, in a scrape.
struct Of<'a> {
    samples: &'a Samples,
    side: &'static str,
    labels: [(&'static str, &'a str); 3],
}

fn of<'a>(samples: &'a Samples, side: &'static str, kind: &'a str, method: &'a str) -> Of<'a> {
    let service = if method == "Upload" {
        "palisade.test.Uploader"
    } else {
        GREETER
    };
    Of {
        samples,
        side,
        labels: [
            ("grpc_type", kind),
            ("grpc_service", service),
            ("grpc_method", method),
        ],
    }
}

impl Of<'_> {
    fn get(&self, suffix: &str) -> f64 {
        self.samples
            .get(&format!("grpc_{}_{suffix}", self.side), &self.labels)
    }

    fn handled(&self, code: &str) -> f64 {
        let mut labels = self.labels.to_vec();
        labels.push(("grpc_code", code));
        self.samples
            .get(&format!("grpc_{}_handled_total", self.side), &labels)
    }

    fn handled_total(&self) -> f64 {
        self.samples
            .sum(&format!("grpc_{}_handled_total", self.side), &self.labels)
    }

    /// started, handled with `code` (and no other code), messages received and sent, and
    /// the histogram's count.
    fn assert(&self, started: f64, code: &str, received: f64, sent: f64) {
        let what = format!("{} {:?}", self.side, self.labels);
        assert_eq!(self.get("started_total"), started, "started {what}");
        assert_eq!(self.handled(code), started, "handled {code} {what}");
        assert_eq!(self.handled_total(), started, "handled, all codes, {what}");
        assert_eq!(self.get("msg_received_total"), received, "received {what}");
        assert_eq!(self.get("msg_sent_total"), sent, "sent {what}");
        assert_eq!(
            self.get("handling_seconds_count"),
            started,
            "histogram count {what}"
        );
    }
}

/// Waits until both sides have recorded `n` handled RPCs of `method`.
async fn settled(setup: &mut Setup, kind: &str, method: &str, n: f64) -> (Samples, Samples) {
    let server = setup
        .server
        .wait_for("the server's handled count", |s| {
            of(s, "server", kind, method).handled_total() == n
        })
        .await;
    let client = setup
        .client
        .wait_for("the client's handled count", |s| {
            of(s, "client", kind, method).handled_total() == n
        })
        .await;
    (server, client)
}

#[tokio::test]
async fn unary_ok() {
    let mut setup = setup().await;
    for _ in 0..3 {
        let reply = setup.greeter.say_hello(hello(0, Code::Ok)).await.unwrap();
        assert_eq!(reply.get_ref().message, "Hello, Ada!");
    }
    let (server, client) = settled(&mut setup, "unary", "SayHello", 3.0).await;
    of(&server, "server", "unary", "SayHello").assert(3.0, "OK", 3.0, 3.0);
    of(&client, "client", "unary", "SayHello").assert(3.0, "OK", 3.0, 3.0);
    // The other method exists with zeros, for every code, from the start.
    let stream = of(&server, "server", "server_stream", "SayHelloStream");
    assert_eq!(stream.get("started_total"), 0.0);
    assert_eq!(stream.handled("Unauthenticated"), 0.0);
    assert_eq!(stream.get("handling_seconds_count"), 0.0);
}

#[tokio::test]
async fn error_in_trailers_after_messages() {
    let mut setup = setup().await;
    let mut stream = setup
        .greeter
        .say_hello_stream(hello(2, Code::NotFound))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    assert!(stream.message().await.unwrap().is_some());
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let (server, client) = settled(&mut setup, "server_stream", "SayHelloStream", 1.0).await;
    of(&server, "server", "server_stream", "SayHelloStream").assert(1.0, "NotFound", 1.0, 2.0);
    of(&client, "client", "server_stream", "SayHelloStream").assert(1.0, "NotFound", 2.0, 1.0);
}

#[tokio::test]
async fn trailers_only_error_from_the_handler() {
    let mut setup = setup().await;
    let status = setup
        .greeter
        .say_hello(hello(0, Code::InvalidArgument))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let (server, client) = settled(&mut setup, "unary", "SayHello", 1.0).await;
    // The request was read (1 received); no reply was sent.
    of(&server, "server", "unary", "SayHello").assert(1.0, "InvalidArgument", 1.0, 0.0);
    of(&client, "client", "unary", "SayHello").assert(1.0, "InvalidArgument", 0.0, 1.0);
}

#[tokio::test]
async fn trailers_only_rejection_from_an_inner_layer() {
    let mut setup = setup().await;
    let mut request = tonic::Request::new(hello(0, Code::Ok));
    request
        .metadata_mut()
        .insert("x-reject", "yes".parse().unwrap());
    let status = setup.greeter.say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "rejected by the test layer");
    let (server, client) = settled(&mut setup, "unary", "SayHello", 1.0).await;
    // Rejected before the body was read: nothing received, nothing sent.
    of(&server, "server", "unary", "SayHello").assert(1.0, "PermissionDenied", 0.0, 0.0);
    of(&client, "client", "unary", "SayHello").assert(1.0, "PermissionDenied", 0.0, 1.0);
}

#[tokio::test]
async fn server_streaming_counts_every_message() {
    let mut setup = setup().await;
    let mut stream = setup
        .greeter
        .say_hello_stream(hello(7, Code::Ok))
        .await
        .unwrap()
        .into_inner();
    let mut replies = 0;
    while stream.message().await.unwrap().is_some() {
        replies += 1;
    }
    assert_eq!(replies, 7);
    let (server, client) = settled(&mut setup, "server_stream", "SayHelloStream", 1.0).await;
    of(&server, "server", "server_stream", "SayHelloStream").assert(1.0, "OK", 1.0, 7.0);
    of(&client, "client", "server_stream", "SayHelloStream").assert(1.0, "OK", 7.0, 1.0);
}

#[tokio::test]
async fn client_streaming_counts_every_message() {
    let server = Recorded::new();
    let client = Recorded::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = MetricsLayer::server()
        .registry(registry())
        .recorder(server.recorder.clone())
        .build();
    tokio::spawn(
        Server::builder()
            .layer(layer)
            .add_service(Uploader)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A client layer counts a stream's request messages only when asked to, in the request
    // body: that body is boxed below it for the channel.
    let channel = ServiceBuilder::new()
        .layer(
            MetricsLayer::client()
                .registry(registry())
                .recorder(client.recorder.clone())
                .count_request_messages()
                .build(),
        )
        .map_request(|request: Request<_>| request.map(Body::new))
        .service(channel);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let requests = tokio_stream::iter(vec![hello(0, Code::Ok); 4]);
    let reply = grpc
        .client_streaming(
            tonic::Request::new(requests),
            PathAndQuery::from_static("/palisade.test.Uploader/Upload"),
            tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "4 messages");

    let mut setup_server = server;
    let mut setup_client = client;
    let server = setup_server
        .wait_for("the upload handled", |s| {
            of(s, "server", "client_stream", "Upload").handled_total() == 1.0
        })
        .await;
    let client = setup_client
        .wait_for("the upload handled", |s| {
            of(s, "client", "client_stream", "Upload").handled_total() == 1.0
        })
        .await;
    of(&server, "server", "client_stream", "Upload").assert(1.0, "OK", 4.0, 1.0);
    of(&client, "client", "client_stream", "Upload").assert(1.0, "OK", 1.0, 4.0);
}

#[tokio::test]
async fn a_cancelled_stream_is_canceled_on_both_sides() {
    let mut setup = setup().await;
    let mut stream = setup
        .greeter
        .say_hello_stream(hello(1_000_000, Code::Ok))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    let (server, client) = settled(&mut setup, "server_stream", "SayHelloStream", 1.0).await;
    let server = of(&server, "server", "server_stream", "SayHelloStream");
    assert_eq!(server.get("started_total"), 1.0);
    assert_eq!(server.handled("Canceled"), 1.0);
    assert_eq!(server.handled_total(), 1.0);
    assert_eq!(server.get("msg_received_total"), 1.0);
    assert!(server.get("msg_sent_total") >= 1.0);
    let client = of(&client, "client", "server_stream", "SayHelloStream");
    assert_eq!(client.get("started_total"), 1.0);
    assert_eq!(client.handled("Canceled"), 1.0);
    assert_eq!(client.handled_total(), 1.0);
    assert_eq!(client.get("msg_sent_total"), 1.0);
    assert!(client.get("msg_received_total") >= 1.0);
}

#[tokio::test]
async fn a_call_dropped_before_its_response_is_canceled_on_both_sides() {
    let mut setup = setup().await;
    let mut greeter = setup.greeter.clone();
    let call = tokio::spawn(async move {
        let mut slow = hello(0, Code::Ok);
        slow.delay_ms = 60_000;
        greeter.say_hello(slow).await
    });
    setup
        .server
        .wait_for("the slow call to start", |s| {
            of(s, "server", "unary", "SayHello").get("started_total") == 1.0
        })
        .await;
    call.abort();
    let (server, client) = settled(&mut setup, "unary", "SayHello", 1.0).await;
    of(&server, "server", "unary", "SayHello").assert(1.0, "Canceled", 1.0, 0.0);
    of(&client, "client", "unary", "SayHello").assert(1.0, "Canceled", 0.0, 1.0);
}

#[tokio::test]
async fn unknown_paths_are_unimplemented_under_unknown() {
    let mut setup = setup().await;
    let request = Request::post("/palisade.demo.v1.Greeter/NoSuchMethod")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::new(GrpcBody::new(
            [palisade_demo::frames::message(b"")],
            None,
        )))
        .unwrap();
    let response = ServiceExt::<Request<Body>>::ready(&mut setup.channel)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    let _ = response.into_body().collect().await;
    let unknown = [
        ("grpc_type", "unknown"),
        ("grpc_service", "unknown"),
        ("grpc_method", "unknown"),
    ];
    let server = setup
        .server
        .wait_for("the unknown call", |s| {
            s.sum("grpc_server_handled_total", &unknown) == 1.0
        })
        .await;
    let mut labels = unknown.to_vec();
    labels.push(("grpc_code", "Unimplemented"));
    assert_eq!(server.get("grpc_server_handled_total", &labels), 1.0);
    assert_eq!(server.get("grpc_server_started_total", &unknown), 1.0);
    // The registry's methods are the only other method labels.
    for sample in server.matching("grpc_server_started_total", &[]) {
        let method = &sample.labels["grpc_method"];
        assert!(["SayHello", "SayHelloStream", "Upload", "unknown"].contains(&method.as_str()));
    }
    let client = setup
        .client
        .wait_for("the unknown call", |s| {
            s.sum("grpc_client_handled_total", &unknown) == 1.0
        })
        .await;
    assert_eq!(client.get("grpc_client_handled_total", &labels), 1.0);
}

// An inner layer that rejects requests carrying `x-reject` with a trailers-only
// PermissionDenied, as palisade-jwt does.
#[derive(Clone, Copy, Debug)]
struct RejectLayer;

impl<S> Layer<S> for RejectLayer {
    type Service = Reject<S>;

    fn layer(&self, inner: S) -> Reject<S> {
        Reject(inner)
    }
}

#[derive(Clone, Debug)]
struct Reject<S>(S);

impl<S, B, ResBody> Service<Request<B>> for Reject<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<ResBody>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if request.headers().contains_key("x-reject") {
            let rejection = Rejection::new(Code::PermissionDenied, "rejected by the test layer");
            return Either::Left(ready(Ok(rejection.into_response())));
        }
        Either::Right(self.0.call(request))
    }
}

/// `palisade.test.Uploader/Upload`, client streaming: reads every request message, answers
/// with one reply saying how many came.
#[derive(Clone, Copy, Debug)]
struct Uploader;

impl NamedService for Uploader {
    const NAME: &'static str = "palisade.test.Uploader";
}

impl Service<Request<Body>> for Uploader {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(async move {
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let mut counter = palisade_core::MessageCounter::default();
            let messages = counter.feed(&bytes);
            let reply = HelloReply {
                message: format!("{messages} messages"),
                ..Default::default()
            };
            let payload = prost::Message::encode_to_vec(&reply);
            let mut response = Response::new(Body::new(GrpcBody::unary(&payload, Code::Ok)));
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok(response)
        })
    }
}
