//! Shared test support: keys, token minting, a counting inner service, a local JWKS server.
#![allow(dead_code, unreachable_pub)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use palisade_jwt::StandardClaims;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify};

pub const SECRET: &[u8] = b"palisade-test-secret-0123456789abcdef";

pub const RSA: &[u8] = include_bytes!("../keys/rsa.pem");
pub const RSA_PUB: &[u8] = include_bytes!("../keys/rsa.pub.pem");
pub const RSA2: &[u8] = include_bytes!("../keys/rsa2.pem");
pub const RSA2_PUB: &[u8] = include_bytes!("../keys/rsa2.pub.pem");
pub const EC256: &[u8] = include_bytes!("../keys/ec256.pem");
pub const EC256_PUB: &[u8] = include_bytes!("../keys/ec256.pub.pem");
pub const EC384: &[u8] = include_bytes!("../keys/ec384.pem");
pub const EC384_PUB: &[u8] = include_bytes!("../keys/ec384.pub.pem");
pub const ED: &[u8] = include_bytes!("../keys/ed25519.pem");
pub const ED_PUB: &[u8] = include_bytes!("../keys/ed25519.pub.pem");

pub const SAY_HELLO: &str = "/palisade.demo.v1.Greeter/SayHello";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for an hour, for `sub`.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 3600 })
}

/// The private key for an algorithm.
pub fn signing_key(alg: Algorithm) -> EncodingKey {
    assert!(palisade_jwt::install_crypto_provider());
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(SECRET),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC256).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(EC384).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED).unwrap(),
        _ => EncodingKey::from_rsa_pem(RSA).unwrap(),
    }
}

/// Signs `claims` with `key`.
pub fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    assert!(palisade_jwt::install_crypto_provider());
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// An HS256 token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &signing_key(Algorithm::HS256),
        None,
        claims,
    )
}

/// The public JWK of a private key, with a `kid`.
pub fn jwk(alg: Algorithm, key: &EncodingKey, kid: &str) -> Value {
    assert!(palisade_jwt::install_crypto_provider());
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

/// A JWKS document of these JWKs.
pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A request to `path` with this `authorization` value.
pub fn request(path: &str, authorization: Option<&str>) -> Request<String> {
    let mut builder = Request::post(path).header("content-type", "application/grpc");
    if let Some(value) = authorization {
        builder = builder.header("authorization", value);
    }
    builder.body(String::new()).unwrap()
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A request to SayHello with `Bearer <token>`.
pub fn with_token(token: &str) -> Request<String> {
    request(SAY_HELLO, Some(&bearer(token)))
}

/// An inner service counting its calls and answering with the subject it sees in the claims.
#[derive(Clone, Default)]
pub struct Inner {
    pub calls: Arc<AtomicUsize>,
}

impl Inner {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tower::Service<Request<String>> for Inner {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let subject = request
            .extensions()
            .get::<StandardClaims>()
            .and_then(|c| c.subject().map(str::to_owned))
            .unwrap_or_default();
        let mut response = Response::new(subject);
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("0"));
        std::future::ready(Ok(response))
    }
}

/// The gRPC code of a response (its `grpc-status` header).
pub fn code<B>(response: &Response<B>) -> u16 {
    response.headers()["grpc-status"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The `grpc-message` of a response.
pub fn message<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// What a local JWKS / OIDC endpoint serves.
#[derive(Default)]
pub struct EndpointState {
    pub jwks: String,
    /// Answer 500 to everything.
    pub failing: bool,
    pub jwks_hits: usize,
    pub discovery_hits: usize,
}

/// A local HTTP server on 127.0.0.1:0 serving `/jwks.json` and
/// `/.well-known/openid-configuration`; dropping it stops it.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<EndpointState>>,
    /// Notified at every request served.
    pub served: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    pub async fn start(jwks: String) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(EndpointState {
            jwks,
            ..Default::default()
        }));
        let served = Arc::new(Notify::new());
        let (task_state, task_served) = (state.clone(), served.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (state, served) = (task_state.clone(), task_served.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let response = answer(&state, addr, request.uri().path());
                            served.notify_waiters();
                            async move { Ok::<_, Infallible>(response) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Endpoint {
            addr,
            state,
            served,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_hits(&self) -> usize {
        self.state.lock().unwrap().jwks_hits
    }

    pub fn set_jwks(&self, jwks: String) {
        self.state.lock().unwrap().jwks = jwks;
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }

    /// Waits until the JWKS was fetched at least `n` times in all.
    pub async fn wait_for_jwks_hits(&self, n: usize) {
        loop {
            let notified = self.served.notified();
            if self.jwks_hits() >= n {
                return;
            }
            notified.await;
        }
    }
}

fn answer(state: &Mutex<EndpointState>, addr: SocketAddr, path: &str) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap();
    let body = match path {
        "/jwks.json" => {
            state.jwks_hits += 1;
            state.jwks.clone()
        }
        "/.well-known/openid-configuration" => {
            state.discovery_hits += 1;
            json!({ "issuer": format!("http://{addr}"), "jwks_uri": format!("http://{addr}/jwks.json") })
                .to_string()
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if state.failing {
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    response
}
