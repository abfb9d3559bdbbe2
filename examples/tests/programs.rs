//! The demo programs tried from outside: the real `server` and `client` binaries, a real
//! `redis-server`, and an OTLP/gRPC trace receiver of the test's own — plus their flags,
//! parsed in-process.

use std::{
    future::Future,
    io::{BufRead, BufReader},
    net::SocketAddr,
    pin::Pin,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use clap::Parser;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value,
    trace::v1::span::SpanKind,
};
use palisade_examples::{
    pb::{HelloReply, HelloRequest, greeter_client::GreeterClient},
    server::ServerArgs,
    shutdown,
};
use palisade_jwt::mint::HmacMinter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::{Semaphore, mpsc},
};
use tonic::{
    Code, Request, Response, Status,
    transport::{Channel, Server, server::TcpIncoming},
};

#[path = "../../crates/palisade-ratelimit/tests/support/redis_server.rs"]
mod redis_server;

use redis_server::RedisServer;

const SERVER: &str = env!("CARGO_BIN_EXE_server");
const CLIENT: &str = env!("CARGO_BIN_EXE_client");
const SECRET: &str = "programs-test-secret";

/// A bound for waiting on what must happen (a failure, not a pace: nothing waits this long
/// when things work).
const WITHIN: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// `server --rate-redis`: one quota for every server on one Redis.

/// Two `server` processes on one redis-server, `--rate 10 --burst 10 --rate-key global`: 60
/// calls spread over both let through one quota between them, and the bucket is in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_share_one_quota() {
    let redis = RedisServer::start();
    let monitor = redis.monitor();
    let url = redis.url();
    let flags = [
        "--rate",
        "10",
        "--burst",
        "10",
        "--rate-key",
        "global",
        "--rate-redis",
        &url,
    ];
    let mut one = DemoServer::start(&flags).await;
    let mut two = DemoServer::start(&flags).await;
    let token = token();
    let mut clients = [one.client().await, two.client().await];

    let start = Instant::now();
    let mut passed = 0u32;
    for call in 0..60 {
        let request = with_token(hello(&format!("call {call}"), 0), &token);
        match clients[call % 2].say_hello(request).await {
            Ok(_) => passed += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {}
            Err(status) => panic!("call {call}: {status:?}"),
        }
    }
    let elapsed = start.elapsed();

    // A call whose round trip outran the Redis timeout on a loaded machine is decided by its
    // server's local fallback alone: those may pass on top of the shared quota.
    let mut fell_back = 0.0;
    for server in [&one, &two] {
        let scrape = scrape(server.metrics).await;
        assert!(
            scrape.contains("palisade_ratelimit_backend_up{backend=\"redis\"}"),
            "the Redis backend's series are served: {scrape}"
        );
        fell_back += metric_sum(&scrape, "palisade_ratelimit_backend_fallback_total", "");
    }
    // 10 at once, then 10 a second, across both servers together.
    let bound = 10.0 + (10.0 * elapsed.as_secs_f64()).ceil() + fell_back;
    assert!(
        f64::from(passed) <= bound,
        "{passed} of 60 calls passed in {elapsed:?} ({fell_back} decided without Redis): \
         more than one quota (at most {bound})"
    );
    assert!(passed >= 10, "the burst of 10 passes: {passed}");

    one.stop().await;
    two.stop().await;
    let scripts = monitor.finish(&redis);
    let bucket = scripts
        .get("palisade:rl:server-global/0")
        .unwrap_or_else(|| panic!("the bucket is not in Redis; script calls by key: {scripts:?}"));
    assert!(
        bucket.count as f64 + fell_back >= 60.0,
        "every call not decided by the fallback went to Redis: {bucket:?}, {fell_back} fell back"
    );
}

