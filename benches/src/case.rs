//! A bench case — one service (or building block) with its requests and its `tracing`
//! subscriber — measured two ways: by criterion (wall-clock, per call) and, for instruction
//! counts, by running it a fixed number of times inside [`counted_region`].

use std::hint::black_box;

use criterion::{BatchSize, Bencher, Criterion, measurement::Measurement};
use http::{Request, Response};
use http_body::Body;
use palisade_demo::frames::GrpcBody;
use tower_service::Service;
use tracing::Dispatch;

use crate::{clock::BenchClock, drive::call_to_trailers, requests::Requests};

/// One measurable thing.
pub trait Case {
    /// One criterion measurement: the setup (building the request) outside the timed part,
    /// the call and its response polled to the trailers inside.
    fn bench(&mut self, b: &mut Bencher<'_, BenchClock>);

    /// Runs `warmup` calls, then `calls` more inside [`counted_region`] (inputs built before
    /// it), for `callgrind --toggle-collect`.
    fn count(&mut self, warmup: u64, calls: u64);

    /// Times `calls` calls on `clock` (inputs built before the clock starts), in nanoseconds
    /// per call: one batch of the interleaved measurement ([`crate::paired`]).
    fn batch(&mut self, clock: BenchClock, calls: usize) -> f64;
}

/// The code whose instructions callgrind counts (`--toggle-collect=*counted_region*`). Never
/// inlined, so the symbol exists.
#[inline(never)]
pub fn counted_region(work: &mut dyn FnMut()) {
    work();
}

/// A gRPC call through `service`, the response body polled to its trailers.
struct Rpc<S> {
    service: S,
    requests: Requests,
    dispatch: Dispatch,
}

impl<S, B> Case for Rpc<S>
where
    S: Service<Request<GrpcBody>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    fn bench(&mut self, b: &mut Bencher<'_, BenchClock>) {
        let Self {
            service,
            requests,
            dispatch,
        } = self;
        tracing::dispatcher::with_default(dispatch, || {
            b.iter_batched(
                || requests.request(),
                |request| call_to_trailers(service, black_box(request)),
                BatchSize::SmallInput,
            )
        });
    }

    fn count(&mut self, warmup: u64, calls: u64) {
        let Self {
            service,
            requests,
            dispatch,
        } = self;
        tracing::dispatcher::with_default(dispatch, || {
            for _ in 0..warmup {
                black_box(call_to_trailers(service, requests.request()));
            }
            let mut batch: Vec<_> = (0..calls).map(|_| requests.request()).collect();
            counted_region(&mut || {
                for request in batch.drain(..) {
                    black_box(call_to_trailers(service, black_box(request)));
                }
            });
        });
    }

    fn batch(&mut self, clock: BenchClock, calls: usize) -> f64 {
        let Self {
            service,
            requests,
            dispatch,
        } = self;
        tracing::dispatcher::with_default(dispatch, || {
            let batch: Vec<_> = (0..calls).map(|_| requests.request()).collect();
            let started = clock.start();
            for request in batch {
                black_box(call_to_trailers(service, black_box(request)));
            }
            clock.to_f64(&clock.end(started)) / calls as f64
        })
    }
}

/// A case calling `service` with `requests`, no `tracing` subscriber.
pub fn rpc<S, B>(service: S, requests: Requests) -> Box<dyn Case>
where
    S: Service<Request<GrpcBody>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: Body + 'static,
    B::Error: std::fmt::Debug,
{
    rpc_with(service, requests, Dispatch::none())
}

/// A case calling `service` with `requests` under the `tracing` subscriber `dispatch`.
pub fn rpc_with<S, B>(service: S, requests: Requests, dispatch: Dispatch) -> Box<dyn Case>
where
    S: Service<Request<GrpcBody>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
    B: Body + 'static,
    B::Error: std::fmt::Debug,
{
    Box::new(Rpc {
        service,
        requests,
        dispatch,
    })
}

/// A building block measured alone (a floor): `routine(setup())` per iteration, the setup
/// outside the timed part.
struct Floor<I, R, F, G> {
    setup: F,
    routine: G,
    _io: std::marker::PhantomData<fn() -> (I, R)>,
}

impl<I, R, F, G> Case for Floor<I, R, F, G>
where
    F: FnMut() -> I,
    G: FnMut(I) -> R,
{
    fn bench(&mut self, b: &mut Bencher<'_, BenchClock>) {
        b.iter_batched(
            &mut self.setup,
            |input| (self.routine)(black_box(input)),
            BatchSize::SmallInput,
        );
    }

    fn count(&mut self, warmup: u64, calls: u64) {
        for _ in 0..warmup {
            black_box((self.routine)((self.setup)()));
        }
        let mut batch: Vec<I> = (0..calls).map(|_| (self.setup)()).collect();
        let routine = &mut self.routine;
        counted_region(&mut || {
            for input in batch.drain(..) {
                black_box(routine(black_box(input)));
            }
        });
    }

    fn batch(&mut self, clock: BenchClock, calls: usize) -> f64 {
        let batch: Vec<I> = (0..calls).map(|_| (self.setup)()).collect();
        let started = clock.start();
        for input in batch {
            black_box((self.routine)(black_box(input)));
        }
        clock.to_f64(&clock.end(started)) / calls as f64
    }
}

/// A floor case: `routine(setup())`, only the routine timed.
pub fn floor<I: 'static, R: 'static>(
    setup: impl FnMut() -> I + 'static,
    routine: impl FnMut(I) -> R + 'static,
) -> Box<dyn Case> {
    Box::new(Floor {
        setup,
        routine,
        _io: std::marker::PhantomData,
    })
}

/// Builds a case when it is first measured (cases filtered out are never built).
pub type Maker = Box<dyn Fn() -> Box<dyn Case>>;

/// A criterion group: cases measured one after the other, the first usually `bare`.
pub struct Group {
    /// The criterion group id, e.g. `layers/server/metrics`.
    pub id: &'static str,
    /// `(function id, maker)`.
    pub cases: Vec<(&'static str, Maker)>,
}

impl Group {
    /// An empty group.
    pub fn new(id: &'static str) -> Self {
        Self {
            id,
            cases: Vec::new(),
        }
    }

    /// Adds a case.
    pub fn case(mut self, name: &'static str, make: impl Fn() -> Box<dyn Case> + 'static) -> Self {
        self.cases.push((name, Box::new(make)));
        self
    }

    /// The full criterion ids (`group/function`) of the cases.
    pub fn ids(&self) -> impl Iterator<Item = String> + '_ {
        self.cases
            .iter()
            .map(move |(name, _)| format!("{}/{name}", self.id))
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field(
                "cases",
                &self.cases.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Measures every case of every group with criterion, building each case when criterion
/// first runs it.
pub fn bench_groups(c: &mut Criterion<BenchClock>, groups: Vec<Group>) {
    for group in groups {
        let mut criterion_group = c.benchmark_group(group.id);
        for (name, make) in &group.cases {
            let mut case: Option<Box<dyn Case>> = None;
            criterion_group.bench_function(*name, |b| {
                case.get_or_insert_with(|| make()).bench(b);
            });
        }
        criterion_group.finish();
    }
}
