//! The in-process cases of the `layers`, `stack` and `peers` benches, by group. Each group
//! starts with `bare`: the same handler, the same requests, no layer — measured right before
//! the cases it is compared with.

use std::{net::IpAddr, num::NonZeroU32, time::Duration};

use http::Request;
use palisade::preset::{self, ClientLayers, ServerLayers};
use palisade_breaker::{Backoff, BreakerBuilder, BreakerLayer, State};
use palisade_core::{
    Code, Counts, ObservedFuture, Outcome, Side,
    side::{Client, OnSide, Server},
};
use palisade_deadline::DeadlineLayer;
use palisade_jwt::{JwtAuthLayer, client::AttachTokenLayer};
use palisade_logging::{LoggingBuilder, LoggingLayer, writer::LogWriter};
use palisade_metrics::MetricsLayer;
use palisade_ratelimit::{ClientRateLimitLayer, Key, Limit, Quota, RateLimitLayer};
use palisade_trace::TraceLayer;
use tower::{Layer, layer::util::Identity, service_fn};
use tracing::{Dispatch, Level};

use crate::{
    case::{Group, floor, rpc, rpc_with},
    drive::{Handler, TonicHandler, call_to_trailers},
    env::{self, AUDIENCE, ISSUER, SECRET, logging_off, logging_on},
    requests::{PEERS, Requests, peer},
};

/// A quota no bench exhausts: every call passes, as almost every call does in production.
pub fn unlimited() -> Quota {
    Quota::per_second(NonZeroU32::MAX).with_burst(NonZeroU32::MAX)
}

/// The server's jwt layer: HS256 secret, required issuer and audience, the default policy
/// (authenticated) and cache (1 000 verified tokens).
pub fn jwt_server() -> JwtAuthLayer {
    JwtAuthLayer::server()
        .secret(SECRET)
        .issuer(ISSUER)
        .audience(AUDIENCE)
        .build()
        .expect("a valid jwt configuration")
}

/// A breaker (one circuit) of `builder`'s side opened by a failing call; it stays open for an
/// hour.
pub fn open_breaker<K: OnSide>(builder: BreakerBuilder<K>, name: &str) -> BreakerLayer<K> {
    let side = K::SIDE;
    let layer = builder
        .name(name)
        .consecutive_failures(1)
        .backoff(Backoff::constant(Duration::from_secs(3600)))
        .build();
    call_to_trailers(
        &mut layer.layer(Handler::failing(Code::Unavailable)),
        requests(side).request(),
    );
    assert_eq!(layer.state(name), Some(State::Open), "the breaker opened");
    layer
}

fn requests(side: Side) -> Requests {
    match side {
        Side::Server => Requests::server(),
        Side::Client => Requests::client(),
    }
}

fn side_name(side: Side, server: &'static str, client: &'static str) -> &'static str {
    match side {
        Side::Server => server,
        Side::Client => client,
    }
}

fn bare(group: Group, side: Side) -> Group {
    group.case("bare", move || rpc(Handler::ok(), requests(side)))
}

/// The `layers` bench: each layer alone against bare, server side then client side.
pub fn layers() -> Vec<Group> {
    let mut groups = vec![
        bare(Group::new("layers/core"), Side::Server)
            .case("observed", || {
                // palisade-core's observed future and body with a no-op observer: the floor of
                // every layer that reads the real end of the RPC (metrics, logging, trace, breaker).
                fn ignore(outcome: Outcome, counts: Counts) {
                    std::hint::black_box((outcome, counts));
                }
                let mut inner = Handler::ok();
                let service = service_fn(move |request: Request<_>| {
                    ObservedFuture::new(
                        tower_service::Service::call(&mut inner, request),
                        Side::Server,
                        palisade_core::observe::on_end(ignore as fn(Outcome, Counts)),
                    )
                });
                rpc(service, Requests::server())
            })
            .case("observe", || {
                // The same floor through palisade-core's observing middleware (`Observe` with a
                // policy that watches every RPC with a no-op observer): within noise of `observed`.
                rpc(
                    palisade_core::ObserveLayer::new(WatchAll).layer(Handler::ok()),
                    Requests::server(),
                )
            }),
    ];
    for side in [Side::Server, Side::Client] {
        groups.extend(layer_groups(side));
    }
    groups
}