/// `server --max-concurrent 2`: of 5 simultaneous slow calls, 2 are served and 3 refused at
/// once with RESOURCE_EXHAUSTED and the pushback — every refusal before the first answer —
/// and /metrics shows the limit and the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sheds_calls_over_max_concurrent() {
    let mut server = DemoServer::start(&["--max-concurrent", "2"]).await;
    let token = token();
    let client = server.client().await;
    let (events, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    for call in 0..5 {
        let mut client = client.clone();
        let events = events.clone();
        let request = with_token(hello(&format!("call {call}"), 500), &token);
        tokio::spawn(async move {
            let _ = events.send(client.say_hello(request).await);
        });
    }
    drop(events);
    let mut order = Vec::new();
    while let Some(result) = arrived.recv().await {
        order.push(result);
    }
    let (refused, served) = order.split_at(3);
    for status in refused {
        let status = status.as_ref().expect_err("refused first");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(status.message(), "too many requests in flight");
        assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    }
    assert!(served.iter().all(Result::is_ok), "{served:?}");
    let scrape = scrape(server.metrics).await;
    let limiter = "limiter=\"server\"";
    assert_eq!(
        metric_sum(&scrape, "palisade_concurrency_limit", limiter),
        2.0
    );
    assert_eq!(
        metric_sum(&scrape, "palisade_concurrency_rejected_total", limiter),
        3.0
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Stopping like a pod stops.

/// `server` on SIGTERM: a call in flight finishes OK, the process exits 0, and every server
/// span reached the OTLP receiver. The call is held in flight by the test: its request body
/// (one message, then the stream left open) ends only once the server has said it is draining,
/// so the server cannot answer it before the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_drains_on_sigterm_and_every_span_arrives() {
    const CALLS: usize = 5;
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint();
    let mut server = DemoServer::start(&["--otlp-endpoint", &endpoint, "--log-start"]).await;
    let token = token();
    let mut client = server.client().await;
    for call in 0..CALLS {
        let request = with_token(hello(&format!("call {call}"), 0), &token);
        client.say_hello(request).await.expect("an authorized call");
    }
    // One more, its request body held open by the test.
    let (body, messages) = mpsc::channel(1);
    body.send(hello("in flight", 0)).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let held_token = token.clone();
    let in_flight = tokio::spawn(async move {
        grpc.ready().await.expect("the channel is ready");
        let request = with_token(
            tokio_stream::wrappers::ReceiverStream::new(messages),
            &held_token,
        );
        grpc.client_streaming::<_, HelloRequest, HelloReply, _>(
            request,
            http::uri::PathAndQuery::from_static("/palisade.demo.v1.Greeter/SayHello"),
            tonic_prost::ProstCodec::default(),
        )
        .await
    });
    server.until_started("SayHello", CALLS + 1).await;

    server.program.signal("-TERM");
    server
        .program
        .line("the server drains", |line| line.contains("draining"))
        .await;
    assert!(
        !in_flight.is_finished(),
        "the held call cannot have ended before its body"
    );
    drop(body);
    let reply = tokio::time::timeout(WITHIN, in_flight)
        .await
        .expect("the call in flight ends")
        .expect("the call's task");
    let reply = reply.expect("the call in flight at SIGTERM completes");
    assert_eq!(reply.into_inner().message, "Hello, in flight!");
    let status = server.program.exit().await;
    assert!(status.success(), "server exited with {status}");
    let logs = server.program.rest().await;
    let finished = logs
        .iter()
        .filter(|line| finished_call(line, "SayHello").is_some())
        .count();
    assert_eq!(
        finished, 1,
        "the held call is logged after the drain began: {logs:?}"
    );
    // Its access-log line names the caller jwt verified (the token's `sub`), never the token.
    let held = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|fields| fields["message"] == "finished call" && fields["grpc.method"] == "SayHello")
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(held["enduser.id"], "programs-test", "{held}");
    assert!(held.get("palisade.rejected_by").is_none(), "{held}");
    assert!(
        !logs.iter().any(|line| line.contains(&token)),
        "a token in the log: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|line| line.contains("palisade demo server stopped")),
        "the last log line is flushed: {logs:?}"
    );

    let spans = receiver.spans("palisade-demo-server", SpanKind::Server, "SayHello");
    assert_eq!(
        spans,
        CALLS + 1,
        "server spans received: {:?}",
        receiver.all()
    );
    // Each server span names the caller jwt verified (`enduser.id`, from the per-RPC record),
    // and no span carries the token.
    let all = receiver.all();
    for span in all.iter().filter(|s| s.kind == SpanKind::Server as i32) {
        if span.name.ends_with("SayHello") {
            assert_eq!(
                span.attribute("enduser.id"),
                Some("programs-test"),
                "{span:?}"
            );
        }
    }
    assert!(
        !all.iter()
            .flat_map(|s| &s.attributes)
            .any(|(_, v)| v.contains(&token)),
        "a token in a span: {all:?}"
    );
}

/// The `server` program answers a handler's panic with INTERNAL for that RPC alone (the
/// recovery layer, innermost): the same channel goes on, the access-log line says `Internal`,
/// rejected by `recovery`, the panic is logged once at ERROR and counted in
/// `palisade_panics_total`; a stream sends its one reply, then ends with INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_answers_a_panic_with_internal_and_goes_on() {
    let mut server = DemoServer::start(&[]).await;
    let token = HmacMinter::hs256(SECRET)
        .subject("programs-test")
        .scope("greeter.stream")
        .mint()
        .expect("a token")
        .value()
        .to_owned();
    let mut client = server.client().await;
    let panicking = HelloRequest {
        name: "Ada".into(),
        panic: true,
        ..Default::default()
    };
    let status = client
        .say_hello(with_token(panicking.clone(), &token))
        .await
        .expect_err("the handler panicked");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    let reply = client
        .say_hello(with_token(hello("after", 0), &token))
        .await
        .expect("the same channel goes on");
    assert_eq!(reply.into_inner().message, "Hello, after!");
    let mut stream = client
        .say_hello_stream(with_token(panicking, &token))
        .await
        .expect("the stream starts")
        .into_inner();
    let first = stream.message().await.expect("one reply").expect("a reply");
    assert_eq!(first.message, "Hello, Ada!");
    let status = stream.message().await.expect_err("then INTERNAL");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");

    let scrape = scrape(server.metrics).await;
    assert_eq!(
        metric_sum(
            &scrape,
            "palisade_panics_total",
            r#"grpc_method="SayHello""#
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        metric_sum(
            &scrape,
            "palisade_panics_total",
            r#"grpc_method="SayHelloStream""#
        ),
        1.0,
        "{scrape}"
    );
    server.stop().await;
    let logs: Vec<serde_json::Value> = server
        .program
        .rest()
        .await
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let finished = |method: &str| {
        logs.iter()
            .filter(|fields| {
                fields["message"] == "finished call" && fields["grpc.method"] == method
            })
            .collect::<Vec<_>>()
    };
    let unary = finished("SayHello");
    assert_eq!(unary.len(), 2, "{logs:?}");
    assert_eq!(unary[0]["grpc.code"], "Internal", "{}", unary[0]);
    assert_eq!(unary[0]["palisade.rejected_by"], "recovery", "{}", unary[0]);
    assert_eq!(unary[1]["grpc.code"], "OK", "{}", unary[1]);
    let streamed = finished("SayHelloStream");
    assert_eq!(streamed.len(), 1, "{logs:?}");
    assert_eq!(streamed[0]["grpc.code"], "Internal", "{}", streamed[0]);
    assert_eq!(streamed[0]["grpc.response.messages"], 1, "{}", streamed[0]);
    let panics: Vec<_> = logs
        .iter()
        .filter(|fields| fields["target"] == "palisade_recovery")
        .collect();
    assert_eq!(panics.len(), 2, "one ERROR line per panic: {logs:?}");
    assert!(
        panics.iter().all(|fields| fields["level"] == "ERROR"),
        "{panics:?}"
    );
}

