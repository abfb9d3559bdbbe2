//! The Palisade story in one process: a demo server with the full server stack and a client
//! with the full client stack, walking through what each layer does — authorized calls;
//! missing, forged and expired tokens; a stream that needs a scope; a burst past the rate
//! limit; a backend outage that opens the client's breaker, and its recovery; one call traced
//! across both; a panic answered as INTERNAL while other calls go on; a flood shed by the
//! in-flight limit; a deadline carried across two hops; a flaky backend that retries hide; a
//! rate limit changed in the config file without a restart — then the final `/metrics` scrape.
//!
//! ```text
//! cargo run --release -p palisade-examples --bin stack
//! ```

use std::{
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Parser;
use opentelemetry::{
    Context,
    trace::{FutureExt as _, TraceContextExt as _, Tracer as _},
};
use palisade::prelude::*;
use palisade_core::code::go_name;
use palisade_examples::{
    BoxError,
    client::{self, ClientOptions},
    pb::{HelloRequest, greeter_client::GreeterClient},
    server::{self, STREAM_SCOPE, ServerArgs},
    shutdown,
    telemetry::{self, LogFormat},
};
use palisade_jwt::{jsonwebtoken, mint::HmacMinter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request, Status, transport::Channel};

/// Walk through Palisade's layers with a server and a client in one process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Also print the layers' own logs (text), filtered by RUST_LOG or this.
    #[arg(long)]
    logs: Option<String>,
}