/// A rate limit never reached, as a reloaded configuration would build it.
fn per_second_limit() -> RateLimitLayer {
    RateLimitLayer::server()
        .limit(Limit::global(unlimited()))
        .build()
        .expect("a valid rate limit")
}

/// Watches every RPC with a no-op observer: the floor of the observing middleware.
struct WatchAll;

impl palisade_core::observe::Policy for WatchAll {
    type Observer = palisade_core::observe::OnEnd<fn(Outcome, Counts)>;
    type RequestObserver = ();
    type Scope = ();

    fn side(&self) -> Side {
        Side::Server
    }

    fn start(
        &self,
        _: &mut palisade_core::Call<'_>,
    ) -> Option<palisade_core::observe::Watch<Self::Observer, (), ()>> {
        fn ignore(outcome: Outcome, counts: Counts) {
            std::hint::black_box((outcome, counts));
        }
        Some(palisade_core::observe::Watch::new(
            palisade_core::observe::on_end(ignore as fn(Outcome, Counts)),
        ))
    }
}

fn layer_groups(side: Side) -> Vec<Group> {
    let server = side == Side::Server;
    let mut groups = Vec::new();

    groups.push(
        bare(
            Group::new(side_name(
                side,
                "layers/server/metrics",
                "layers/client/metrics",
            )),
            side,
        )
        .case("metrics", move || {
            let registry = env::get().registry.clone();
            if server {
                let layer = MetricsLayer::server().registry(registry).build();
                rpc(layer.layer(Handler::ok()), requests(side))
            } else {
                let layer = MetricsLayer::client().registry(registry).build();
                rpc(layer.layer(Handler::ok()), requests(side))
            }
        }),
    );

    groups.push(if server {
        bare(Group::new("layers/server/trace"), side)
            .case("sampled", || {
                let layer = TraceLayer::server()
                    .tracer_provider(&env::get().sampled)
                    .propagator(env::w3c())
                    .build();
                rpc(layer.layer(Handler::ok()), Requests::server())
            })
            .case("not_sampled", || {
                // Parent-based sampling, the caller did not sample (flags 00).
                let layer = TraceLayer::server()
                    .tracer_provider(&env::get().sampled)
                    .propagator(env::w3c())
                    .build();
                rpc(layer.layer(Handler::ok()), Requests::server().not_sampled())
            })
    } else {
        bare(Group::new("layers/client/trace"), side)
            .case("sampled", || {
                let layer = TraceLayer::client()
                    .tracer_provider(&env::get().sampled)
                    .propagator(env::w3c())
                    .server_address("127.0.0.1", 50051)
                    .build();
                rpc(layer.layer(Handler::ok()), Requests::client())
            })
            .case("not_sampled", || {
                let layer = TraceLayer::client()
                    .tracer_provider(&env::get().unsampled)
                    .propagator(env::w3c())
                    .server_address("127.0.0.1", 50051)
                    .build();
                rpc(layer.layer(Handler::ok()), Requests::client())
            })
    });

    groups.push(if server {
        let logging = || {
            LoggingLayer::server()
                .registry(env::get().registry.clone())
                .build()
                .layer(Handler::ok())
        };
        bare(Group::new("layers/server/logging"), side)
            .case("json", move || {
                rpc_with(logging(), Requests::server(), logging_on())
            })
            .case("disabled", move || {
                rpc_with(logging(), Requests::server(), logging_off())
            })
            .case("access_log", move || {
                let layer = LoggingLayer::server()
                    .registry(env::get().registry.clone())
                    .access_log(env::access_log_to_sink())
                    .build();
                rpc_with(layer.layer(Handler::ok()), Requests::server(), logging_on())
            })
    } else {
        let client = || {
            LoggingLayer::client()
                .registry(env::get().registry.clone())
                .build()
                .layer(Handler::ok())
        };
        bare(Group::new("layers/client/logging"), side)
            .case("json", move || {
                rpc_with(client(), Requests::client(), logging_on())
            })
            .case("disabled", move || {
                rpc_with(client(), Requests::client(), logging_off())
            })
    });

    groups.push(if server {
        bare(Group::new("layers/server/jwt"), side)
            .case("first_sight", || {
                // A token never seen before on every call, the cache on (the default).
                rpc(
                    jwt_server().layer(Handler::ok()),
                    Requests::server().fresh_tokens(),
                )
            })
            .case("cache_hit", || {
                rpc(jwt_server().layer(Handler::ok()), Requests::server())
            })
            .case("first_sight_cache_off", || {
                let layer = JwtAuthLayer::server()
                    .secret(SECRET)
                    .issuer(ISSUER)
                    .audience(AUDIENCE)
                    .cache_capacity(0)
                    .build()
                    .expect("a valid jwt configuration");
                rpc(layer.layer(Handler::ok()), Requests::server())
            })
    } else {
        bare(Group::new("layers/client/jwt"), side).case("attach", || {
            let layer = JwtAuthLayer::client()
                .bearer(&env::get().token)
                .build()
                .expect("a valid token");
            rpc(layer.layer(Handler::ok()), Requests::client())
        })
    });

    groups.push(if server {
        bare(Group::new("layers/server/ratelimit"), side)
            .case("direct", || {
                let layer = RateLimitLayer::server()
                    .limit(Limit::global(unlimited()))
                    .build()
                    .unwrap();
                rpc(layer.layer(Handler::ok()), Requests::server())
            })
            .case("keyed", || {
                // One bucket per peer IP address, requests from 1 000 peers in turn.
                let layer = RateLimitLayer::server()
                    .limit(Limit::per_key(Key::peer_ip(), unlimited()))
                    .build()
                    .unwrap();
                rpc(layer.layer(Handler::ok()), Requests::server())
            })
            .case("disabled", || {
                // `RateLimitLayer::disabled()`: a stack's rate limit turned off.
                rpc(
                    RateLimitLayer::disabled().layer(Handler::ok()),
                    Requests::server(),
                )
            })
    } else {
        bare(Group::new("layers/client/ratelimit"), side).case("direct", || {
            let layer = RateLimitLayer::client()
                .limit(Limit::global(unlimited()))
                .build()
                .unwrap();
            rpc(layer.layer(Handler::ok()), Requests::client())
        })
    });

    if server {
        groups.push(
            bare(Group::new("layers/server/limit"), side)
                .case("fixed", || {
                    // One whole-service limit never reached (the happy path): a permit taken at
                    // admission and given back at the end of the stream.
                    let layer = palisade_limit::LimitLayer::server()
                        .name("bench-server")
                        .max_in_flight(1024)
                        .build()
                        .unwrap();
                    rpc(layer.layer(Handler::ok()), Requests::server())
                })
                .case("disabled", || {
                    // `LimitLayer::disabled()`: a stack's in-flight limit turned off.
                    rpc(
                        palisade_limit::LimitLayer::<Server>::disabled().layer(Handler::ok()),
                        Requests::server(),
                    )
                }),
        );
        // A stack behind palisade's reload layer (issue #19): the per-call cost of reading
        // the policy in force — one generation compare while no swap happens — beside the same
        // stack built in code; and `swap`, the cost of a reload (a stack rebuilt over the one
        // service the layer wraps), as a floor.
        groups.push(
            bare(Group::new("layers/server/reload"), side)
                .case("in_code", || {
                    rpc(per_second_limit().layer(Handler::ok()), Requests::server())
                })
                .case("reloadable", || {
                    let (layer, _reloader) = palisade::reload::ReloadLayer::new(per_second_limit());
                    rpc(layer.layer(Handler::ok()), Requests::server())
                })
                .case("swap", || {
                    let (layer, reloader) = palisade::reload::ReloadLayer::new(per_second_limit());
                    let service = layer.layer(Handler::ok());
                    floor(per_second_limit, move |stack| {
                        std::hint::black_box(&service);
                        reloader.swap(stack)
                    })
                }),
        );
        // The caller's 1 s `grpc-timeout` (every bench request has it), never reached: the
        // header parsed, the `Deadline` in the extensions, the deadline current around the
        // call and each poll; the handler answers at once, so no timer is made.
        groups.push(bare(Group::new("layers/server/deadline"), side).case(
            "within_deadline",
            || {
                let layer = DeadlineLayer::server()
                    .max(Duration::from_secs(30))
                    .build()
                    .expect("a valid deadline configuration");
                rpc(layer.layer(Handler::ok()), Requests::server())
            },
        ));
    }

    if !server {
        // A retry policy on every method, the backend answering OK at once (the happy path):
        // the request head kept and the body copied into the replay buffer, the channel
        // cloned, the first answer's head read. `pass` is a method no policy selects.
        groups.push(
            bare(Group::new("layers/client/retry"), side)
                .case("retry_ok", || {
                    let layer = palisade_retry::RetryLayer::client()
                        .retry(
                            palisade_core::Matcher::any(),
                            palisade_retry::RetryPolicy::new(3),
                        )
                        .build()
                        .expect("a valid retry policy");
                    rpc(layer.layer(Handler::ok()), Requests::client())
                })
                .case("pass", || {
                    let layer = palisade_retry::RetryLayer::client()
                        .retry(
                            palisade_core::Matcher::service("other.Service"),
                            palisade_retry::RetryPolicy::new(3),
                        )
                        .build()
                        .expect("a valid retry policy");
                    rpc(layer.layer(Handler::ok()), Requests::client())
                }),
        );
    }

    groups.push(
        bare(
            Group::new(side_name(
                side,
                "layers/server/breaker",
                "layers/client/breaker",
            )),
            side,
        )
        .case("closed", move || {
            let name = side_name(side, "bench-server", "bench-client");
            if server {
                let layer = BreakerLayer::server().name(name).build();
                rpc(layer.layer(Handler::ok()), requests(side))
            } else {
                let layer = BreakerLayer::client().name(name).build();
                rpc(layer.layer(Handler::ok()), requests(side))
            }
        })
        .case("open", move || {
            let name = side_name(side, "bench-server-open", "bench-client-open");
            if server {
                let layer = open_breaker(BreakerLayer::server(), name);
                rpc(layer.layer(Handler::ok()), requests(side))
            } else {
                let layer = open_breaker(BreakerLayer::client(), name);
                rpc(layer.layer(Handler::ok()), requests(side))
            }
        }),
    );
    groups
}

