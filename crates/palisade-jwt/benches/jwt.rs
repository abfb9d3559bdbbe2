//! The server layer against a bare service doing the same work (the response body polled to
//! its trailers): HS256 first sight (cache off, and cache on with a new token every time), HS256
//! verified-token cache hit, RS256 / ES256 / EdDSA first sight; and `jsonwebtoken::decode` of
//! the same tokens, the crate doing the same job, for the ratio.
//!
//! `jwt_overhead/*` measures the overhead itself: layered and bare calls interleaved in chunks
//! of 64, the median chunk difference, so load on a shared machine hits both alike;
//! `jsonwebtoken_decode/*` is timed the same way (against nothing). `jwt/*` are plain absolute
//! times.
#![allow(missing_docs)]

use std::{
    hint::black_box,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use criterion::{Bencher, Criterion, criterion_group, criterion_main};
use futures_util::{FutureExt, task::noop_waker_ref};
use http::{HeaderValue, Request, Response, header::AUTHORIZATION};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use palisade_core::{Code, Matcher};
use palisade_demo::frames::{GrpcBody, unary_service};
use palisade_jwt::{JwtAuthLayer, Key, Policy};
use serde_json::json;
use tower::{Layer, Service};

const SECRET: &[u8] = b"palisade-bench-secret-0123456789abcdef";
const PATH: &str = "/palisade.demo.v1.Greeter/SayHello";

/// A request as tonic's server hands it to the layers: the token header, and the connection
/// info tonic puts into the extensions of every request (so the extensions map exists).
fn request(authorization: &HeaderValue) -> Request<GrpcBody> {
    let mut request = Request::post(PATH).body(GrpcBody::default()).unwrap();
    request
        .headers_mut()
        .insert(AUTHORIZATION, authorization.clone());
    request.extensions_mut().insert(ConnectInfo {
        local: ([127, 0, 0, 1], 50051).into(),
        remote: ([127, 0, 0, 1], 40000).into(),
    });
    request
}

/// Like tonic's `TcpConnectInfo`.
#[derive(Clone)]
struct ConnectInfo {
    #[allow(dead_code)]
    local: std::net::SocketAddr,
    #[allow(dead_code)]
    remote: std::net::SocketAddr,
}

/// One RPC, its response body polled to the trailers.
#[inline]
fn drive<S, B>(service: &mut S, request: Request<GrpcBody>)
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let response = service.call(request).now_or_never().unwrap().unwrap();
    let collected = response
        .into_body()
        .collect()
        .now_or_never()
        .unwrap()
        .unwrap();
    black_box(collected);
}

/// Times `layered` minus `bare`: interleaved in chunks of 64 calls, each sample the median
/// chunk difference (robust to a chunk preempted on a loaded machine) times the chunks.
fn overhead(b: &mut Bencher<'_>, mut bare: impl FnMut(), mut layered: impl FnMut()) {
    const CHUNK: u64 = 64;
    b.iter_custom(|iters| {
        let chunks = iters.div_ceil(CHUNK).max(1);
        let mut differences = Vec::with_capacity(chunks as usize);
        for _ in 0..chunks {
            let start = Instant::now();
            for _ in 0..CHUNK {
                bare();
            }
            let middle = Instant::now();
            for _ in 0..CHUNK {
                layered();
            }
            let layered_time = middle.elapsed();
            differences.push(layered_time.as_nanos() as i128 - (middle - start).as_nanos() as i128);
        }
        differences.sort_unstable();
        let median = differences[differences.len() / 2].max(1) as u128;
        // Per call, times the calls asked for.
        Duration::from_nanos((median * u128::from(iters) / u128::from(CHUNK)).max(1) as u64)
    });
}

