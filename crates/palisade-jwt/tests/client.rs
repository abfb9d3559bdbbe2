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
use palisade_jwt::JwtAuthLayer;
use palisade_jwt::client::{Token, TokenSource, token_fn};
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
    let layer = JwtAuthLayer::client()
        .bearer("abc.def.ghi")
        .build()
        .unwrap();
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
    assert!(matches!(
        JwtAuthLayer::client().bearer("bad\ntoken").build(),
        Err(palisade_jwt::ConfigError::InvalidToken)
    ));
}

/// A source counting its calls, minting `token-N`, each living `ttl`, held until `gate` gives a permit.
#[derive(Clone)]
struct Counting {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    ttl: Duration,
    /// How many tokens it gave.
    given: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Counting {
    fn new(ttl: Duration, permits: usize) -> Self {
        Counting {
            calls: Arc::default(),
            gate: Arc::new(Semaphore::new(permits)),
            ttl,
            given: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Waits until it gave `n` tokens.
    async fn fetched(&self, n: usize) {
        let _ = self.given.subscribe().wait_for(|given| *given >= n).await;
    }
}

impl TokenSource for Counting {
    async fn token(&self) -> Result<Token, palisade_jwt::client::BoxError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.gate.acquire().await?.forget();
        // A slow source: calls pile up behind the refresh.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.given.send_modify(|given| *given += 1);
        Ok(Token::new(format!("token-{n}")).expires_in(self.ttl))
    }
}

#[tokio::test(start_paused = true)]
async fn many_concurrent_calls_cause_one_refresh() {
    let source = Counting::new(Duration::from_secs(300), 100);
    let layer = JwtAuthLayer::client()
        .source(source.clone())
        .build()
        .unwrap();
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
    let layer = JwtAuthLayer::client()
        .source(source.clone())
        .refresh_before(Duration::from_secs(30))
        .build()
        .unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 1, "fresh: no refresh");

    // Due for refresh, still valid: the first call starts the refresh (held at the gate) in
    // the background; it and the others carry on with the current token at once.
    tokio::time::advance(Duration::from_secs(2)).await;
    let ten = async {
        for _ in 0..10 {
            service.clone().oneshot(request()).await.unwrap();
        }
    };
    // Paused time: the timeout fires only if a call waits for the held refresh.
    tokio::time::timeout(Duration::from_secs(1), ten)
        .await
        .expect("no call waits for the refresh");
    assert_eq!(layer.refreshes(), 2, "one refresh in flight");
    source.gate.add_permits(1);
    source.fetched(2).await;
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 13);
    assert!(seen[..12].iter().all(|v| v == "Bearer token-1"), "{seen:?}");
    assert_eq!(seen[12], "Bearer token-2");
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
    let layer = JwtAuthLayer::client().source(source).build().unwrap();
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
    // A call right after does not ask again (backoff); a call after the backoff does.
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(30)).await;
    service.clone().oneshot(request()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_not_sent() {
    let source = Counting::new(Duration::from_secs(10), 100);
    let layer = JwtAuthLayer::client()
        .source(source.clone())
        .refresh_before(Duration::ZERO)
        .build()
        .unwrap();
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

/// A source counting its calls and answering at once: `Ok(make(n))` or an error when `make`
/// gives `None`.
fn counted(
    make: impl Fn(usize) -> Option<Token> + Send + Sync + 'static,
) -> (Arc<AtomicUsize>, impl TokenSource) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let make = Arc::new(make);
    let source = token_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let token = make(n);
        async move { token.ok_or_else(|| "identity provider down".into()) }
    });
    (calls, source)
}

