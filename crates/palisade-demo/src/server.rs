//! A real tonic server on `127.0.0.1:0`, behind any tower layer.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    body::Body,
    service::Routes,
    transport::{Channel, Server, server::TcpIncoming},
};
use tower_layer::Layer;
use tower_service::Service;

use crate::{FILE_DESCRIPTOR_SET, Greeter, pb::greeter_client::GreeterClient};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A running demo server; dropping it shuts the server down.
#[derive(Debug)]
pub struct TestServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("a valid loopback URL")
            .connect()
            .await
            .expect("the test server accepts connections")
    }

    /// A Greeter client on a new channel.
    pub async fn client(&self) -> GreeterClient<Channel> {
        GreeterClient::new(self.channel().await)
    }

    /// Stops the server and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves the default [`Greeter`], gRPC health (`""` and the Greeter SERVING) and server
/// reflection (v1 and v1alpha) on `127.0.0.1:0` behind `layer`.
pub async fn spawn<L, ResBody>(layer: L) -> TestServer
where
    L: Layer<Routes> + Clone + Send + 'static,
    L::Service:
        Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    spawn_with(Greeter::new(), layer).await
}

/// Like [`spawn`], with a Greeter of your own (hooks set).
pub async fn spawn_with<L, ResBody>(greeter: Greeter, layer: L) -> TestServer
where
    L: Layer<Routes> + Clone + Send + 'static,
    L::Service:
        Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("a bound address");
    let routes = routes(greeter).await;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_routes(routes)
            // Nagle off, as `Server::serve` sets it: streams would stall ~40 ms per call.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("the test server runs");
    });
    TestServer {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// The demo's routes: Greeter, health and reflection.
pub async fn routes(greeter: Greeter) -> Routes {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<crate::pb::greeter_server::GreeterServer<Greeter>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the demo descriptors are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the demo descriptors are valid");
    let mut builder = Routes::builder();
    builder
        .add_service(greeter.into_service())
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    builder.routes()
}
