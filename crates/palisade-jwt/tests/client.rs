//! The client layer: static tokens, one refresh in flight however many calls wait, refresh
//! before expiry, failing sources.

mod common;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::join_all;
use http::{Request, Response};
use palisade_jwt::client::{AttachTokenLayer, Token, TokenSource, token_fn};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt, service_fn};

type Seen = Arc<Mutex<Vec<String>>>;

/// An inner service recording the `authorization` it sees.
fn recording(
    seen: Seen,
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |request: Request<String>| {
        let value = request
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        seen.lock().unwrap().push(value);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    })
}

fn request() -> Request<String> {
    Request::post("/palisade.demo.v1.Greeter/SayHello")
        .body(String::new())
        .unwrap()
}

#[tokio::test]
async fn a_static_token_is_attached_as_sensitive() {
    let layer = AttachTokenLayer::bearer("abc.def.ghi").unwrap();
    let captured = Arc::new(Mutex::new(None));
    let captured2 = captured.clone();
    let service = layer.layer(service_fn(move |request: Request<String>| {
        *captured2.lock().unwrap() = request.headers().get("authorization").cloned();
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    service.oneshot(request()).await.unwrap();
    let value = captured.lock().unwrap().clone().unwrap();
    assert_eq!(value, "Bearer abc.def.ghi");
    assert!(value.is_sensitive());
    assert!(AttachTokenLayer::bearer("bad\ntoken").is_err());
}

/// A source counting its calls, minting `token-N`, each living `ttl`, held until `gate` gives a permit.
#[derive(Clone)]
struct Counting {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    ttl: Duration,
}

impl Counting {
    fn new(ttl: Duration, permits: usize) -> Self {
        Counting {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(permits)),
            ttl,
        }
    }
}

impl TokenSource for Counting {
    async fn token(&self) -> Result<Token, palisade_jwt::client::BoxError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.gate.acquire().await?.forget();
        // A slow source: calls pile up behind the refresh.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Token::new(format!("token-{n}")).expires_in(self.ttl))
    }
}

#[tokio::test(start_paused = true)]
async fn many_concurrent_calls_cause_one_refresh() {
    let source = Counting::new(Duration::from_secs(300), 100);
    let layer = AttachTokenLayer::builder(source.clone()).build();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    let calls = (0..100).map(|_| service.clone().oneshot(request()));
    join_all(calls)
        .await
        .into_iter()
        .for_each(|r| assert!(r.is_ok()));
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.refreshes(), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().all(|v| v == "Bearer token-1"));
}

#[tokio::test(start_paused = true)]
async fn the_token_is_refreshed_before_it_expires_while_calls_carry_on() {
    // Lives 60 s, refreshed from 30 s before expiry; the second refresh is held at the gate.
    let source = Counting::new(Duration::from_secs(60), 1);
    let layer = AttachTokenLayer::builder(source.clone())
        .refresh_before(Duration::from_secs(30))
        .build();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 1, "fresh: no refresh");

    // Due for refresh, still valid: one call refreshes (and waits at the gate), the others
    // carry on with the current token at once.
    tokio::time::advance(Duration::from_secs(2)).await;
    let refreshing = tokio::spawn(service.clone().oneshot(request()));
    tokio::task::yield_now().await;
    for _ in 0..10 {
        service.clone().oneshot(request()).await.unwrap();
    }
    assert_eq!(
        source.calls.load(Ordering::SeqCst),
        2,
        "one refresh in flight"
    );
    assert!(!refreshing.is_finished());
    source.gate.add_permits(1);
    refreshing.await.unwrap().unwrap();
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 14);
    assert!(seen[..12].iter().all(|v| v == "Bearer token-1"), "{seen:?}");
    assert_eq!(seen[12..], ["Bearer token-2", "Bearer token-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_is_unauthenticated_and_asked_once_per_wave() {
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let source = token_fn(move || {
        calls2.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err::<Token, _>("identity provider down".into())
        }
    });
    let layer = AttachTokenLayer::builder(source).build();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    let responses = join_all((0..20).map(|_| service.clone().oneshot(request()))).await;
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.headers()["grpc-status"], "16");
        assert_eq!(response.headers()["grpc-message"], "token unavailable");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the channel was never called"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the waiters shared the failed refresh"
    );
    // A later call tries again.
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_not_sent() {
    let source = Counting::new(Duration::from_secs(10), 100);
    let layer = AttachTokenLayer::builder(source.clone())
        .refresh_before(Duration::ZERO)
        .build();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), ["Bearer token-1", "Bearer token-2"]);
}

#[test]
fn jwt_tokens_expire_at_their_exp() {
    let minted = palisade_jwt::mint::HmacMinter::hs256("s")
        .ttl(Duration::from_secs(120))
        .mint()
        .unwrap();
    let token = Token::jwt(minted.value());
    let debug = format!("{token:?}");
    assert!(debug.contains("At("), "{debug}");
    assert!(!debug.contains(minted.value()), "the token is redacted");
}
