//! The admission middleware (`Admit` with a scripted admission): every decision — pass,
//! admit and watch, reject, wait (then any of them, or wait again) — the rejection's mark and
//! the record's `rejected_by`, the head hook, the service clone a waiting call takes, skipping,
//! and every way an admitted or waiting RPC can end early (drop, panic). Waits run on paused
//! tokio time.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, Request, Response};
use palisade_core::{
    Call, Code, LocalRejection, Matcher, Rejection, Rpc, Side,
    admit::{Admission, Admit, AdmitLayer, Admitted, Decision, OnHead},
    outcome::Source,
};
use palisade_demo::frames::{self, GrpcBody};
use tower_layer::Layer;
use tower_service::Service;

use super::{Recorder, collect, poll_catching};

type Script = dyn Fn(Option<u32>, &mut Call<'_>) -> Decision<Scripted> + Send + Sync;

/// An admission whose decisions a test writes: `decide(None, call)` at the start,
/// `decide(Some(waited), call)` after each wait.
struct Scripted {
    side: Side,
    decide: Box<Script>,
    asked: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn new(
        decide: impl Fn(Option<u32>, &mut Call<'_>) -> Decision<Scripted> + Send + Sync + 'static,
    ) -> Self {
        Self {
            side: Side::Server,
            decide: Box::new(decide),
            asked: Arc::default(),
            abandoned: Arc::default(),
        }
    }
}

/// A wait of `after` (paused time), resolving to `value`.
fn wait(after: Duration, value: u32) -> Wait {
    Box::pin(async move {
        tokio::time::sleep(after).await;
        value
    })
}

type Wait = Pin<Box<dyn Future<Output = u32> + Send>>;

/// Records whether the response went on past its head, and writes a header into it.
struct Head(Arc<Mutex<Vec<bool>>>);

impl OnHead for Head {
    fn on_head(self, headers: &mut HeaderMap, streaming: bool) {
        headers.insert("x-admitted", HeaderValue::from_static("yes"));
        self.0.lock().unwrap().push(streaming);
    }
}

impl Admission for Scripted {
    const NAME: &'static str = "scripted";
    type Observer = Recorder;
    type Head = Head;
    type Wait = Wait;

    fn side(&self) -> Side {
        self.side
    }

    fn admit(&self, call: &mut Call<'_>) -> Decision<Self> {
        self.asked.lock().unwrap().push(call.path().to_owned());
        (self.decide)(None, call)
    }

    fn resume(&self, waited: u32, call: &mut Call<'_>) -> Decision<Self> {
        (self.decide)(Some(waited), call)
    }

    fn abandon(&self, _: Pin<&mut Wait>, call: &mut Call<'_>) {
        self.abandoned.lock().unwrap().push(call.path().to_owned());
    }
}

/// A handler answering every call with one message and `OK` trailers, counting its calls,
/// and telling which instance served each (0 the first; every clone gets the next number).
struct Handler {
    id: usize,
    clones: Arc<AtomicUsize>,
    served_by: Arc<Mutex<Vec<usize>>>,
}

impl Handler {
    fn new() -> Self {
        Self {
            id: 0,
            clones: Arc::default(),
            served_by: Arc::default(),
        }
    }

    fn served_by(&self) -> Vec<usize> {
        self.served_by.lock().unwrap().clone()
    }
}

impl Clone for Handler {
    fn clone(&self) -> Self {
        Self {
            id: self.clones.fetch_add(1, Ordering::Relaxed) + 1,
            clones: self.clones.clone(),
            served_by: self.served_by.clone(),
        }
    }
}

impl<B> Service<Request<B>> for Handler {
    type Response = Response<GrpcBody>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Response<GrpcBody>, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.served_by.lock().unwrap().push(self.id);
        if request.uri().path().ends_with("/Empty") {
            return std::future::ready(Ok(Response::new(GrpcBody::default())));
        }
        let body = if request.uri().path().ends_with("/Fails") {
            let mut response = Response::new(GrpcBody::default());
            let headers = frames::trailers(Code::NotFound, Some("no such thing"));
            response.headers_mut().extend(headers);
            return std::future::ready(Ok(response));
        } else {
            GrpcBody::unary(b"hi", Code::Ok)
        };
        std::future::ready(Ok(Response::new(body)))
    }
}

fn request(path: &str) -> Request<()> {
    Request::post(path).body(()).unwrap()
}

/// A request carrying a per-RPC record of `side`, and the record.
fn recorded(path: &str, side: Side) -> (Request<()>, Rpc) {
    let mut request = request(path);
    let record = Rpc::get_or_insert(request.extensions_mut(), side).clone();
    (request, record)
}

fn service(admission: Scripted, handler: &Handler) -> Admit<Handler, Scripted> {
    AdmitLayer::new(admission).layer(handler.clone())
}

#[tokio::test]
async fn a_passed_rpc_reaches_the_inner_service_unchanged_and_unwatched() {
    let handler = Handler::new();
    let mut service = service(Scripted::new(|_, _| Decision::Pass), &handler);
    let future = service.call(request("/pkg.Svc/Get"));
    assert!(!future.is_rejected() && !future.is_waiting());
    let response = future.await.unwrap();
    assert!(response.headers().get("x-admitted").is_none());
    let collected = collect(response.into_body()).await.unwrap();
    assert_eq!(&collected.data[..], &frames::message(b"hi")[..]);
    assert_eq!(collected.trailers.unwrap()["grpc-status"], "0");
    assert_eq!(handler.served_by().len(), 1);
}

#[tokio::test]
async fn a_rejection_answers_trailers_only_names_the_layer_and_fills_the_record() {
    let handler = Handler::new();
    let mut service = service(
        Scripted::new(|_, _| Decision::Reject(Rejection::new(Code::PermissionDenied, "no"))),
        &handler,
    );
    let (request, record) = recorded("/pkg.Svc/Get", Side::Server);
    let future = service.call(request);
    assert!(future.is_rejected());
    let response = future.await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(response.headers()["grpc-message"], "no");
    assert_eq!(LocalRejection::of(&response).unwrap().layer(), "scripted");
    assert_eq!(record.rejected_by(), Some("scripted"));
    assert!(
        handler.served_by().is_empty(),
        "the inner service never saw it"
    );
    let collected = collect(response.into_body()).await.unwrap();
    assert!(collected.data.is_empty() && collected.trailers.is_none());
}

#[tokio::test]
async fn a_rejection_that_names_its_layer_keeps_it_and_a_record_of_the_other_side_stays_empty() {
    let handler = Handler::new();
    let mut service = service(
        Scripted::new(|_, _| {
            Decision::Reject(Rejection::new(Code::Unavailable, "shed").by("limit"))
        }),
        &handler,
    );
    let (request, client_record) = recorded("/pkg.Svc/Get", Side::Client);
    let response = service.call(request).await.unwrap();
    assert_eq!(LocalRejection::of(&response).unwrap().layer(), "limit");
    assert_eq!(client_record.rejected_by(), None, "not this stack's record");
}

#[tokio::test]
async fn an_admitted_rpc_is_watched_to_its_end_and_its_head_hooked() {
    let handler = Handler::new();
    let ends = Recorder::default();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let (observer, head) = (ends.clone(), heads.clone());
    let admission = Scripted::new(move |_, _| {
        Decision::Admit(
            Admitted::new()
                .observe(observer.clone())
                .on_head(Head(head.clone())),
        )
    });
    let mut service = service(admission, &handler);
    let response = service.call(request("/pkg.Svc/Get")).await.unwrap();
    assert_eq!(response.headers()["x-admitted"], "yes");
    assert_eq!(*heads.lock().unwrap(), [true], "a streaming response");
    assert!(ends.ends().is_empty(), "not over at the head");
    collect(response.into_body()).await.unwrap();
    let (outcome, counts) = ends.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Ok, Source::Trailers)
    );
    assert_eq!(counts.messages, 1);

    // A trailers-only answer: over at the head, which is not streaming.
    let response = service.call(request("/pkg.Svc/Fails")).await.unwrap();
    assert_eq!(*heads.lock().unwrap(), [true, false]);
    assert_eq!(response.headers()["grpc-status"], "5");
    assert_eq!(ends.ends().len(), 2);
    assert_eq!(ends.ends()[1].0.code(), Code::NotFound);

    // An empty 200 without a status ended at its head as well: not streaming either.
    let response = service.call(request("/pkg.Svc/Empty")).await.unwrap();
    assert_eq!(*heads.lock().unwrap(), [true, false, false]);
    assert!(response.headers().get("grpc-status").is_none());
    assert_eq!(ends.ends().len(), 3);
    assert_eq!(ends.ends()[2].0.source(), Source::MissingStatus);
}

