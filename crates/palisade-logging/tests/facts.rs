//! The per-RPC record's facts in the finish event and the access-log line: `enduser.id` (the
//! subject an inner layer verified) and `palisade.rejected_by` (the layer that answered the
//! call itself), with the same names in both, absent when unknown — behind a real jwt layer.

use std::{
    convert::Infallible,
    io::{self, Write},
    sync::{Arc, Mutex},
};

use http::{Request, Response};
use http_body_util::BodyExt;
use palisade_core::{Code, Rejection, Rpc};
use palisade_demo::frames::{GrpcBody, message, trailers};
use palisade_jwt::{JwtAuthLayer, StandardClaims, mint::HmacMinter};
use palisade_logging::{LoggingLayer, RequestBody, writer::non_blocking};
use serde_json::Value;
use tower::{Layer, ServiceExt, service_fn};
use tracing_subscriber::prelude::*;

const SECRET: &str = "palisade-logging-facts-secret";

/// A shared in-memory sink.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<u8>>>);

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Handler = Arc<dyn Fn(&Request<RequestBody<GrpcBody>>) -> Response<GrpcBody> + Send + Sync>;

/// An OK reply with one message.
fn ok() -> Response<GrpcBody> {
    Response::new(GrpcBody::new(
        [message(b"hi")],
        Some(trailers(Code::Ok, None)),
    ))
}

/// The handler behind jwt: writes the verified subject into the record, as jwt itself will
/// (jwt's claims in the extensions are what it verified), then answers with `reply`.
fn writes_subject(reply: fn() -> Response<GrpcBody>) -> Handler {
    Arc::new(move |request| {
        if let (Some(rpc), Some(subject)) = (
            Rpc::of(request),
            request
                .extensions()
                .get::<StandardClaims>()
                .and_then(StandardClaims::subject),
        ) {
            // Whoever writes first (the handler here, or jwt), the subject is the same.
            rpc.set_subject(subject.into());
        }
        reply()
    })
}

