//! The presets stack their slots in the recommended order.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use palisade::preset::{ClientLayers, ServerLayers};
use tower::{Layer, ServiceExt, layer::layer_fn, service_fn};

type Log = Arc<Mutex<Vec<&'static str>>>;

/// A layer that notes its name when a call passes through it.
fn note(
    log: &Log,
    name: &'static str,
) -> impl Layer<
    tower::util::BoxCloneSyncService<(), (), Infallible>,
    Service = tower::util::BoxCloneSyncService<(), (), Infallible>,
> + Clone {
    let log = log.clone();
    layer_fn(
        move |inner: tower::util::BoxCloneSyncService<(), (), Infallible>| {
            let log = log.clone();
            tower::util::BoxCloneSyncService::new(service_fn(move |()| {
                log.lock().unwrap().push(name);
                inner.clone().oneshot(())
            }))
        },
    )
}

fn inner() -> tower::util::BoxCloneSyncService<(), (), Infallible> {
    tower::util::BoxCloneSyncService::new(service_fn(|()| async { Ok::<_, Infallible>(()) }))
}

#[tokio::test]
async fn server_order_is_trace_logging_metrics_auth_ratelimit_breaker() {
    let log = Log::default();
    let layers = ServerLayers::new()
        .breaker(note(&log, "breaker"))
        .auth(note(&log, "auth"))
        .trace(note(&log, "trace"))
        .ratelimit(note(&log, "ratelimit"))
        .metrics(note(&log, "metrics"))
        .logging(note(&log, "logging"));
    layers.layer(inner()).oneshot(()).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "trace",
            "logging",
            "metrics",
            "auth",
            "ratelimit",
            "breaker"
        ]
    );
}

#[tokio::test]
async fn client_order_is_trace_logging_metrics_breaker_ratelimit_auth() {
    let log = Log::default();
    let layers = ClientLayers::new()
        .auth(note(&log, "auth"))
        .ratelimit(note(&log, "ratelimit"))
        .breaker(note(&log, "breaker"))
        .metrics(note(&log, "metrics"))
        .logging(note(&log, "logging"))
        .trace(note(&log, "trace"));
    layers.layer(inner()).oneshot(()).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "trace",
            "logging",
            "metrics",
            "breaker",
            "ratelimit",
            "auth"
        ]
    );
}

#[tokio::test]
async fn empty_slots_pass_calls_through() {
    let service = ServerLayers::new().layer(inner());
    service.oneshot(()).await.unwrap();
}