/// The full server stack, the [`ServerLayers`] preset in docs/ARCHITECTURE.md's order, trace →
/// logging → metrics → jwt → ratelimit → breaker — `sampled` (trace sampled, JSON logs
/// written) or not (trace not sampled, logging's level disabled); jwt hits its cache, one
/// global bucket, breaker closed.
pub fn server_stack(sampled: bool) -> ServerStack {
    server_stack_to(sampled, None)
}

/// [`server_stack`] with its logging layer writing to `access_log` (as the `server` program
/// does with `--log-format json`) instead of as `tracing` events.
pub fn server_stack_to(sampled: bool, access_log: Option<LogWriter>) -> ServerStack {
    let mut logging = LoggingLayer::server();
    if let Some(writer) = access_log {
        logging = logging.access_log(writer);
    }
    server_stack_logged(sampled, logging)
}

/// [`server_stack`] with this logging layer (given the stack's registry at build).
pub fn server_stack_logged(sampled: bool, logging: LoggingBuilder<Server>) -> ServerStack {
    let env = env::get();
    let provider = if sampled {
        &env.sampled
    } else {
        &env.unsampled
    };
    ServerLayers::new()
        .registry(env.registry.clone())
        .trace(
            TraceLayer::server()
                .tracer_provider(provider)
                .propagator(env::w3c()),
        )
        .logging(logging)
        .metrics(MetricsLayer::server())
        .auth(jwt_server())
        .ratelimit(RateLimitLayer::server().limit(Limit::global(unlimited())))
        .breaker(BreakerLayer::server().name("server-stack"))
        .build()
        .expect("the bench's server stack builds")
}

