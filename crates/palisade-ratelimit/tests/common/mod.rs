//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    num::NonZeroU32,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use http::{HeaderValue, Request, Response};
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use palisade_demo::frames::{GrpcBody, UnaryService, unary_service};
use palisade_ratelimit::Quota;
use tonic::Code;
use tower::{Service, ServiceExt};

pub const HELLO: &str = palisade_demo::SAY_HELLO;
pub const STREAM: &str = palisade_demo::SAY_HELLO_STREAM;

/// `rate` per second, bursts of `burst`.
pub fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap()).with_burst(NonZeroU32::new(burst).unwrap())
}

/// A request to `path`, with `x-api-key: key` when given.
pub fn request(path: &str, key: Option<&str>) -> Request<GrpcBody> {
    let mut request = Request::post(path).body(GrpcBody::default()).unwrap();
    if let Some(key) = key {
        request
            .headers_mut()
            .insert("x-api-key", HeaderValue::from_str(key).unwrap());
    }
    request
}

/// Whether the response is a rate-limit rejection (trailers-only `grpc-status` in the
/// headers); the unary service answers with its status in the trailers.
pub fn rejected<B>(response: &Response<B>) -> bool {
    match response.headers().get("grpc-status") {
        None => false,
        Some(status) => {
            assert_eq!(status, "8", "a rejection's code");
            true
        }
    }
}

/// Calls the service once.
pub async fn call<S, B>(service: &mut S, request: Request<GrpcBody>) -> Response<B>
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    service.ready().await.unwrap().call(request).await.unwrap()
}

/// Calls the service once; true when the call passed.
pub async fn passes<S, B>(service: &mut S, request: Request<GrpcBody>) -> bool
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    !rejected(&response)
}

/// The unary demo service, counting the calls that reach it and keeping the last
/// `grpc-timeout` it saw.
#[derive(Clone, Debug)]
pub struct Counting {
    inner: UnaryService,
    pub calls: Arc<AtomicUsize>,
    pub timeout: Arc<Mutex<Option<HeaderValue>>>,
}

impl Counting {
    pub fn new() -> Self {
        Self {
            inner: unary_service(Code::Ok),
            calls: Arc::default(),
            timeout: Arc::default(),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn last_timeout(&self) -> Option<HeaderValue> {
        self.timeout.lock().unwrap().clone()
    }
}

impl<B> Service<Request<B>> for Counting {
    type Response = Response<GrpcBody>;
    type Error = std::convert::Infallible;
    type Future = <UnaryService as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        *self.timeout.lock().unwrap() = request.headers().get("grpc-timeout").cloned();
        self.inner.call(request)
    }
}

/// A debugging recorder and its snapshotter.
pub fn recorder() -> (Arc<DebuggingRecorder>, Snapshotter) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    (Arc::new(recorder), snapshotter)
}

/// The counters of a snapshot (taking one resets the recorder's counters to zero).
pub struct Counters(Vec<(CompositeKey, u64)>);

impl Counters {
    pub fn take(snapshotter: &Snapshotter) -> Self {
        Counters(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter_map(|(key, _, _, value)| match value {
                    DebugValue::Counter(n) => Some((key, n)),
                    _ => None,
                })
                .collect(),
        )
    }

    /// The sum of the counters named `name` with these labels (others ignored); 0 if none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .iter()
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(_, n)| n)
            .sum()
    }
}

fn matches(key: &CompositeKey, name: &str, labels: &[(&str, &str)]) -> bool {
    key.kind() == MetricKind::Counter
        && key.key().name() == name
        && labels.iter().all(|(k, v)| {
            key.key()
                .labels()
                .any(|label| label.key() == *k && label.value() == *v)
        })
}

/// A deterministic pseudo-random sequence (no rand dependency).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// `n` an hour, bursts of `n`: nothing comes back during a test.
pub fn per_hour(n: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(n).unwrap())
}

/// A backend whose limits named `gate` never answer while the gate is closed (a store that
/// hangs) and allow every call once it is open; the other limits are local.
#[derive(Clone, Debug, Default)]
pub struct Gated {
    local: palisade_ratelimit::backend::Local,
    open: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug)]
struct GateLimiter(Arc<std::sync::atomic::AtomicBool>);

impl Gated {
    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

impl palisade_ratelimit::backend::Backend for Gated {
    fn limiter(
        &self,
        spec: &palisade_ratelimit::backend::LimiterSpec,
    ) -> Arc<dyn palisade_ratelimit::backend::Limiter> {
        if spec.id().starts_with("gate/") {
            Arc::new(GateLimiter(self.open.clone()))
        } else {
            self.local.limiter(spec)
        }
    }
}

impl palisade_ratelimit::backend::Limiter for GateLimiter {
    fn acquire(
        &self,
        _: &palisade_ratelimit::backend::BucketKey<'_>,
        _: NonZeroU32,
    ) -> palisade_ratelimit::backend::Acquire {
        use palisade_ratelimit::backend::{Acquire, Decision};
        if self.0.load(Ordering::SeqCst) {
            Acquire::Ready(Decision::allowed(1, 1, std::time::Duration::ZERO))
        } else {
            Acquire::Pending(Box::pin(std::future::pending()))
        }
    }
}