/// `--grace-period` acts: a call still in flight when it is over is cut for real — its caller
/// sees the connection close at once, not at the end of its ten minutes, the call ends (its log
/// line and its span are flushed with the rest), and the server exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_cuts_calls_still_in_flight_after_the_grace_period() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint();
    let mut server = DemoServer::start(&[
        "--grace-period",
        "50ms",
        "--log-start",
        "--otlp-endpoint",
        &endpoint,
    ])
    .await;
    let token = token();
    let mut client = server.client().await;
    let in_flight = tokio::spawn(async move {
        client
            .say_hello(with_token(hello("too slow", 600_000), &token))
            .await
    });
    server.until_started("SayHello", 1).await;
    server.program.signal("-TERM");
    let cut = tokio::time::timeout(WITHIN, in_flight)
        .await
        .expect("the cut call ends")
        .expect("the call's task");
    assert!(
        cut.is_err(),
        "a ten-minute call cannot have finished: {cut:?}"
    );
    let status = server.program.exit().await;
    assert!(status.success(), "server exited with {status}");
    let logs = server.program.rest().await;
    assert!(
        logs.iter().any(|line| line.contains("grace period over")),
        "{logs:?}"
    );
    let position = |what: &str| logs.iter().position(|line| line.contains(what));
    let stopped = position("palisade demo server stopped").unwrap_or_else(|| panic!("{logs:?}"));
    let codes: Vec<_> = logs[..stopped]
        .iter()
        .filter_map(|line| finished_call(line, "SayHello"))
        .collect();
    assert_eq!(
        codes,
        ["Canceled"],
        "the cut call ended, and was logged, before the server stopped: {logs:?}"
    );
    let spans = receiver.spans("palisade-demo-server", SpanKind::Server, "SayHello");
    assert_eq!(spans, 1, "the cut call's span: {:?}", receiver.all());
    let cut_line = position("cut: no call is in flight").unwrap_or_else(|| panic!("{logs:?}"));
    assert!(cut_line < stopped, "{logs:?}");
}