/// The layers of [`server_stack`].
/// (The first round's six layers; the deadline, in-flight limit and recovery slots are empty,
/// so the stack's figures stay comparable across rounds.)
pub type ServerStack = preset::ServerStack<
    TraceLayer<palisade_core::side::Server, opentelemetry_sdk::trace::SdkTracer>,
    LoggingLayer<palisade_core::side::Server>,
    MetricsLayer<Server>,
    Identity,
    JwtAuthLayer,
    RateLimitLayer,
    Identity,
    BreakerLayer<Server>,
>;

/// The full client stack, the [`ClientLayers`] preset in docs/ARCHITECTURE.md's order, trace
/// (inject) → logging → metrics → breaker → ratelimit (wait) → jwt (attach) — sampled and
/// logged or not, as [`server_stack`]; for an in-process inner service.
pub fn client_stack(sampled: bool, port: u16) -> ClientStack {
    client_stack_with(sampled, port, None)
}

/// [`client_stack`] with its logging layer writing to `access_log`, for a
/// `tonic::transport::Channel` (every client layer leaves the request body as a `Channel`
/// takes it).
pub fn client_stack_for_channel_to(sampled: bool, port: u16, access_log: LogWriter) -> ClientStack {
    client_stack_with(sampled, port, Some(access_log))
}

