//! The presets stack their slots in the recommended order, hand their registry to every slot
//! that has none, and name the slot that cannot be built.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use palisade::preset::{BoxError, BuildLayer, ClientLayers, Custom, ServerLayers};
use palisade_core::{MethodRegistry, side::OnSide};
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
        .breaker(Custom(note(&log, "breaker")))
        .auth(Custom(note(&log, "auth")))
        .trace(Custom(note(&log, "trace")))
        .ratelimit(Custom(note(&log, "ratelimit")))
        .metrics(Custom(note(&log, "metrics")))
        .logging(Custom(note(&log, "logging")))
        .build()
        .unwrap();
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
        .auth(Custom(note(&log, "auth")))
        .ratelimit(Custom(note(&log, "ratelimit")))
        .breaker(Custom(note(&log, "breaker")))
        .metrics(Custom(note(&log, "metrics")))
        .logging(Custom(note(&log, "logging")))
        .trace(Custom(note(&log, "trace")))
        .build()
        .unwrap();
    layers.service(inner()).oneshot(()).await.unwrap();
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
    let service = ServerLayers::new().build().unwrap().layer(inner());
    service.oneshot(()).await.unwrap();
}

/// A part that notes whether it was handed a registry, and fails to build when told to.
#[derive(Default)]
struct Part {
    own_registry: bool,
    handed: Option<Arc<Mutex<Option<bool>>>>,
    fail: bool,
}

impl<K: OnSide> BuildLayer<K> for Part {
    type Layer = tower::layer::util::Identity;
    const NAME: &'static str = "part";

    fn use_registry(mut self, _: &MethodRegistry) -> Self {
        if !self.own_registry {
            if let Some(handed) = &self.handed {
                *handed.lock().unwrap() = Some(true);
            }
            self.own_registry = true;
        }
        self
    }

    fn build_layer(self) -> Result<Self::Layer, BoxError> {
        if let Some(handed) = &self.handed {
            handed.lock().unwrap().get_or_insert(false);
        }
        if self.fail {
            return Err("no limit given".into());
        }
        Ok(tower::layer::util::Identity::new())
    }
}

#[test]
fn the_registry_goes_to_every_slot_without_one_of_its_own() {
    let handed = |own_registry| {
        let seen = Arc::new(Mutex::new(None));
        let part = Part {
            own_registry,
            handed: Some(Arc::clone(&seen)),
            fail: false,
        };
        (part, seen)
    };
    let (metrics, metrics_seen) = handed(false);
    let (ratelimit, ratelimit_seen) = handed(true);
    ServerLayers::new()
        .registry(MethodRegistry::default())
        .metrics(metrics)
        .ratelimit(ratelimit)
        .build()
        .unwrap();
    assert_eq!(
        *metrics_seen.lock().unwrap(),
        Some(true),
        "handed the preset's"
    );
    assert_eq!(*ratelimit_seen.lock().unwrap(), Some(false), "kept its own");

    // Without a registry on the preset, nothing is handed.
    let (metrics, metrics_seen) = handed(false);
    ServerLayers::new().metrics(metrics).build().unwrap();
    assert_eq!(*metrics_seen.lock().unwrap(), Some(false));
}

#[test]
fn the_slot_that_cannot_be_built_is_named() {
    let error = ServerLayers::new()
        .trace(Part::default())
        .ratelimit(Part {
            fail: true,
            ..Part::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(error.slot(), "ratelimit");
    assert_eq!(
        error.to_string(),
        "the preset's ratelimit slot: no limit given"
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn palisade_layers_refuse_a_misconfiguration_at_build() {
    use palisade::prelude::*;
    let error = ServerLayers::new()
        .ratelimit(RateLimitLayer::server())
        .build()
        .unwrap_err();
    assert_eq!(error.slot(), "ratelimit");
    assert!(error.to_string().contains("no limit given"), "{error}");
    let error = ServerLayers::new()
        .auth(JwtAuthLayer::server())
        .build()
        .unwrap_err();
    assert_eq!(error.slot(), "auth");
    assert!(error.to_string().contains("no key source"), "{error}");
}