/// `client` on SIGTERM: no new call, the one in flight finishes, its spans all arrive, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stops_on_sigterm_after_the_call_in_flight() {
    let receiver = Receiver::start().await;
    let endpoint = receiver.endpoint();
    // The fourth SayHello waits in the server until the test lets it go.
    let gate = Arc::new(Gate {
        seen: AtomicUsize::new(0),
        hold: 4,
        arrived: Semaphore::new(0),
        release: Semaphore::new(0),
    });
    let layer_gate = gate.clone();
    let server = palisade_demo::spawn(tower::layer::layer_fn(move |inner| Gated {
        inner,
        gate: layer_gate.clone(),
    }))
    .await;
    let url = server.url();
    let mut client = Program::spawn(
        CLIENT,
        &[
            "--target",
            &url,
            "--calls",
            "1000",
            "--jwt-secret",
            SECRET,
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    tokio::time::timeout(WITHIN, gate.arrived.acquire())
        .await
        .expect("the fourth call reaches the server")
        .expect("open")
        .forget();

    client.signal("-TERM");
    client
        .line("the client takes the signal", |line| {
            line.contains("stopping")
        })
        .await;
    gate.release.add_permits(1);
    let status = client.exit().await;
    let lines = client.rest().await;
    assert!(status.success(), "client exited with {status}: {lines:?}");
    assert!(
        lines.iter().any(|line| line.starts_with("call 4: OK")),
        "the call in flight completes: {lines:?}"
    );
    assert!(
        !lines.iter().any(|line| line.starts_with("call 5:")),
        "no call after the signal: {lines:?}"
    );
    let spans = receiver.spans("palisade-demo-client", SpanKind::Client, "SayHello");
    assert_eq!(spans, 4, "client spans received: {:?}", receiver.all());
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// `client --retries`, `--hedge-delay`: issue #18 from outside.

/// A Greeter that answers `UNAVAILABLE` to every attempt whose `grpc-previous-rpc-attempts` is
/// below 2, and counts the attempts it sees.
async fn flaky_greeter() -> (palisade_demo::TestServer, Arc<AtomicUsize>) {
    use tower::Service as _;
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&attempts);
    let server = palisade_demo::spawn(tower::layer::layer_fn(
        move |routes: tonic::service::Routes| {
            let seen = Arc::clone(&seen);
            tower::service_fn(move |request: http::Request<tonic::body::Body>| {
                let mut routes = routes.clone();
                seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    let previous: u32 = request
                        .headers()
                        .get("grpc-previous-rpc-attempts")
                        .and_then(|value| value.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    if previous < 2 {
                        return Ok(palisade_core::Rejection::new(Code::Unavailable, "flaky")
                            .into_response());
                    }
                    routes.call(request).await
                }
            })
        },
    ))
    .await;
    (server, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_retries_hide_a_flaky_backend_and_one_attempt_does_not() {
    let (server, attempts) = flaky_greeter().await;
    let url = server.url();
    let mut client = Program::spawn(
        CLIENT,
        &[
            "--target",
            &url,
            "--calls",
            "5",
            "--jwt-secret",
            SECRET,
            "--retries",
            "3",
        ],
    );
    let status = client.exit().await;
    let lines = client.rest().await;
    assert!(status.success(), "client exited with {status}: {lines:?}");
    let answered: Vec<_> = lines.iter().filter(|line| line.contains(": OK")).collect();
    assert_eq!(answered.len(), 5, "{lines:?}");
    assert!(
        answered.iter().all(|line| line.ends_with("attempt 3)")),
        "{lines:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 15, "three attempts a call");

    let mut once = Program::spawn(
        CLIENT,
        &["--target", &url, "--calls", "2", "--jwt-secret", SECRET],
    );
    assert!(once.exit().await.success());
    let lines = once.rest().await;
    assert_eq!(
        lines
            .iter()
            .filter(|line| line.contains(": Unavailable"))
            .count(),
        2,
        "{lines:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 17, "no retry by default");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hedges_with_hedge_delay_and_refuses_it_alone() {
    let (server, attempts) = flaky_greeter().await;
    let url = server.url();
    // Hedged a second apart; the demo's hedges treat UNAVAILABLE as non-fatal, so each
    // failed hedge starts the next at once and the third answers — long before a second.
    let mut hedged = Program::spawn(
        CLIENT,
        &[
            "--target",
            &url,
            "--calls",
            "2",
            "--jwt-secret",
            SECRET,
            "--retries",
            "3",
            "--hedge-delay",
            "1000",
        ],
    );
    assert!(hedged.exit().await.success());
    let lines = hedged.rest().await;
    let answered: Vec<_> = lines.iter().filter(|line| line.contains(": OK")).collect();
    assert_eq!(answered.len(), 2, "{lines:?}");
    assert!(
        answered.iter().all(|line| line.ends_with("attempt 3)")),
        "{lines:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 6);

    let mut alone = Program::spawn(
        CLIENT,
        &[
            "--target",
            &url,
            "--calls",
            "1",
            "--jwt-secret",
            SECRET,
            "--hedge-delay",
            "20",
        ],
    );
    assert!(
        !alone.exit().await.success(),
        "--hedge-delay without --retries is refused"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// `--config FILE`: the programs configured by a document (issue #19).

/// A document written for one test, in a directory of its own.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("palisade-programs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("the document written");
    path
}

/// `rate = 5, burst = 5` in the file: at most 7 of 20 back-to-back calls through, over a real
/// connection; the stream's own rule (`[[server.method]]`) is its own bucket, untouched by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_config_file_limits_the_rate_and_a_method_rule_applies_to_its_method_only() {
    let path = config_file(
        "rate",
        r#"
[server]
rate = 5
burst = 5

[[server.method]]
method = "palisade.demo.v1.Greeter/SayHelloStream"
rate = 1
burst = 1
"#,
    );
    let path = path.display().to_string();
    let mut server = DemoServer::start(&["--config", &path]).await;
    let mut client = server.client().await;
    let token = token();
    let mut ok = 0;
    for call in 0..20 {
        match client.say_hello(with_token(hello("rate", 0), &token)).await {
            Ok(_) => ok += 1,
            Err(status) => assert_eq!(
                status.code(),
                tonic::Code::ResourceExhausted,
                "call {call}: {status:?}"
            ),
        }
    }
    assert!(
        (5..=7).contains(&ok),
        "5/s, burst 5: {ok} of 20 let through"
    );
    // SayHelloStream has its own bucket (and needs the demo's scope: a token without it is
    // refused by auth before the limit, so use one with it).
    let scoped = HmacMinter::hs256(SECRET)
        .subject("programs-test")
        .scope(palisade_examples::server::STREAM_SCOPE)
        .mint()
        .expect("a token")
        .value()
        .to_owned();
    let first = client
        .say_hello_stream(with_token(hello("stream", 0), &scoped))
        .await;
    assert!(first.is_ok(), "the stream's own token: {first:?}");
    let second = client
        .say_hello_stream(with_token(hello("stream", 0), &scoped))
        .await
        .unwrap_err();
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");
    server.stop().await;
}

/// Issue #19's check of live reload: a 5/s limit from the file lets at most 7 of 20 calls
/// through; the file replaced (atomically, as a ConfigMap update is) by 1000/s lets all 20
/// through, same process, while a stream open across the reload completes OK; broken
/// rewrites (bad TOML, a wrong type, a negative rate, an unknown table) leave that policy in
/// force, each with one ERROR line and the error counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reloads_its_config_file_live_and_a_broken_one_keeps_the_last_good() {
    let path = config_file("live", "[server]\nrate = 5\nburst = 5\n");
    let replace = |text: &str| {
        let staged = path.with_extension("staged");
        std::fs::write(&staged, text).expect("the new version written");
        std::fs::rename(&staged, &path).expect("renamed over the old one");
    };
    let file = path.display().to_string();
    let mut server = DemoServer::start(&["--config", &file]).await;
    let mut client = server.client().await;
    let token = token();
    let scoped = HmacMinter::hs256(SECRET)
        .subject("programs-test")
        .scope(palisade_examples::server::STREAM_SCOPE)
        .mint()
        .expect("a token")
        .value()
        .to_owned();
    let mut streaming = client.clone();
    let stream = tokio::spawn(async move {
        // The handler waits 2 s before its replies: the stream is open across the reload.
        let request = HelloRequest {
            count: 3,
            delay_ms: 2000,
            ..hello("across the reload", 0)
        };
        let mut stream = streaming
            .say_hello_stream(with_token(request, &scoped))
            .await?
            .into_inner();
        let mut replies = 0;
        while stream.message().await?.is_some() {
            replies += 1;
        }
        Ok::<_, Status>(replies)
    });
    let mut ok = 0;
    for _ in 0..20 {
        if client
            .say_hello(with_token(hello("before", 0), &token))
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    assert!(ok <= 7, "5/s from the file: {ok} of 20 let through");

    replace("[server]\nrate = 1000\nburst = 1000\n");
    server
        .program
        .line("the reload applied", |line| {
            line.contains("configuration reloaded")
        })
        .await;
    for call in 0..20 {
        client
            .say_hello(with_token(hello("after", 0), &token))
            .await
            .unwrap_or_else(|status| panic!("call {call} after the reload: {status:?}"));
    }

    for (broken, what) in [
        ("[server\nrate = 1\n", "bad TOML"),
        ("[server]\nrate = \"fast\"\n", "a wrong type"),
        ("[server]\nrate = -5\n", "a negative rate"),
        (
            "[server]\nrate = 1\n[server.cache]\nsize = 1\n",
            "an unknown table",
        ),
    ] {
        replace(broken);
        let line = server
            .program
            .line(&format!("{what} refused"), |line| {
                line.contains("configuration not reloaded")
            })
            .await;
        assert!(
            line.contains("live.toml"),
            "{what}: the file is named: {line}"
        );
        for call in 0..20 {
            client
                .say_hello(with_token(hello("still", 0), &token))
                .await
                .unwrap_or_else(|status| panic!("{what}, call {call}: {status:?}"));
        }
    }
    assert_eq!(
        stream.await.unwrap().unwrap(),
        3,
        "the stream open across it completes OK"
    );
    let scrape = scrape(server.metrics).await;
    for expected in [
        "palisade_config_reload_total{result=\"ok\"} 1",
        "palisade_config_reload_total{result=\"error\"} 4",
        "palisade_config_generation 1",
    ] {
        assert!(
            scrape.lines().any(|line| line == expected),
            "{expected}: {scrape}"
        );
    }
    server.stop().await;
}

/// 100 reloads of the file while a load generator runs: no call fails or is lost, and the
/// server's memory stays flat (its resident set after them within 16 MiB of before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_file_reloads_under_load_fail_no_call_and_keep_memory_flat() {
    let path = config_file("hundred", "[server]\nrate = 1000000\nburst = 1000000\n");
    let replace = |rate: u32| {
        let staged = path.with_extension("staged");
        let text = format!("[server]\nrate = {rate}\nburst = 1000000\n");
        std::fs::write(&staged, text).expect("the new version written");
        std::fs::rename(&staged, &path).expect("renamed over the old one");
    };
    let file = path.display().to_string();
    let mut server = DemoServer::start(&["--config", &file]).await;
    let token = token();
    let stop = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = server.client().await;
        let (stop, calls, token) = (Arc::clone(&stop), Arc::clone(&calls), token.clone());
        load.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.notified() => return,
                    // A call that never ends is a lost one: each gets 10 s.
                    reply = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.say_hello(with_token(hello("load", 0), &token)),
                    ) => {
                        match reply {
                            Err(_) => panic!("a call was lost during the reloads"),
                            Ok(Err(status)) => panic!("a call failed during the reloads: {status:?}"),
                            Ok(Ok(_)) => calls.fetch_add(1, Ordering::SeqCst),
                        };
                    }
                }
            }
        });
    }
    let resident = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let mut before = None;
    for n in 0..110_u32 {
        replace(1_000_000 - (n + 1) % 2);
        server
            .program
            .line(&format!("reload {n} applied"), |line| {
                line.contains("configuration reloaded")
            })
            .await;
        if n == 9 {
            // Ten reloads in: what a warm server holds.
            before = Some(resident(server.program.pid));
        }
    }
    let before = before.expect("measured after ten reloads");
    let after = resident(server.program.pid);
    stop.notify_waiters();
    for _ in 0..4 {
        stop.notify_one();
    }
    while let Some(task) = load.join_next().await {
        task.expect("no call failed");
    }
    assert!(
        calls.load(Ordering::SeqCst) > 100,
        "the load ran through the reloads"
    );
    assert!(
        after <= before + 16 * 1024 * 1024,
        "resident set {before} → {after} bytes over 100 reloads"
    );
    server.stop().await;
}