fn client_stack_with(sampled: bool, port: u16, access_log: Option<LogWriter>) -> ClientStack {
    let env = env::get();
    let mut logging = LoggingLayer::client();
    if let Some(writer) = access_log {
        logging = logging.access_log(writer);
    }
    let provider = if sampled {
        &env.sampled
    } else {
        &env.unsampled
    };
    ClientLayers::new()
        .registry(env.registry.clone())
        .trace(
            TraceLayer::client()
                .tracer_provider(provider)
                .propagator(env::w3c())
                .server_address("127.0.0.1", port),
        )
        .logging(logging)
        .metrics(MetricsLayer::client())
        .breaker(BreakerLayer::client().name("client-stack"))
        .ratelimit(RateLimitLayer::client().limit(Limit::global(unlimited())))
        .auth(JwtAuthLayer::client().bearer(&env.token))
        .build()
        .expect("the bench's client stack builds")
}

/// The layers of [`client_stack`].
/// (The first round's six layers; the deadline, retry and in-flight limit slots are empty.)
pub type ClientStack = preset::ClientStack<
    TraceLayer<palisade_core::side::Client, opentelemetry_sdk::trace::SdkTracer>,
    LoggingLayer<palisade_core::side::Client>,
    MetricsLayer<Client>,
    Identity,
    Identity,
    BreakerLayer<Client>,
    Identity,
    ClientRateLimitLayer,
    AttachTokenLayer,
>;

/// The `stack` bench: the full server and client stacks against bare.
pub fn stack() -> Vec<Group> {
    vec![
        bare(Group::new("stack/server"), Side::Server)
            .case("full", || {
                rpc_with(
                    server_stack(true).layer(Handler::ok()),
                    Requests::server(),
                    logging_on(),
                )
            })
            .case("quiet", || {
                rpc_with(
                    server_stack(false).layer(Handler::ok()),
                    Requests::server().not_sampled(),
                    logging_off(),
                )
            })
            .case("deployed", || {
                rpc_with(
                    server_stack_to(true, Some(env::access_log_to_sink())).layer(Handler::ok()),
                    Requests::server(),
                    env::deployed_logging("info"),
                )
            }),
        bare(Group::new("stack/client"), Side::Client)
            .case("full", || {
                rpc_with(
                    client_stack(true, 50051).layer(Handler::ok()),
                    Requests::client(),
                    logging_on(),
                )
            })
            .case("quiet", || {
                rpc_with(
                    client_stack(false, 50051).layer(Handler::ok()),
                    Requests::client(),
                    logging_off(),
                )
            })
            .case("deployed", || {
                rpc_with(
                    client_stack_with(true, 50051, Some(env::access_log_to_sink()))
                        .layer(Handler::ok()),
                    Requests::client(),
                    env::deployed_logging("info"),
                )
            }),
    ]
}

/// tower_governor's key for a tonic server: the peer IP from tonic's connection info (its
/// `PeerIpKeyExtractor` reads axum's or a bare `SocketAddr` extension, which tonic does not set).
#[derive(Clone, Copy, Debug)]
pub struct TonicPeerIp;

impl tower_governor::key_extractor::KeyExtractor for TonicPeerIp {
    type Key = IpAddr;

    fn extract<T>(&self, request: &Request<T>) -> Result<IpAddr, tower_governor::GovernorError> {
        palisade_core::Peer::remote_addr_of(request.extensions())
            .map(|addr| addr.ip())
            .ok_or(tower_governor::GovernorError::UnableToExtractKey)
    }
}

/// The `peers` bench: each layer beside the Rust crate people use for the same job, and the
/// building blocks alone (floors).
pub fn peers() -> Vec<Group> {
    vec![
        peers_logging(),
        peers_trace(),
        peers_ratelimit(),
        peers_breaker(),
        peers_jwt(),
        peers_recovery(),
    ]
}

