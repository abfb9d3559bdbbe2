//! Live reload: a stack of layers swapped atomically while the server (or client) runs — new
//! calls get the new stack, calls in flight finish on the one they started on.
//!
//! [`ReloadLayer::new`] takes the first stack and returns the layer and its [`Reloader`];
//! [`Reloader::swap`] puts a new stack in. Each service the layer makes keeps the stack it
//! last saw and, at each call's `poll_ready`, compares one generation number with the
//! current one: a call costs one atomic load while nothing changes. After a swap, the first
//! call of each clone takes the new stack, built once per service the layer wraps (not per
//! call).
//!
//! Every generation must be the same type of stack: build each with the same layer types
//! (a slot a configuration turns off is a layer configured to pass, not a missing layer).
//! State that must survive a reload lives in the layers themselves: reuse a built layer (its
//! clone shares its buckets, circuits, counters) in the new stack when its settings did not
//! change.
//!
//! [`changes`] yields once per change of a configuration file — written in place, replaced
//! by a rename, or swapped by a Kubernetes ConfigMap update (its `..data` symlink) — and once
//! per SIGHUP. [`Reloads`] counts what came of each: `palisade_config_reload_total{result}`
//! and the gauge `palisade_config_generation`, and logs a refused file once, at ERROR.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use palisade::reload::ReloadLayer;
//! use tower::{Layer, ServiceExt, service_fn, util::MapResponseLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! type Tag = MapResponseLayer<fn(Response<&'static str>) -> Response<&'static str>>;
//! fn tag(value: &'static str) -> Tag {
//!     // A stand-in for a configured stack: a layer whose behaviour is its settings.
//!     let stamp: fn(Response<&'static str>) -> Response<&'static str> = match value {
//!         "one" => |r| r.map(|_| "generation one"),
//!         _ => |r| r.map(|_| "generation two"),
//!     };
//!     MapResponseLayer::new(stamp)
//! }
//! let routes = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new("")) });
//! let (layer, reloader) = ReloadLayer::new(tag("one"));
//! let service = layer.layer(routes);
//! let answer = service.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(*answer.body(), "generation one");
//! assert_eq!(reloader.swap(tag("two")), 1);
//! let answer = service.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(*answer.body(), "generation two", "a clone made before the swap takes it too");
//! # }
//! ```

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use tower_layer::Layer;
use tower_service::Service;

mod count;
mod watch;

pub use count::{GENERATION, RELOAD_TOTAL, Reloads};
pub use watch::{Change, Changes, changes};

/// A stack built over one inner service, with the generation it belongs to.
struct Built<S> {
    generation: u64,
    service: S,
}

/// Rebuilds one wrapped service's stack from a new layer.
type Rebuild<L> = Box<dyn Fn(&L, u64) + Send + Sync>;

struct Shared<L> {
    /// The current stack and its generation; each wrapped service rebuilds from it.
    current: Mutex<(u64, L)>,
    rebuilds: Mutex<Vec<Rebuild<L>>>,
}

/// The layer that makes reloadable services; see the [module docs](self).
pub struct ReloadLayer<L> {
    shared: Arc<Shared<L>>,
}

impl<L> ReloadLayer<L> {
    /// The layer with `layer` as generation 0, and the handle that swaps it.
    pub fn new(layer: L) -> (Self, Reloader<L>) {
        let shared = Arc::new(Shared {
            current: Mutex::new((0, layer)),
            rebuilds: Mutex::new(Vec::new()),
        });
        (
            ReloadLayer {
                shared: Arc::clone(&shared),
            },
            Reloader { shared },
        )
    }
}

impl<L> Clone for ReloadLayer<L> {
    fn clone(&self) -> Self {
        ReloadLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<L> fmt::Debug for ReloadLayer<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadLayer")
            .field("generation", &lock(&self.shared.current).0)
            .finish()
    }
}

impl<L, S> Layer<S> for ReloadLayer<L>
where
    L: Layer<S> + Clone + Send + Sync + 'static,
    L::Service: Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
{
    type Service = Reloadable<L::Service>;

    /// Wraps `inner` (built once: a server's routes, a client's channel): each swap rebuilds
    /// its stack once.
    fn layer(&self, inner: S) -> Self::Service {
        let (generation, layer) = {
            let current = lock(&self.shared.current);
            (current.0, current.1.clone())
        };
        let slot = Arc::new(ArcSwap::from_pointee(Built {
            generation,
            service: layer.layer(inner.clone()),
        }));
        let rebuilt = Arc::clone(&slot);
        lock(&self.shared.rebuilds).push(Box::new(move |layer: &L, generation| {
            rebuilt.store(Arc::new(Built {
                generation,
                service: layer.clone().layer(inner.clone()),
            }));
        }));
        Reloadable { slot, cached: None }
    }
}

/// Swaps the stack of every service a [`ReloadLayer`] made; cheap to clone.
pub struct Reloader<L> {
    shared: Arc<Shared<L>>,
}

impl<L> Reloader<L> {
    /// Puts `layer` in as the next generation and returns its number: calls that start from
    /// now on go through it; calls in flight finish on the stack they started on.
    pub fn swap(&self, layer: L) -> u64 {
        // One swap at a time, and the generation moves with the layer it names.
        let mut current = lock(&self.shared.current);
        let generation = current.0 + 1;
        for rebuild in lock(&self.shared.rebuilds).iter() {
            rebuild(&layer, generation);
        }
        *current = (generation, layer);
        generation
    }

    /// The generation in force: 0 for the first stack, one more per swap.
    pub fn generation(&self) -> u64 {
        lock(&self.shared.current).0
    }
}

impl<L> Clone for Reloader<L> {
    fn clone(&self) -> Self {
        Reloader {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<L> fmt::Debug for Reloader<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.generation())
            .finish()
    }
}

/// A service whose stack a [`Reloader`] swaps; made by [`ReloadLayer`].
///
/// It takes the stack in force at its first `poll_ready` and keeps it while no swap
/// happens; a clone starts empty, so a clone made per request (as hyper's adapter does) never
/// holds an old stack, and a service kept for many calls (a client's channel) compares one
/// generation number per call.
pub struct Reloadable<S> {
    slot: Arc<ArcSwap<Built<S>>>,
    /// The stack in use and its generation.
    cached: Option<(u64, S)>,
}

impl<S> Reloadable<S> {
    /// The stack in force, taken if this service has none or an older one.
    fn current(&mut self) -> &mut S
    where
        S: Clone,
    {
        let current = self.slot.load();
        let fresh =
            matches!(&self.cached, Some((generation, _)) if *generation == current.generation);
        if !fresh {
            // A swap since this service last looked (or its first call): the new stack (the
            // old one's readiness, if any, goes with it).
            self.cached = Some((current.generation, current.service.clone()));
        }
        drop(current);
        let (_, service) = self.cached.as_mut().expect("just filled");
        service
    }
}

impl<S> Clone for Reloadable<S> {
    fn clone(&self) -> Self {
        Reloadable {
            slot: Arc::clone(&self.slot),
            cached: None,
        }
    }
}

impl<S> fmt::Debug for Reloadable<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloadable")
            .field(
                "generation",
                &self.cached.as_ref().map(|(generation, _)| generation),
            )
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for Reloadable<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.current().poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        match &mut self.cached {
            // The stack `poll_ready` readied, even if a swap came in between.
            Some((_, service)) => service.call(request),
            None => self.current().call(request),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