#[tokio::test]
async fn an_admitted_rpc_dropped_before_its_answer_is_cancelled_and_a_panic_is_internal() {
    // The inner future never resolves; the caller goes away.
    let ends = Recorder::default();
    let observer = ends.clone();
    let layer = AdmitLayer::new(Scripted::new(move |_, _| {
        Decision::observe(observer.clone())
    }));
    let mut service = layer.layer(tower::service_fn(|_: Request<()>| {
        std::future::pending::<Result<Response<GrpcBody>, std::convert::Infallible>>()
    }));
    let future = service.call(request("/pkg.Svc/Get"));
    assert!(matches!(poll_catching(future), Ok(Poll::Pending)));
    assert_eq!(ends.single().0.code(), Code::Cancelled);

    // The inner service's own `call` panics.
    let ends = Recorder::default();
    let observer = ends.clone();
    let layer = AdmitLayer::new(Scripted::new(move |_, _| {
        Decision::observe(observer.clone())
    }));
    let mut service = layer.layer(tower::service_fn(|_: Request<()>| -> std::future::Ready<
        Result<Response<GrpcBody>, std::convert::Infallible>,
    > { panic!("interceptor bug") }));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(service.call(request("/pkg.Svc/Get")))
    }));
    assert!(caught.is_err(), "the panic goes on to the caller");
    let (outcome, _) = ends.single();
    assert_eq!(
        (outcome.code(), outcome.source()),
        (Code::Internal, Source::Panicked)
    );
}