fn tower_http_trace() -> tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::GrpcErrorsAsFailures>,
    tower_http::trace::DefaultMakeSpan,
    tower_http::trace::DefaultOnRequest,
    tower_http::trace::DefaultOnResponse,
    tower_http::trace::DefaultOnBodyChunk,
    tower_http::trace::DefaultOnEos,
> {
    // One INFO span per call and one INFO event at the end of the stream (after the
    // trailers), as palisade-logging writes: `on_request`/`on_response` stay at their default
    // DEBUG, off under an `info` filter.
    tower_http::trace::TraceLayer::new_for_grpc()
        .make_span_with(tower_http::trace::DefaultMakeSpan::new().level(Level::INFO))
        .on_eos(tower_http::trace::DefaultOnEos::new().level(Level::INFO))
}

fn peers_logging() -> Group {
    let palisade = || {
        LoggingLayer::server()
            .registry(env::get().registry.clone())
            .build()
            .layer(Handler::ok())
    };
    bare(Group::new("peers/logging"), Side::Server)
        .case("palisade", move || {
            rpc_with(palisade(), Requests::server(), logging_on())
        })
        .case("tower_http", || {
            rpc_with(
                tower_http_trace().layer(Handler::ok()),
                Requests::server(),
                logging_on(),
            )
        })
        .case("palisade_disabled", move || {
            rpc_with(palisade(), Requests::server(), logging_off())
        })
        .case("tower_http_disabled", || {
            rpc_with(
                tower_http_trace().layer(Handler::ok()),
                Requests::server(),
                logging_off(),
            )
        })
}

/// A `tracing` subscriber with `tracing-opentelemetry`'s layer on a tracer of `provider`: what
/// tonic-tracing-opentelemetry needs to make OpenTelemetry spans.
fn otel_subscriber(provider: &opentelemetry_sdk::trace::SdkTracerProvider) -> Dispatch {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
    )
}

fn peers_trace() -> Group {
    let palisade = || {
        TraceLayer::server()
            .tracer_provider(&env::get().sampled)
            .propagator(env::w3c())
            .build()
            .layer(Handler::ok())
    };
    let peer = || {
        // tonic-tracing-opentelemetry reads the global propagator.
        opentelemetry::global::set_text_map_propagator(env::w3c_sdk());
        tonic_tracing_opentelemetry::middleware::server::OtelGrpcLayer::default()
            .layer(Handler::ok())
    };
    bare(Group::new("peers/trace"), Side::Server)
        .case("palisade", move || rpc(palisade(), Requests::server()))
        .case("tonic_tracing_opentelemetry", move || {
            rpc_with(
                peer(),
                Requests::server(),
                otel_subscriber(&env::get().sampled),
            )
        })
        .case("palisade_not_sampled", move || {
            rpc(palisade(), Requests::server().not_sampled())
        })
        .case("tonic_tracing_opentelemetry_not_sampled", move || {
            rpc_with(
                peer(),
                Requests::server().not_sampled(),
                otel_subscriber(&env::get().sampled),
            )
        })
}

fn peers_ratelimit() -> Group {
    use tower_governor::{
        GovernorLayer, governor::GovernorConfigBuilder, key_extractor::GlobalKeyExtractor,
    };
    let handler = || TonicHandler(Handler::ok());
    Group::new("peers/ratelimit")
        .case("bare", move || rpc(handler(), Requests::server()))
        .case("palisade_direct", move || {
            rpc(
                RateLimitLayer::server()
                    .limit(Limit::global(unlimited()))
                    .build()
                    .unwrap()
                    .layer(handler()),
                Requests::server(),
            )
        })
        .case("tower_governor_global", move || {
            let config = GovernorConfigBuilder::default()
                .key_extractor(GlobalKeyExtractor)
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .finish()
                .expect("a valid governor configuration");
            rpc(
                GovernorLayer::new(config).layer(handler()),
                Requests::server(),
            )
        })
        .case("palisade_keyed", move || {
            rpc(
                RateLimitLayer::server()
                    .limit(Limit::per_key(Key::peer_ip(), unlimited()))
                    .build()
                    .unwrap()
                    .layer(handler()),
                Requests::server(),
            )
        })
        .case("tower_governor_keyed", move || {
            let config = GovernorConfigBuilder::default()
                .key_extractor(TonicPeerIp)
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .finish()
                .expect("a valid governor configuration");
            rpc(
                GovernorLayer::new(config).layer(handler()),
                Requests::server(),
            )
        })
        .case("governor_check", || {
            let limiter = governor::RateLimiter::direct(
                governor::Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX),
            );
            floor(|| (), move |()| limiter.check().is_ok())
        })
        .case("governor_check_key", || {
            let limiter = governor::RateLimiter::keyed(
                governor::Quota::per_second(NonZeroU32::MAX).allow_burst(NonZeroU32::MAX),
            );
            let mut i = 0;
            floor(
                move || {
                    i += 1;
                    peer(i % PEERS).ip()
                },
                move |ip: IpAddr| limiter.check_key(&ip).is_ok(),
            )
        })
}