const SECRET: &str = "stack-story-secret";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let log_guard = telemetry::init_logs(LogFormat::Text, args.logs.as_deref().unwrap_or("off"));
    let provider = telemetry::install_tracer("palisade-stack", None)?;

    // The second hop of the deadline step: the server program bare (one process holds one
    // metrics recorder), which the first forwards `forward = true` calls to; its Greeter reads
    // what is left of the deadline from the `grpc-timeout` the first hop sent.
    let upstream_args = ServerArgs {
        addr: "127.0.0.1:0".parse()?,
        metrics_addr: "127.0.0.1:0".parse()?,
        jwt_secret: SECRET.into(),
        jwks_file: None,
        jwt_issuer: None,
        jwt_audience: None,
        rate: 0,
        burst: 1,
        rate_key: "global".into(),
        rate_redis: None,
        max_concurrent: 0,
        adaptive_concurrency: false,
        log_format: LogFormat::Text,
        log_start: false,
        otlp_endpoint: None,
        grace_period: shutdown::DEFAULT_GRACE_PERIOD,
        bare: true,
        max_deadline: None,
        default_deadline: None,
        upstream: None,
        config: None,
        given: Vec::new(),
    };
    let upstream_listener = tokio::net::TcpListener::bind(upstream_args.addr).await?;
    let upstream = server::start(&upstream_args, upstream_listener).await?;

    let server_args = ServerArgs {
        addr: "127.0.0.1:0".parse()?,
        metrics_addr: "127.0.0.1:0".parse()?,
        jwt_secret: SECRET.into(),
        jwks_file: None,
        jwt_issuer: None,
        jwt_audience: None,
        // Rate and in-flight limits from the file (SERVER_POLICY), not flags.
        rate: 0,
        burst: 1,
        rate_key: "global".into(),
        rate_redis: None,
        max_concurrent: 0,
        adaptive_concurrency: false,
        log_format: LogFormat::Text,
        log_start: false,
        otlp_endpoint: None,
        grace_period: shutdown::DEFAULT_GRACE_PERIOD,
        bare: false,
        max_deadline: None,
        default_deadline: None,
        upstream: Some(format!("http://{}", upstream.addr)),
        // The same limits from a file the server watches: step 11 changes it.
        config: Some(story_config(SERVER_POLICY)?),
        given: Vec::new(),
    };
    let listener = tokio::net::TcpListener::bind(server_args.addr).await?;
    let running = server::start(&server_args, listener).await?;
    let target = format!("http://{}", running.addr);
    let metrics_addr = running
        .metrics_addr
        .expect("the full stack serves /metrics");
    println!("Palisade stack story");
    println!(
        "  server {target}: trace → logging → metrics → deadline → jwt → ratelimit (5/s per subject, burst 10) → limit (4 in flight) → recovery → Greeter"
    );
    println!(
        "  client: trace → logging → metrics → deadline → retry → breaker (3 failures, 500 ms open) → ratelimit (wait) → jwt (attach)"
    );

    let breaker = BreakerLayer::client()
        .name("greeter")
        .consecutive_failures(3)
        .backoff(Backoff::constant(Duration::from_millis(500)))
        .build();
    let options = ClientOptions {
        // One attempt a call: steps 1–9 show each layer's own answer (step 10 retries).
        retry: client::retry(1, None)?,
        jwt_secret: SECRET.into(),
        scope: None,
        token_ttl: Duration::from_secs(300),
        breaker: breaker.clone(),
        config: {
            let mut config = palisade::config::ClientConfig::default();
            config.rate = Some(1000);
            config
        },
    };
    let mut greeter = client::connect(&target, &options)?;
    let channel = Channel::from_shared(target.clone())?.connect().await?;
    let mut raw = GreeterClient::new(channel);

    let mut ok = true;
    step("1. Authorized calls: the client attaches its minted token (sub = demo-client)");
    for call in 1..=3 {
        let result = greeter.say_hello(hello(&format!("call {call}"))).await;
        let result = result.map(|r| format!("subject {:?}", r.into_inner().subject));
        ok &= report(&format!("call {call}"), &result, &[Code::Ok]);
    }

    step("2. Bad tokens never reach the handler: jwt answers UNAUTHENTICATED");
    let forged = HmacMinter::hs256("not-the-server-secret")
        .subject("mallory")
        .mint()?;
    let expired = expired_token()?;
    for (what, token) in [
        ("no token", None),
        ("forged signature", Some(forged.value().to_owned())),
        ("expired an hour ago", Some(expired)),
        ("not a JWT", Some("garbage".to_owned())),
    ] {
        let result = raw
            .say_hello(with_token(hello("intruder"), token.as_deref()))
            .await;
        ok &= report(
            what,
            &result.map(|_| "let in".to_owned()),
            &[Code::Unauthenticated],
        );
    }

    step("3. SayHelloStream needs the greeter.stream scope: PERMISSION_DENIED without it");
    let unscoped = client::minter(SECRET, None, Duration::from_secs(60)).mint()?;
    let scoped = client::minter(SECRET, Some(STREAM_SCOPE), Duration::from_secs(60)).mint()?;
    for (what, token, expected) in [
        ("without the scope", &unscoped, Code::PermissionDenied),
        ("with the scope", &scoped, Code::Ok),
    ] {
        let request = with_token(
            HelloRequest {
                name: "stream".into(),
                count: 3,
                ..Default::default()
            },
            Some(token.value()),
        );
        let result = match raw.say_hello_stream(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut replies = 0;
                let mut outcome = Ok(());
                loop {
                    match stream.message().await {
                        Ok(Some(_)) => replies += 1,
                        Ok(None) => break,
                        Err(status) => {
                            outcome = Err(status);
                            break;
                        }
                    }
                }
                outcome.map(|()| format!("{replies} replies"))
            }
            Err(status) => Err(status),
        };
        ok &= report(what, &result, &[expected]);
    }

    step("4. A burst past the rate limit: 12 calls back to back from one subject (5/s, burst 10)");
    let burst_token = HmacMinter::hs256(SECRET).subject("burst-client").mint()?;
    let mut exhausted = 0;
    for call in 1..=12 {
        let request = with_token(hello(&format!("burst {call}")), Some(burst_token.value()));
        let result = raw.say_hello(request).await;
        exhausted += usize::from(matches!(&result, Err(s) if s.code() == Code::ResourceExhausted));
        let result = result.map(|_| "OK".to_owned()).map_err(|status| {
            let pushback = status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            Status::new(
                status.code(),
                format!("{} (retry in {pushback} ms)", status.message()),
            )
        });
        // The first ten fit the burst; later ones find it empty, unless a slow machine took
        // longer than a refill between calls.
        let expected: &[Code] = if call <= 10 {
            &[Code::Ok]
        } else {
            &[Code::Ok, Code::ResourceExhausted]
        };
        ok &= report(&format!("burst {call}"), &result, expected);
    }
    if exhausted == 0 {
        println!("    !! expected the burst to run past the limit");
        ok = false;
    }

    step("5. A backend outage opens the client's breaker; recovery closes it");
    for call in 1..=5 {
        let request = HelloRequest {
            name: "outage".into(),
            fail_code: tonic::Code::Unavailable as i32,
            ..Default::default()
        };
        let result = greeter.say_hello(request).await.map(|_| "OK".to_owned());
        ok &= report(
            &format!("outage call {call}"),
            &result,
            &[Code::Unavailable],
        );
    }
    ok &= breaker.state("greeter") == Some(palisade_breaker::State::Open);
    println!(
        "    breaker state: {:?} (calls 4 and 5 never left the client)",
        breaker.state("greeter")
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let result = greeter
        .say_hello(hello("recovered"))
        .await
        .map(|_| "OK".to_owned());
    ok &= report(
        "after 600 ms, backend healthy (the probe)",
        &result,
        &[Code::Ok],
    );
    println!("    breaker state: {:?}", breaker.state("greeter"));
    ok &= breaker.state("greeter") == Some(palisade_breaker::State::Closed);

    step("6. One trace across client and server");
    let tracer = opentelemetry::global::tracer("palisade-stack");
    let span = tracer.start("stack story");
    let cx = Context::current_with_span(span);
    let story_trace = cx.span().span_context().trace_id().to_string();
    let reply = greeter
        .say_hello(hello("traced"))
        .with_context(cx.clone())
        .await?
        .into_inner();
    cx.span().end();
    println!("    client-side trace id  {story_trace}");
    println!("    handler's trace id    {}", reply.trace_id);
    println!(
        "    {}",
        if reply.trace_id == story_trace {
            "same trace: propagated through traceparent"
        } else {
            "DIFFERENT traces"
        }
    );
    ok &= reply.trace_id == story_trace;

    step("7. A panic is INTERNAL for that call alone: the calls beside it go on");
    // One line instead of the default hook's backtrace: this panic is the story's own.
    std::panic::set_hook(Box::new(|info| {
        println!(
            "    (the handler panics, as asked: {:?})",
            info.payload()
                .downcast_ref::<&str>()
                .copied()
                .unwrap_or("a panic")
        );
    }));
    let panicking = HelloRequest {
        name: "panic".into(),
        panic: true,
        ..Default::default()
    };
    let (mut first, mut second) = (greeter.clone(), greeter.clone());
    let (panicked, beside) = tokio::join!(
        first.say_hello(panicking),
        second.say_hello(hello("beside the panic")),
    );
    ok &= report(
        "SayHello asked to panic",
        &panicked.map(|_| "answered".to_owned()),
        &[Code::Internal],
    );
    ok &= report(
        "a call beside it, same channel",
        &beside.map(|_| "OK".to_owned()),
        &[Code::Ok],
    );

    step("8. A flood past the in-flight limit: 12 slow calls at once, 4 in flight at most");
    // Each call its own subject, so the per-subject rate limit lets every one through: what
    // answers is the in-flight limit alone.
    let mut flood = tokio::task::JoinSet::new();
    for call in 0..12 {
        let token = HmacMinter::hs256(SECRET)
            .subject(format!("flood-{call}"))
            .mint()?;
        let mut raw = raw.clone();
        flood.spawn(async move {
            let request = HelloRequest {
                name: "flood".into(),
                delay_ms: 300,
                ..Default::default()
            };
            raw.say_hello(with_token(request, Some(token.value())))
                .await
                .map(|_| ())
        });
    }
    let (mut served, mut shed) = (0, 0);
    while let Some(result) = flood.join_next().await {
        match result? {
            Ok(()) => served += 1,
            Err(status) if status.code() == Code::ResourceExhausted => shed += 1,
            Err(status) => {
                ok &= report(
                    "a flood call",
                    &Err(status),
                    &[Code::Ok, Code::ResourceExhausted],
                );
            }
        }
    }
    println!("    served {served}, shed at once with RESOURCE_EXHAUSTED {shed}");
    ok &= served == 4 && shed == 8;

    step("9. A 1 s deadline across two hops: the second sees what the first left of it");
    let forwarded = HelloRequest {
        name: "two hops".into(),
        forward: true,
        delay_ms: 100,
        ..Default::default()
    };
    let mut request = with_token(
        forwarded,
        Some(
            client::minter(SECRET, None, Duration::from_secs(60))
                .mint()?
                .value(),
        ),
    );
    request.set_timeout(Duration::from_secs(1));
    match raw.say_hello(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            println!(
                "    hops {}, the second hop's deadline {} ms (the first spent 100 ms of 1000)",
                reply.hops, reply.deadline_ms
            );
            ok &= reply.hops == 2 && reply.deadline_ms > 0 && reply.deadline_ms < 900;
        }
        Err(status) => ok &= report("the forwarded call", &Err(status), &[Code::Ok]),
    }

    step(
        "10. A flaky backend that retries hide: UNAVAILABLE to the first two attempts of every call",
    );
    let flaky = flaky_backend().await?;
    let flaky_target = format!("http://{flaky}");
    let once = ClientOptions {
        retry: client::retry(1, None)?,
        breaker: BreakerLayer::client().name("flaky").build(),
        ..options.clone()
    };
    let result = client::connect(&flaky_target, &once)?
        .say_hello(hello("no retries"))
        .await
        .map(|_| "OK".to_owned());
    ok &= report("one attempt (--retries 1)", &result, &[Code::Unavailable]);
    let retried = ClientOptions {
        retry: client::retry(3, None)?,
        breaker: BreakerLayer::client()
            .name("flaky")
            .consecutive_failures(3)
            .build(),
        ..options.clone()
    };
    let mut retrying = client::connect(&flaky_target, &retried)?;
    for call in 1..=3 {
        let result = retrying.say_hello(hello("retried")).await.map(|reply| {
            format!(
                "answered by attempt {}",
                reply.get_ref().previous_attempts + 1
            )
        });
        ok &= report(
            &format!("three attempts (--retries 3), call {call}"),
            &result,
            &[Code::Ok],
        );
        ok &= result.is_ok_and(|detail| detail.ends_with('3'));
    }

    step(
        "11. A rate limit changed in the config file, no restart: 5/s (burst 10) → 1000/s (burst 1000)",
    );
    let burst = |subject: &'static str| {
        let raw = raw.clone();
        async move {
            let token = HmacMinter::hs256(SECRET).subject(subject).mint()?;
            let mut through = 0;
            for _ in 0..15 {
                let mut raw = raw.clone();
                if raw
                    .say_hello(with_token(hello("reload"), Some(token.value())))
                    .await
                    .is_ok()
                {
                    through += 1;
                }
            }
            Ok::<_, BoxError>(through)
        }
    };
    let before = burst("reload-before").await?;
    println!("    15 calls back to back at 5/s (burst 10): {before} through");
    ok &= before < 15;
    let path = server_args.config.clone().expect("the story's file");
    let staged = path.with_extension("staged");
    std::fs::write(
        &staged,
        SERVER_POLICY
            .replace("rate = 5", "rate = 1000")
            .replace("burst = 10", "burst = 1000"),
    )?;
    std::fs::rename(&staged, &path)?;
    let generation = wait_for_generation(metrics_addr, 1).await;
    println!("    the file replaced (as a ConfigMap update does): generation {generation}");
    let after = burst("reload-after").await?;
    println!("    15 calls back to back at 1000/s: {after} through, same process");
    ok &= generation == 1 && after == 15;

    step("12. The final /metrics scrape (non-zero Palisade and gRPC series)");
    let scrape = scrape(metrics_addr).await?;
    for line in scrape.lines().filter(|line| interesting(line)) {
        println!("    {line}");
    }

    running.stop().await?;
    upstream.stop().await?;
    provider.shutdown()?;
    drop(log_guard);
    if !ok {
        return Err(
            "a step did not get the gRPC status the story expects (marked !! above)".into(),
        );
    }
    println!("\nDone: every step got the gRPC status it should.");
    Ok(())
}