/// A reload that leaves the rate limit's settings as they were keeps its buckets: a bucket
/// emptied before it is still empty after (a fresh one would let its burst through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_buckets_of_an_unchanged_rate_limit() {
    let path = config_file("kept", "[server]\nrate = 1\nburst = 10\n");
    let file = path.display().to_string();
    let mut server = DemoServer::start(&["--config", &file]).await;
    let mut client = server.client().await;
    let token = token();
    for _ in 0..20 {
        let _ = client
            .say_hello(with_token(hello("empty it", 0), &token))
            .await;
    }
    let staged = path.with_extension("staged");
    std::fs::write(
        &staged,
        "[server]\nrate = 1\nburst = 10\nmax_concurrent = 64\n",
    )
    .unwrap();
    std::fs::rename(&staged, &path).unwrap();
    server
        .program
        .line("the reload applied", |line| {
            line.contains("configuration reloaded")
        })
        .await;
    let mut ok = 0;
    for _ in 0..10 {
        if client
            .say_hello(with_token(hello("after", 0), &token))
            .await
            .is_ok()
        {
            ok += 1;
        }
    }
    assert!(
        ok <= 5,
        "the emptied bucket carried over: {ok} of 10 through (a new one: 10)"
    );
    server.stop().await;
}

/// A key set in the file and given as a flag is refused, naming both; a flag the file leaves
/// out fills it; a bad file is refused at start with its line and key.
#[test]
fn server_config_file_and_flags_merge_and_contradictions_are_refused() {
    let path = config_file("merge", "[server]\nrate = 5\n");
    let file = path.display().to_string();
    let error = server_args(&["--config", &file, "--rate", "10"])
        .unwrap()
        .server_config()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("--rate is given and `rate` is set in {file}: set it in one place")
    );
    // Given as a flag, even at its default value.
    let error = server_args(&["--config", &file, "--rate", "0"])
        .unwrap()
        .server_config()
        .unwrap_err();
    assert!(error.to_string().starts_with("--rate is given"), "{error}");
    let config = server_args(&["--config", &file, "--burst", "3", "--max-concurrent", "4"])
        .unwrap()
        .server_config()
        .unwrap();
    assert_eq!(
        (config.rate, config.burst, config.max_concurrent),
        (Some(5), Some(3), Some(4))
    );
    // The demo's rule comes after the file's.
    let last = config.method.last().expect("the demo's rule");
    assert_eq!(
        last.scopes.as_deref(),
        Some(&["greeter.stream".to_owned()][..])
    );

    let bad = config_file("bad", "[server]\nrate = 5\nmax_concurent = 4\n");
    let bad = bad.display().to_string();
    let error = server_args(&["--config", &bad])
        .unwrap()
        .server_config()
        .unwrap_err();
    assert!(
        error.to_string().starts_with(&format!(
            "{bad}:3:1: key `server.max_concurent`: unknown key"
        )),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .ends_with("did you mean `max_concurrent`?"),
        "{error}"
    );

    // The annotated example configures the server program as it is.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/palisade.toml");
    let config = server_args(&["--config", example])
        .unwrap()
        .server_config()
        .unwrap();
    assert_eq!(config.rate, Some(50));
}