/// The `grpc-message` of a local rejection, or `""`.
fn rejection<B>(response: &Response<B>) -> &str {
    response
        .headers()
        .get("grpc-message")
        .map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn tokens_shorter_than_the_margin_are_refreshed_halfway_not_on_every_call() {
    // 20 s tokens with the default 30 s margin: refreshed when half the lifetime has passed.
    let source = Counting::new(Duration::from_secs(20), 1_000);
    let layer = JwtAuthLayer::client()
        .source(source.clone())
        .build()
        .unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    for _ in 0..50 {
        service.clone().oneshot(request()).await.unwrap();
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 1, "50 calls at once");
    // One call a second for 50 s: a refresh about every 10 s, each token sent while valid.
    for _ in 0..50 {
        tokio::time::advance(Duration::from_secs(1)).await;
        service.clone().oneshot(request()).await.unwrap();
    }
    let asked = source.calls.load(Ordering::SeqCst);
    assert!((5..=7).contains(&asked), "asked {asked} times");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 100);
    assert!(
        seen.iter().all(|v| v.starts_with("Bearer token-")),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_is_asked_again_only_after_a_bounded_backoff() {
    let (calls, source) = counted(|_| None);
    let layer = JwtAuthLayer::client().source(source).build().unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    // 100 calls over one second: 100 ms doubling (with jitter) allows a handful of attempts.
    for _ in 0..100 {
        let response = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "16");
        assert_eq!(rejection(&response), "token unavailable");
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let asked = calls.load(Ordering::SeqCst);
    assert!((2..=6).contains(&asked), "asked {asked} times in 1 s");
    assert!(
        seen.lock().unwrap().is_empty(),
        "the channel was never called"
    );
    // However long it fails, the source is asked again at most 30 s after the last attempt.
    for _ in 0..40 {
        tokio::time::advance(Duration::from_secs(30)).await;
        let before = calls.load(Ordering::SeqCst);
        service.clone().oneshot(request()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_the_current_token_while_it_is_valid() {
    // The first token lives 60 s; then the source fails until it is asked the 20th time.
    let (calls, source) = counted(|n| {
        (n == 1 || n >= 20)
            .then(|| Token::new(format!("token-{n}")).expires_in(Duration::from_secs(60)))
    });
    let layer = JwtAuthLayer::client().source(source).build().unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    // Due for refresh from 30 s; the refreshes fail; every call still goes out with token-1.
    for _ in 0..280 {
        let response = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(rejection(&response), "");
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let asked = calls.load(Ordering::SeqCst);
    assert!((4..=12).contains(&asked), "asked {asked} times");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 281);
    assert!(seen.iter().all(|v| v == "Bearer token-1"), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_outlives_the_call_that_started_it() {
    // The refresh started by a call that goes away still completes, for the next calls.
    let source = Counting::new(Duration::from_secs(60), 1);
    let layer = JwtAuthLayer::client()
        .source(source.clone())
        .build()
        .unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    // Expired: this call waits for the refresh (held at the gate), then is dropped.
    let waiting = tokio::spawn(service.clone().oneshot(request()));
    while source.calls.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    source.gate.add_permits(1);
    for _ in 0..10 {
        service.clone().oneshot(request()).await.unwrap();
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 2, "one fetch, not two");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 11);
    assert!(seen[1..].iter().all(|v| v == "Bearer token-2"), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_calls_after_expiry_cause_one_fetch() {
    let source = Counting::new(Duration::from_secs(20), 100);
    let layer = JwtAuthLayer::client()
        .source(source.clone())
        .build()
        .unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    // Due for refresh (halfway) and still valid: 100 calls at once, one fetch, none waits.
    tokio::time::advance(Duration::from_secs(11)).await;
    join_all((0..100).map(|_| service.clone().oneshot(request()))).await;
    assert_eq!(layer.refreshes(), 2);
    source.fetched(2).await;
    // Expired: 100 calls at once wait for one fetch.
    tokio::time::advance(Duration::from_secs(60)).await;
    join_all((0..100).map(|_| service.clone().oneshot(request()))).await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 3);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 201);
    assert!(
        seen[101..].iter().all(|v| v == "Bearer token-3"),
        "{seen:?}"
    );
}

/// A JWT-shaped token whose payload is `payload` (unsigned: the client never verifies).
fn jwt_with(payload: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(payload))
}

#[tokio::test(start_paused = true)]
async fn absurd_expiries_never_panic() {
    let far = std::time::SystemTime::now() + Duration::from_secs(400 * 365 * 86_400);
    let tokens = [
        Token::jwt(jwt_with(&format!(r#"{{"exp":{}}}"#, u64::MAX))),
        Token::jwt(jwt_with(&format!(r#"{{"exp":{}}}"#, i64::MAX as u64 + 1))),
        Token::jwt(jwt_with(r#"{"exp":1.8e19}"#)),
        Token::jwt(jwt_with(r#"{"exp":1e300}"#)),
        Token::jwt(jwt_with(r#"{"exp":-5}"#)),
        Token::new("in").expires_in(Duration::MAX),
        Token::new("at").expires_at(far),
    ];
    for token in tokens {
        let debug = format!("{token:?}");
        let (calls, source) = counted(move |_| Some(token.clone()));
        let layer = JwtAuthLayer::client().source(source).build().unwrap();
        let seen = Seen::default();
        let service = layer.layer(recording(seen.clone()));
        for _ in 0..10 {
            service.clone().oneshot(request()).await.unwrap();
            tokio::time::advance(Duration::from_secs(3600)).await;
        }
        // Valid for centuries (or, with an exp that is no date, for as long as no exp).
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{debug}");
        assert_eq!(seen.lock().unwrap().len(), 10, "{debug}");
    }
}

#[test]
fn a_minter_with_an_endless_ttl_caps_exp() {
    let minter = palisade_jwt::mint::HmacMinter::hs256("s").ttl(Duration::MAX);
    let token = minter.mint().unwrap();
    let payload = token.value().split('.').nth(1).unwrap();
    use base64::Engine;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    // 9999-12-31T23:59:59Z, the last second most date libraries can represent.
    assert_eq!(claims["exp"], 253_402_300_799u64);
    let far = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_000);
    let late = minter.mint_at(far).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(late.value().split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(claims["exp"], 253_402_300_799u64);
    assert_eq!(claims["iat"], 253_402_300_000u64);
}

/// During an outage, calls with a valid token due for refresh skip the refresh lock (checked
/// with atomics; the unit test in `src/client.rs` counts the lock): many calls at once, during
/// the fetch and during the backoff, all carry the current token, the source is asked once per
/// backoff, and once the token expires calls are answered at once without reaching the channel.
#[tokio::test(start_paused = true)]
async fn many_calls_during_a_backoff_carry_the_valid_token_until_it_expires() {
    let (calls, source) = counted(|n| {
        (n == 1).then(|| Token::new(format!("token-{n}")).expires_in(Duration::from_secs(60)))
    });
    let layer = JwtAuthLayer::client().source(source).build().unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    service.clone().oneshot(request()).await.unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    // Due for refresh; every refresh fails. Waves of 1000 calls at once, 50 ms apart.
    for _ in 0..20 {
        let responses = join_all((0..1_000).map(|_| service.clone().oneshot(request()))).await;
        assert!(
            responses
                .iter()
                .all(|r| rejection(r.as_ref().unwrap()).is_empty()),
            "every call goes out"
        );
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    let asked = calls.load(Ordering::SeqCst);
    // 1 s of backoffs from 100 ms doubling (each at least half of that), plus the first fetch.
    assert!((3..=7).contains(&asked), "asked {asked} times");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 20_001);
        assert!(seen.iter().all(|v| v == "Bearer token-1"));
    }
    // Past its expiry, no call carries it: answered at once, the channel not called.
    tokio::time::advance(Duration::from_secs(30)).await;
    let responses = join_all((0..1_000).map(|_| service.clone().oneshot(request()))).await;
    for response in &responses {
        let response = response.as_ref().unwrap();
        assert_eq!(response.headers()["grpc-status"], "16");
        assert_eq!(rejection(response), "token unavailable");
    }
    assert_eq!(seen.lock().unwrap().len(), 20_001);
}

/// Outside a tokio runtime there is nothing to spawn the fetch on: the call that needs a token
/// fetches it itself, and a failing source is answered `UNAUTHENTICATED` at once.
#[test]
fn without_a_runtime_the_call_fetches_the_token_itself() {
    use futures_util::FutureExt;
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let layer = JwtAuthLayer::client()
        .source(token_fn(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Ok(Token::new("inline")),
                    _ => Err("not asked again".into()),
                }
            }
        }))
        .build()
        .unwrap();
    let seen = Seen::default();
    let service = layer.layer(recording(seen.clone()));
    for _ in 0..2 {
        let response = service.clone().oneshot(request()).now_or_never();
        assert!(response.expect("no wait outside a runtime").is_ok());
    }
    assert_eq!(*seen.lock().unwrap(), ["Bearer inline", "Bearer inline"]);
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the token is kept");

    let layer = JwtAuthLayer::client()
        .source(token_fn(|| async { Err("down".into()) }))
        .build()
        .unwrap();
    let service = layer.layer(recording(seen.clone()));
    let response = service.oneshot(request()).now_or_never().unwrap().unwrap();
    assert_eq!(response.headers()["grpc-status"], "16");
    assert_eq!(rejection(&response), "token unavailable");
    assert_eq!(seen.lock().unwrap().len(), 2, "the channel is not called");
}