/// The story server's policy, from a file it watches (step 11 rewrites it).
const SERVER_POLICY: &str =
    "[server]\nrate = 5\nburst = 10\nrate_key = \"subject\"\nmax_concurrent = 4\n";

/// Writes the story's configuration file into a directory of its own.
fn story_config(text: &str) -> Result<std::path::PathBuf, BoxError> {
    let dir = std::env::temp_dir().join(format!("palisade-stack-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("palisade.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Waits (up to 10 s) until the server's `/metrics` says `generation` is in force.
async fn wait_for_generation(metrics: SocketAddr, generation: u64) -> u64 {
    let expected = format!("palisade_config_generation {generation}");
    for _ in 0..500 {
        if let Ok(scrape) = scrape(metrics).await
            && scrape.lines().any(|line| line == expected)
        {
            return generation;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    0
}

/// A Greeter that answers `UNAVAILABLE` (trailers-only) to every attempt whose
/// `grpc-previous-rpc-attempts` is below 2, on `127.0.0.1:0`; it lives until the process ends.
async fn flaky_backend() -> Result<SocketAddr, BoxError> {
    use tower::Service as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let flaky = tower::layer::layer_fn(|inner: tonic::service::Routes| {
        tower::service_fn(move |request: http::Request<tonic::body::Body>| {
            let mut inner = inner.clone();
            async move {
                let previous: u32 = request
                    .headers()
                    .get("grpc-previous-rpc-attempts")
                    .and_then(|value| value.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                if previous < 2 {
                    let rejection = Rejection::new(Code::Unavailable, "flaky: try again");
                    return Ok(rejection.into_response());
                }
                inner.call(request).await
            }
        })
    });
    let greeter = palisade_demo::Greeter::new().into_service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(flaky)
            .add_service(greeter)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok(addr)
}

fn step(title: &str) {
    println!("\n{title}");
}

/// Prints what the client got and checks it against the story: `false` when it is not the
/// expected code.
fn report(what: &str, result: &Result<String, Status>, expected: &[Code]) -> bool {
    let code = match result {
        Ok(detail) => {
            println!("    {what:<42} → OK ({detail})");
            Code::Ok
        }
        Err(status) => {
            println!(
                "    {what:<42} → {} {:?}",
                go_name(status.code()),
                status.message()
            );
            status.code()
        }
    };
    let as_expected = expected.contains(&code);
    if !as_expected {
        let names: Vec<_> = expected.iter().map(|c| go_name(*c)).collect();
        println!("    !! expected {}", names.join(" or "));
    }
    as_expected
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .expect("a token is visible ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// An HS256 token for demo-client whose `exp` passed an hour ago (beyond any leeway).
fn expired_token() -> Result<String, BoxError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({ "sub": "demo-client", "iat": now - 7200, "exp": now - 3600 });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// `GET /metrics` over plain HTTP/1.0.
async fn scrape(addr: SocketAddr) -> Result<String, BoxError> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: palisade\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("a malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("/metrics answered {head:?}").into());
    }
    Ok(body.to_owned())
}

fn interesting(line: &str) -> bool {
    let series = [
        "grpc_server_handled_total",
        "grpc_client_handled_total",
        "palisade_",
    ];
    !line.starts_with('#')
        && series.iter().any(|s| line.starts_with(s))
        && !line.ends_with(" 0")
        && !line.contains("_bucket")
}