/// `client --config` with `retries = 3` hides a backend that fails the first two attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_config_file_retries_hide_a_flaky_backend() {
    let (server, attempts) = flaky_greeter().await;
    let url = server.url();
    let path = config_file(
        "retries",
        &format!(
            "[client]\ntarget = {url:?}\ncalls = 4\nretries = 3\nretry_on = [\"UNAVAILABLE\"]\n"
        ),
    );
    let path = path.display().to_string();
    let mut client = Program::spawn(CLIENT, &["--config", &path, "--jwt-secret", SECRET]);
    let status = client.exit().await;
    let lines = client.rest().await;
    assert!(status.success(), "client exited with {status}: {lines:?}");
    let answered: Vec<_> = lines.iter().filter(|line| line.contains(": OK")).collect();
    assert_eq!(answered.len(), 4, "{lines:?}");
    assert!(
        answered.iter().all(|line| line.ends_with("attempt 3)")),
        "{lines:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 12, "three attempts a call");

    // `retries` in the file and as a flag: refused before any call.
    let mut both = Program::spawn(CLIENT, &["--config", &path, "--retries", "2"]);
    assert!(!both.exit().await.success(), "a key set twice is refused");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Flags: a flag that is accepted acts.

#[derive(Debug, Parser)]
struct ServerCli {
    #[command(flatten)]
    server: ServerArgs,
}

fn server_args(args: &[&str]) -> Result<ServerArgs, clap::Error> {
    use clap::CommandFactory;
    let matches = ServerCli::command()
        .try_get_matches_from(std::iter::once("server").chain(args.iter().copied()))?;
    ServerArgs::from_matches(&matches)
}

/// Flags that `--bare` would leave unread are refused with it.
#[test]
fn bare_refuses_the_flags_it_would_ignore() {
    assert!(server_args(&["--bare"]).is_ok());
    for flags in [
        &["--rate", "5"][..],
        &["--burst", "5"],
        &["--rate-key", "peer"],
        &["--rate-redis", "redis://127.0.0.1:1/"],
        &["--max-concurrent", "4"],
        &["--max-in-flight", "4"],
        &["--jwt-secret", "s"],
        &["--jwks-file", "jwks.json"],
        &["--jwt-issuer", "i"],
        &["--jwt-audience", "a"],
        &["--metrics-addr", "127.0.0.1:0"],
        &["--otlp-endpoint", "http://127.0.0.1:4317"],
        &["--log-start"],
        &["--max-deadline", "100"],
        &["--default-deadline", "100"],
        &["--upstream", "http://127.0.0.1:1"],
    ] {
        let mut args = vec!["--bare"];
        args.extend_from_slice(flags);
        let error = server_args(&args).expect_err(&format!("{args:?} is refused"));
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{args:?}"
        );
    }
}