fn peers_breaker() -> Group {
    use tower_resilience_circuitbreaker::CircuitBreakerLayer;
    bare(Group::new("peers/breaker"), Side::Client)
        .case("palisade", || {
            let layer = BreakerLayer::client().name("peer-palisade").build();
            rpc(layer.layer(Handler::ok()), Requests::client())
        })
        .case("tower_resilience", || {
            // The best it can do for gRPC: classify the response headers (a trailers-only
            // answer's grpc-status); a unary response's code is in the trailers it never sees.
            let layer = CircuitBreakerLayer::builder()
                .name("peer-tower-resilience")
                .classify_response(
                    |response: &http::Response<palisade_demo::frames::GrpcBody>| {
                        response
                            .headers()
                            .get("grpc-status")
                            .is_some_and(|status| status != "0")
                    },
                )
                .build()
                .expect("a valid circuit breaker configuration");
            rpc(layer.layer(Handler::ok()), Requests::client())
        })
        .case("failsafe_state_machine", || {
            let breaker = failsafe::Config::new().build();
            floor(
                || (),
                move |()| {
                    let permitted = breaker.is_call_permitted();
                    breaker.on_success();
                    permitted
                },
            )
        })
}

fn peers_jwt() -> Group {
    bare(Group::new("peers/jwt"), Side::Server)
        .case("palisade_first_sight", || {
            rpc(
                jwt_server().layer(Handler::ok()),
                Requests::server().fresh_tokens(),
            )
        })
        .case("palisade_cache_hit", || {
            rpc(jwt_server().layer(Handler::ok()), Requests::server())
        })
        .case("jsonwebtoken_decode", || {
            // The same checks (signature, exp, iss, aud) into the same claims type, on the
            // token alone: no header lookup, no `Bearer ` prefix, no request.
            let key = jsonwebtoken::DecodingKey::from_secret(SECRET);
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
            validation.set_issuer(&[ISSUER]);
            validation.set_audience(&[AUDIENCE]);
            let token = env::get().token.clone();
            floor(
                || (),
                move |()| {
                    jsonwebtoken::decode::<palisade_jwt::StandardClaims>(
                        std::hint::black_box(&token),
                        &key,
                        &validation,
                    )
                    .expect("a valid token")
                },
            )
        })
}

fn peers_recovery() -> Group {
    // The happy path (nothing panics), as almost every call in production: what each layer
    // costs a call that does not need it.
    bare(Group::new("peers/recovery"), Side::Server)
        .case("palisade", || {
            let layer = palisade_recovery::RecoveryLayer::server()
                .registry(env::get().registry.clone())
                .build();
            rpc(layer.layer(Handler::ok()), Requests::server())
        })
        .case("tower_http_catch_panic", || {
            // Its `ResponseForPanic` answering as palisade-recovery does before the head: a
            // trailers-only INTERNAL (it cannot see the RPC, nor catch a panic mid-stream).
            let layer = tower_http::catch_panic::CatchPanicLayer::custom(
                |_: Box<dyn std::any::Any + Send>| {
                    palisade_core::Rejection::new(Code::Internal, "internal error")
                        .by("recovery")
                        .into_response::<palisade_demo::frames::GrpcBody>()
                },
            );
            rpc(layer.layer(Handler::ok()), Requests::server())
        })
}

/// Every in-process group of the `layers`, `stack` and `peers` benches.
pub fn all() -> Vec<Group> {
    let mut groups = layers();
    groups.extend(stack());
    groups.extend(peers());
    groups
}