#[tokio::test(start_paused = true)]
async fn a_wait_decides_later_and_the_call_goes_to_the_service_that_was_ready() {
    let handler = Handler::new();
    let admission = Scripted::new(|waited, call| match waited {
        None if call.path() == "/pkg.Svc/Now" => Decision::Pass,
        None => Decision::Wait(wait(Duration::from_millis(50), 7)),
        Some(7) => Decision::Pass,
        Some(other) => panic!("resumed with {other}"),
    });
    let abandoned = admission.abandoned.clone();
    let mut service = service(admission, &handler);
    let future = service.call(request("/pkg.Svc/Get"));
    assert!(future.is_waiting());
    // The waiting call took the ready service (the layer's own clone, 1); the layer keeps a
    // fresh clone (2), which serves the next call at once.
    let next = service.call(request("/pkg.Svc/Now")).await.unwrap();
    collect(next.into_body()).await.unwrap();
    assert_eq!(handler.served_by(), [2]);

    let start = tokio::time::Instant::now();
    let response = future.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(handler.served_by(), [2, 1]);
    let collected = collect(response.into_body()).await.unwrap();
    assert_eq!(collected.trailers.unwrap()["grpc-status"], "0");
    assert!(
        abandoned.lock().unwrap().is_empty(),
        "resumed, not abandoned"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_admission_may_wait_again_then_reject_and_the_record_names_it() {
    let handler = Handler::new();
    let admission = Scripted::new(|waited, call| match waited {
        None => Decision::Wait(wait(Duration::from_millis(10), 1)),
        Some(1) => {
            // The request head is there again at each resume.
            assert_eq!(call.path(), "/pkg.Svc/Get");
            Decision::Wait(wait(Duration::from_millis(20), 2))
        }
        Some(_) => Decision::Reject(Rejection::new(Code::ResourceExhausted, "over quota")),
    });
    let mut service = service(admission, &handler);
    let (request, record) = recorded("/pkg.Svc/Get", Side::Server);
    let start = tokio::time::Instant::now();
    let response = service.call(request).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    assert_eq!(response.headers()["grpc-status"], "8");
    assert_eq!(LocalRejection::of(&response).unwrap().layer(), "scripted");
    assert_eq!(record.rejected_by(), Some("scripted"));
    assert!(handler.served_by().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_waiting_is_abandoned_once_with_its_request() {
    let handler = Handler::new();
    let ends = Recorder::default();
    let observer = ends.clone();
    let admission = Scripted::new(move |waited, _| match waited {
        None => Decision::Wait(wait(Duration::from_secs(1), 0)),
        Some(_) => Decision::observe(observer.clone()),
    });
    let abandoned = admission.abandoned.clone();
    let mut service = service(admission, &handler);
    let mut future = Box::pin(service.call(request("/pkg.Svc/Slow")));
    let polled = tokio::time::timeout(Duration::from_millis(10), future.as_mut()).await;
    assert!(polled.is_err(), "still waiting");
    drop(future);
    assert_eq!(*abandoned.lock().unwrap(), ["/pkg.Svc/Slow"]);
    assert!(handler.served_by().is_empty());
    assert!(ends.ends().is_empty(), "never admitted, never watched");

    // Resumed and admitted, then dropped: watched (cancelled), not abandoned.
    let handler = tower::service_fn(|_: Request<()>| {
        std::future::pending::<Result<Response<GrpcBody>, std::convert::Infallible>>()
    });
    let observer = ends.clone();
    let admission = Scripted::new(move |waited, _| match waited {
        None => Decision::Wait(wait(Duration::from_millis(5), 0)),
        Some(_) => Decision::observe(observer.clone()),
    });
    let abandoned = admission.abandoned.clone();
    let mut service = AdmitLayer::new(admission).layer(handler);
    let mut future = Box::pin(service.call(request("/pkg.Svc/Slow")));
    let polled = tokio::time::timeout(Duration::from_millis(50), future.as_mut()).await;
    assert!(polled.is_err(), "admitted, the handler never answers");
    drop(future);
    assert!(abandoned.lock().unwrap().is_empty());
    assert_eq!(ends.single().0.code(), Code::Cancelled);
}

#[tokio::test]
async fn skipped_rpcs_never_reach_the_admission() {
    let handler = Handler::new();
    let admission = Scripted::new(|_, _| Decision::Reject(Rejection::new(Code::Unavailable, "x")));
    let asked = admission.asked.clone();
    let layer = AdmitLayer::with_skip(admission, Some(Matcher::health_and_reflection()));
    let mut service = layer.layer(handler.clone());
    let response = service
        .call(request("/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert!(response.headers().get("grpc-status").is_none(), "passed");
    let response = service.call(request("/pkg.Svc/Get")).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(*asked.lock().unwrap(), ["/pkg.Svc/Get"]);
    assert_eq!(handler.served_by().len(), 1);
}