/// `--jwt-secret` is not read when `--jwks-file` verifies: both together are refused.
#[test]
fn jwks_file_refuses_a_secret_it_would_ignore() {
    assert!(server_args(&["--jwks-file", "jwks.json"]).is_ok());
    let error = server_args(&["--jwks-file", "jwks.json", "--jwt-secret", "s"])
        .expect_err("a secret beside a JWKS file is refused");
    assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
}

/// `--burst 0` was read as 1; the rate limit's other flags did nothing without `--rate`.
#[tokio::test]
async fn rate_flags_without_a_rate_are_refused() {
    assert!(
        server_args(&["--burst", "0"]).is_err(),
        "--burst 0 is refused"
    );
    let registry = palisade::core::MethodRegistry::from_encoded_file_descriptor_set(
        palisade_examples::FILE_DESCRIPTOR_SET,
    )
    .unwrap();
    for flags in [
        &["--burst", "5"][..],
        &["--rate-key", "peer"],
        &["--rate-key", "nonsense"],
        &["--rate-redis", "redis://127.0.0.1:1/"],
    ] {
        let args = server_args(flags).unwrap();
        let error = palisade_examples::server::rate_limit(&args, &registry)
            .expect_err(&format!("{flags:?} without --rate is refused"));
        assert!(error.to_string().contains("--rate"), "{error}");
    }
    let off = server_args(&[]).unwrap();
    assert!(
        palisade_examples::server::rate_limit(&off, &registry)
            .unwrap()
            .is_none()
    );
    let bad_url = server_args(&["--rate", "5", "--rate-redis", "not a url"]).unwrap();
    let error = palisade_examples::server::rate_limit(&bad_url, &registry)
        .expect_err("a bad Redis URL is refused");
    assert!(error.to_string().contains("--rate-redis"), "{error}");
}

/// `--grace-period`: milliseconds, or with a unit.
#[test]
fn grace_period_takes_ms_or_seconds() {
    let ms = Duration::from_millis;
    assert_eq!(shutdown::parse_grace_period("250"), Ok(ms(250)));
    assert_eq!(shutdown::parse_grace_period("250ms"), Ok(ms(250)));
    assert_eq!(shutdown::parse_grace_period("10s"), Ok(ms(10_000)));
    assert_eq!(shutdown::parse_grace_period(" 2 s "), Ok(ms(2_000)));
    assert_eq!(shutdown::parse_grace_period("0"), Ok(ms(0)));
    for bad in [
        "",
        "s",
        "-1",
        "1.5s",
        "10m",
        "99999999999999999999s",
        "18446744073709552s",
    ] {
        assert!(shutdown::parse_grace_period(bad).is_err(), "{bad:?}");
    }
    let args = server_args(&[]).unwrap();
    assert_eq!(args.grace_period, shutdown::DEFAULT_GRACE_PERIOD);
    let args = server_args(&["--grace-period", "3s"]).unwrap();
    assert_eq!(args.grace_period, Duration::from_secs(3));
}