fn request(token: Option<&str>) -> Request<GrpcBody> {
    let mut request = Request::post(palisade_demo::SAY_HELLO)
        .header("content-type", "application/grpc")
        .body(GrpcBody::new([message(b"\x0a\x01x")], None))
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

fn token(subject: &str) -> String {
    HmacMinter::hs256(SECRET)
        .subject(subject)
        .mint()
        .unwrap()
        .value()
        .to_owned()
}

/// Runs one call through `logging → jwt → handler` twice, and returns its finish record as
/// written both ways: the access-log line, and the `tracing` event as `fmt().json()` writes it
/// (flattened); each is checked to be exactly one valid JSON line.
async fn logged_both_ways(
    handler: Handler,
    request: impl Fn() -> Request<GrpcBody>,
) -> (Value, Value) {
    let json = Memory::default();
    let events = json.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(move || events.clone()),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let sink = Memory::default();
    let (writer, writer_guard) = non_blocking(sink.clone());
    let auth = JwtAuthLayer::server().secret(SECRET).build().unwrap();
    let stack = |layer: LoggingLayer<palisade_core::side::Server>| {
        let handler = Arc::clone(&handler);
        layer.layer(auth.layer(service_fn(
            move |request: Request<RequestBody<GrpcBody>>| {
                let response = handler(&request);
                async move { Ok::<_, Infallible>(response) }
            },
        )))
    };
    for service in [
        stack(LoggingLayer::server().access_log(writer).build()),
        stack(LoggingLayer::server().build()),
    ] {
        let response = service.oneshot(request()).await.unwrap();
        response.into_body().collect().await.unwrap();
    }
    drop(writer_guard);

    let line = one_line(&sink.text());
    // jwt logs its rejections at debug: only this crate's lines.
    let text = json.text();
    let ours: String = text
        .lines()
        .filter(|line| line.contains(r#""target":"palisade_logging""#))
        .map(|line| format!("{line}\n"))
        .collect();
    let event = one_line(&ours);
    // The token is never in any output.
    for output in [&sink.text(), &text] {
        assert!(!output.contains("Bearer"), "{output}");
        assert!(!output.contains(TOKEN_PREFIX), "{output}");
    }
    (line, event)
}

/// How every token starts (`{"` of its header in base64url): a leaked token would show it.
const TOKEN_PREFIX: &str = "eyJ";

impl Memory {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// The only line of `text`, parsed.
fn one_line(text: &str) -> Value {
    assert!(text.ends_with('\n'), "{text:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text:?}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// The fields both outputs must agree on (the line's `timestamp`, the event's clock differ).
fn facts(record: &Value) -> (Value, Value, Value) {
    (
        record["grpc.code"].clone(),
        record["enduser.id"].clone(),
        record["palisade.rejected_by"].clone(),
    )
}

#[tokio::test]
async fn an_authenticated_call_logs_its_subject_and_no_token() {
    let token = token("alice@example.com");
    let (line, event) = logged_both_ways(writes_subject(ok), || request(Some(&token))).await;
    for record in [&line, &event] {
        assert_eq!(
            facts(record),
            ("OK".into(), "alice@example.com".into(), Value::Null),
            "{record}"
        );
        assert!(record.get("palisade.rejected_by").is_none(), "{record}");
    }
}

#[tokio::test]
async fn a_rejected_call_names_the_layer_that_answered() {
    let (line, event) = logged_both_ways(writes_subject(ok), || request(None)).await;
    for record in [&line, &event] {
        assert_eq!(
            facts(record),
            ("Unauthenticated".into(), Value::Null, "jwt".into()),
            "{record}"
        );
        assert!(record.get("enduser.id").is_none(), "{record}");
    }
    // A token that does not verify: the same.
    let forged = HmacMinter::hs256("another secret")
        .subject("mallory")
        .mint()
        .unwrap();
    let (line, _) = logged_both_ways(writes_subject(ok), || request(Some(forged.value()))).await;
    assert_eq!(
        facts(&line),
        ("Unauthenticated".into(), Value::Null, "jwt".into())
    );
}

#[tokio::test]
async fn rejected_by_comes_from_the_record_else_from_the_response_s_mark() {
    let token = token("bob");
    // A layer inside that writes the record and answers with a plain error (a metered stream
    // cut by ratelimit does): from the record.
    let record_only: Handler = Arc::new(|request| {
        Rpc::of(request).unwrap().set_rejected_by("ratelimit");
        Response::new(GrpcBody::new(
            [],
            Some(trailers(Code::ResourceExhausted, Some("quota"))),
        ))
    });
    // A marked rejection from something that writes no record: from the mark.
    let mark_only: Handler = Arc::new(|_| {
        Rejection::new(Code::Unavailable, "circuit open")
            .by("breaker")
            .into_response()
    });
    // Both: the record's.
    let both: Handler = Arc::new(|request| {
        Rpc::of(request).unwrap().set_rejected_by("ratelimit");
        Rejection::new(Code::Unavailable, "busy")
            .by("breaker")
            .into_response()
    });
    for (handler, code, layer) in [
        (record_only, "ResourceExhausted", "ratelimit"),
        (mark_only, "Unavailable", "breaker"),
        (both, "Unavailable", "ratelimit"),
    ] {
        let (line, event) = logged_both_ways(handler, || request(Some(&token))).await;
        for record in [&line, &event] {
            assert_eq!(record["grpc.code"], code, "{record}");
            assert_eq!(record["palisade.rejected_by"], layer, "{record}");
        }
    }
}

#[tokio::test]
async fn a_hostile_subject_is_escaped_and_bounded() {
    // A token without a subject: jwt writes none, the handler's is the record's.
    let token = HmacMinter::hs256(SECRET).mint().unwrap().value().to_owned();
    // Quotes and braces that would close the line's object, a backslash, control
    // characters, U+2028, a multi-byte character, and 10 KiB after them.
    let hostile = "\"},\"level\":\"ERROR\\\n\r\t\u{0}\u{8}\u{c}\u{1f}\u{7f}\u{2028}é".to_owned()
        + &"x".repeat(10_240);
    let subject: Arc<str> = hostile.as_str().into();
    let writes_hostile: Handler = Arc::new(move |request| {
        Rpc::of(request).unwrap().set_subject(Arc::clone(&subject));
        ok()
    });
    let (line, event) = logged_both_ways(writes_hostile, || request(Some(&token))).await;
    for record in [&line, &event] {
        let logged = record["enduser.id"]
            .as_str()
            .unwrap_or_else(|| panic!("{record}"));
        // Bounded as `grpc.message` is: 512 bytes, cut on a character boundary, `…` added.
        assert!(logged.len() <= 512 + '…'.len_utf8(), "{}", logged.len());
        assert!(logged.ends_with('…'), "{logged}");
        assert!(
            hostile.starts_with(logged.trim_end_matches('…')),
            "{logged:?}"
        );
        assert_eq!(
            record["level"], "INFO",
            "the subject wrote no field: {record}"
        );
    }
}

#[tokio::test]
async fn a_subject_known_at_the_start_is_in_both_lines() {
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(tracing::level_filters::LevelFilter::INFO),
    );
    let sink = Memory::default();
    let (writer, guard) = non_blocking(sink.clone());
    let service = LoggingLayer::server()
        .log_start(true)
        .access_log(writer)
        .build()
        .layer(palisade_demo::frames::unary_service(Code::Ok));
    // A layer outside (a gateway's, or jwt outside logging) wrote it before logging saw it.
    let record = Rpc::new(palisade_core::Side::Server);
    record.set_subject("carol".into());
    let mut request = request(None);
    request.extensions_mut().insert(record);
    let response = service.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap();
    drop(guard);
    let text = sink.text();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["message"], "started call");
    for line in &lines {
        assert_eq!(line["enduser.id"], "carol", "{line}");
        assert!(line.get("palisade.rejected_by").is_none(), "{line}");
    }
}

#[tokio::test]
async fn attempts_are_logged_when_a_retry_layer_made_more_than_one() {
    let token = token("carol");
    // What palisade-retry writes into the record as it starts each attempt.
    let retried: Handler = Arc::new(|request| {
        Rpc::of(request).unwrap().set_attempts(3);
        ok()
    });
    let (line, event) = logged_both_ways(retried, || request(Some(&token))).await;
    for record in [&line, &event] {
        assert_eq!(record["grpc.attempts"], 3, "{record}");
    }
    let (line, event) = logged_both_ways(writes_subject(ok), || request(Some(&token))).await;
    for record in [&line, &event] {
        assert!(
            record.get("grpc.attempts").is_none(),
            "one attempt: {record}"
        );
    }
}