fn token(alg: Algorithm, key: &EncodingKey, sub: &str) -> String {
    let claims = json!({
        "sub": sub, "iss": "https://issuer.bench", "aud": "greeter",
        "exp": 4_000_000_000u64, "iat": 1_700_000_000u64, "scope": "greeter.read greeter.stream"
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::try_from(format!("Bearer {token}")).unwrap()
}

/// The demo server's policy: health and reflection public, streaming needs a scope.
fn layer(cache: bool) -> JwtAuthLayer {
    JwtAuthLayer::server()
        .skip(Matcher::health_and_reflection())
        .policy(
            Matcher::method("palisade.demo.v1.Greeter/SayHelloStream"),
            Policy::authenticated().scopes(["greeter.stream"]),
        )
        .secret(SECRET)
        .pem(include_bytes!("../tests/keys/rsa.pub.pem"))
        .pem(include_bytes!("../tests/keys/ec256.pub.pem"))
        .pem(include_bytes!("../tests/keys/ed25519.pub.pem"))
        .key(Key::hmac("unused").with_kid("other"))
        .issuer("https://issuer.bench")
        .audience("greeter")
        .cache_capacity(if cache { 1000 } else { 0 })
        .build()
        .unwrap()
}

fn jwt(c: &mut Criterion) {
    assert!(palisade_jwt::install_crypto_provider());
    let hs = EncodingKey::from_secret(SECRET);
    let hs256 = bearer(&token(Algorithm::HS256, &hs, "bench"));

    let mut group = c.benchmark_group("jwt");
    let mut bare = unary_service(Code::Ok);
    group.bench_function("bare", |b| b.iter(|| drive(&mut bare, request(&hs256))));

    let mut uncached = layer(false).layer(unary_service(Code::Ok));
    group.bench_function("hs256/first_sight", |b| {
        b.iter(|| drive(&mut uncached, request(&hs256)))
    });

    // First sight with the cache on: a token never seen before every time (the cache full).
    let fresh: Vec<HeaderValue> = (0..50_000)
        .map(|i| bearer(&token(Algorithm::HS256, &hs, &format!("user-{i}"))))
        .collect();
    let mut cached = layer(true).layer(unary_service(Code::Ok));
    let mut next = fresh.iter().cycle();
    group.bench_function("hs256/first_sight_cache_on", |b| {
        b.iter(|| drive(&mut cached, request(next.next().unwrap())))
    });

    let mut cached = layer(true).layer(unary_service(Code::Ok));
    group.bench_function("hs256/cache_hit", |b| {
        b.iter(|| drive(&mut cached, request(&hs256)))
    });

    let asymmetric = [
        (
            "rs256",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(include_bytes!("../tests/keys/rsa.pem")).unwrap(),
        ),
        (
            "es256",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(include_bytes!("../tests/keys/ec256.pem")).unwrap(),
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(include_bytes!("../tests/keys/ed25519.pem")).unwrap(),
        ),
    ];
    for (name, alg, key) in &asymmetric {
        let value = bearer(&token(*alg, key, "bench"));
        group.bench_function(format!("{name}/first_sight"), |b| {
            b.iter(|| drive(&mut uncached, request(&value)))
        });
    }
    group.finish();

    // The overhead itself, interleaved with the bare service.
    let mut group = c.benchmark_group("jwt_overhead");
    let mut bare = unary_service(Code::Ok);
    let mut cached = layer(true).layer(unary_service(Code::Ok));
    group.bench_function("hs256/cache_hit", |b| {
        overhead(
            b,
            || drive(&mut bare, request(&hs256)),
            || drive(&mut cached, request(&hs256)),
        )
    });
    group.bench_function("hs256/first_sight", |b| {
        overhead(
            b,
            || drive(&mut bare, request(&hs256)),
            || drive(&mut uncached, request(&hs256)),
        )
    });
    let mut cached = layer(true).layer(unary_service(Code::Ok));
    group.bench_function("hs256/first_sight_cache_on", |b| {
        overhead(
            b,
            || drive(&mut bare, request(&hs256)),
            || drive(&mut cached, request(next.next().unwrap())),
        )
    });
    for (name, alg, key) in &asymmetric {
        let value = bearer(&token(*alg, key, "bench"));
        group.bench_function(format!("{name}/first_sight"), |b| {
            overhead(
                b,
                || drive(&mut bare, request(&hs256)),
                || drive(&mut uncached, request(&value)),
            )
        });
    }
    group.finish();

    // The crate doing the same job: jsonwebtoken::decode with the same checks, timed as the
    // overheads are (median chunk), against nothing.
    let mut group = c.benchmark_group("jsonwebtoken_decode");
    let decoding = [
        (
            "hs256",
            Algorithm::HS256,
            hs.clone(),
            DecodingKey::from_secret(SECRET),
        ),
        (
            "rs256",
            Algorithm::RS256,
            asymmetric[0].2.clone(),
            DecodingKey::from_rsa_pem(include_bytes!("../tests/keys/rsa.pub.pem")).unwrap(),
        ),
        (
            "es256",
            Algorithm::ES256,
            asymmetric[1].2.clone(),
            DecodingKey::from_ec_pem(include_bytes!("../tests/keys/ec256.pub.pem")).unwrap(),
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            asymmetric[2].2.clone(),
            DecodingKey::from_ed_pem(include_bytes!("../tests/keys/ed25519.pub.pem")).unwrap(),
        ),
    ];
    for (name, alg, encoding, decoding) in &decoding {
        let token = token(*alg, encoding, "bench");
        let mut validation = Validation::new(*alg);
        validation.set_issuer(&["https://issuer.bench"]);
        validation.set_audience(&["greeter"]);
        group.bench_function(*name, |b| {
            overhead(
                b,
                || {},
                || {
                    black_box(
                        jsonwebtoken::decode::<palisade_jwt::StandardClaims>(
                            black_box(&token),
                            decoding,
                            &validation,
                        )
                        .unwrap(),
                    );
                },
            )
        });
    }
    group.finish();
}

criterion_group!(benches, jwt);
criterion_main!(benches);