/// `--max-deadline` cuts a caller's longer deadline, `--default-deadline` gives one to a
/// call without: the server answers DEADLINE_EXCEEDED, and the Greeter saw what was left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_flags_cap_and_default_the_calls_deadline() {
    let mut server =
        DemoServer::start(&["--max-deadline", "300", "--default-deadline", "200"]).await;
    let mut client = server.client().await;
    let token = token();

    // The caller's 10 s, capped to 300 ms.
    let mut request = with_token(hello("capped", 0), &token);
    request.set_timeout(Duration::from_secs(10));
    let reply = client.say_hello(request).await.unwrap().into_inner();
    assert!(
        (200..=300).contains(&reply.deadline_ms),
        "{}",
        reply.deadline_ms
    );
    let mut request = with_token(hello("capped", 2_000), &token);
    request.set_timeout(Duration::from_secs(10));
    let start = Instant::now();
    let status = client.say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        start.elapsed()
    );

    // None sent: 200 ms.
    let reply = client
        .say_hello(with_token(hello("default", 0), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        (100..=200).contains(&reply.deadline_ms),
        "{}",
        reply.deadline_ms
    );
    let status = client
        .say_hello(with_token(hello("default", 2_000), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    server.stop().await;

    // Refused at start: a default over the max.
    let args = server_args(&["--max-deadline", "100", "--default-deadline", "200"]).unwrap();
    let error = palisade_examples::server::deadline(&args).unwrap_err();
    assert!(error.to_string().contains("--max-deadline"), "{error}");
}

/// Issue #17: a 1 s deadline through two hops, the first spending 100 ms — the second hop sees
/// less than 900 ms left, the same trace id and the same subject (the caller's token relayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_trace_and_subject_carried_through_two_hops() {
    let mut second = DemoServer::start(&[]).await;
    let upstream = format!("http://{}", second.addr);
    let mut first = DemoServer::start(&["--upstream", &upstream]).await;
    let mut client = first.client().await;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = with_token(
        HelloRequest {
            name: "two hops".into(),
            delay_ms: 100,
            forward: true,
            ..Default::default()
        },
        &token(),
    );
    request.set_timeout(Duration::from_secs(1));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let reply = client.say_hello(request).await.unwrap().into_inner();
    assert_eq!(reply.hops, 2);
    assert_eq!(reply.message, "Hello, two hops!");
    assert!(
        reply.deadline_ms > 0 && reply.deadline_ms < 900,
        "the second hop saw {} ms",
        reply.deadline_ms
    );
    assert_eq!(reply.trace_id, TRACE_ID);
    assert_eq!(reply.subject, "programs-test");

    // Without an upstream, forward is refused rather than ignored.
    let mut direct = second.client().await;
    let mut request = with_token(hello("nowhere", 0), &token());
    request.get_mut().forward = true;
    let status = direct.say_hello(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);

    first.stop().await;
    second.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Support.

/// A program of this package, run with its stdout read line by line.
struct Program {
    child: Option<Child>,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Program {
    fn spawn(binary: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            pid: child.id(),
            child: Some(child),
            lines,
        }
    }

    /// The next line of stdout that `matches`.
    async fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let wait = async {
            loop {
                match self.lines.recv().await {
                    Some(line) if matches(&line) => return line,
                    Some(_) => {}
                    None => panic!("{what}: the program's stdout closed first"),
                }
            }
        };
        tokio::time::timeout(WITHIN, wait)
            .await
            .unwrap_or_else(|_| panic!("{what}: no such line within {WITHIN:?}"))
    }

    /// The lines not read yet, up to the end of stdout.
    async fn rest(&mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(WITHIN, self.lines.recv()).await {
            rest.push(line);
        }
        rest
    }

    /// Sends a signal with `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {}", self.pid);
    }

    /// Waits for the program to exit.
    async fn exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let wait = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(WITHIN, wait).await {
            Ok(status) => status.expect("the waiting task").expect("wait"),
            Err(_) => {
                self.signal("-KILL");
                panic!("the program did not exit within {WITHIN:?}");
            }
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `server` binary on free loopback ports.
struct DemoServer {
    program: Program,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl DemoServer {
    async fn start(flags: &[&str]) -> Self {
        let mut args = vec![
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--jwt-secret",
            SECRET,
        ];
        args.extend_from_slice(flags);
        let mut program = Program::spawn(SERVER, &args);
        let line = program
            .line("the server listens", |line| line.contains("listening"))
            .await;
        let fields: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let field = |name: &str| -> SocketAddr {
            let value = fields[name]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: {line}"));
            let value = value.trim_start_matches("Some(").trim_end_matches(')');
            value.parse().unwrap_or_else(|_| panic!("{name}: {line}"))
        };
        Self {
            addr: field("addr"),
            metrics: field("metrics"),
            program,
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("the server accepts connections")
    }

    async fn client(&self) -> GreeterClient<Channel> {
        GreeterClient::new(self.channel().await)
    }

    /// Waits until the server has logged `calls` more `started call` lines of `method` (it
    /// runs with `--log-start`): each is written when the call reaches the server's layers.
    async fn until_started(&mut self, method: &str, calls: usize) {
        for call in 1..=calls {
            self.program
                .line(
                    &format!("started call {call} of {calls} of {method}"),
                    |line| {
                        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|fields| {
                            fields["message"] == "started call" && fields["grpc.method"] == method
                        })
                    },
                )
                .await;
        }
    }

    async fn stop(&mut self) {
        self.program.signal("-TERM");
        let status = self.program.exit().await;
        assert!(status.success(), "server exited with {status}");
    }
}

fn token() -> String {
    HmacMinter::hs256(SECRET)
        .subject("programs-test")
        .mint()
        .expect("a token")
        .value()
        .to_owned()
}

fn hello(name: &str, delay_ms: u32) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        delay_ms,
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII"),
    );
    request
}

/// `GET /metrics` over HTTP/1.0.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("/metrics accepts");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The `grpc.code` of a `finished call` access-log line of `method`.
fn finished_call(line: &str, method: &str) -> Option<String> {
    let fields: serde_json::Value = serde_json::from_str(line).ok()?;
    (fields["message"] == "finished call" && fields["grpc.method"] == method)
        .then(|| fields["grpc.code"].as_str().unwrap_or_default().to_owned())
}

/// The sum of a metric's samples whose line contains `label`.
fn metric_sum(scrape: &str, name: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && line.contains(label)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A span the receiver got: its service, name and kind.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    kind: i32,
    /// The span's string attributes.
    attributes: Vec<(String, String)>,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/gRPC trace receiver on 127.0.0.1:0.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    addr: Option<SocketAddr>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Self {
            addr: Some(listener.local_addr().unwrap()),
            ..Self::default()
        };
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        receiver
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    fn all(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// How many spans of `service` of this kind whose name ends with `method` arrived.
    fn spans(&self, service: &str, kind: SpanKind, method: &str) -> usize {
        self.all()
            .iter()
            .filter(|s| s.service == service && s.kind == kind as i32 && s.name.ends_with(method))
            .count()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        kind: span.kind,
                        attributes,
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Holds the `hold`-th SayHello until released, and says when it arrived.
struct Gate {
    seen: AtomicUsize,
    hold: usize,
    arrived: Semaphore,
    release: Semaphore,
}

#[derive(Clone)]
struct Gated<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = self.gate.clone();
        Box::pin(async move {
            if request.uri().path().ends_with("/SayHello")
                && gate.seen.fetch_add(1, Ordering::SeqCst) + 1 == gate.hold
            {
                gate.arrived.add_permits(1);
                gate.release.acquire().await.expect("open").forget();
            }
            inner.call(request).await
        })
    }
}
