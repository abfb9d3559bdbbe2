//! The builder of a [`MetricsLayer`].

use std::{fmt, marker::PhantomData, sync::Arc};

use metrics::{Label, Recorder};
use palisade_core::{
    Matcher, Method, MethodRegistry, ObserveLayer,
    build::{BoxError, BuildLayer},
    side::{Client, OnSide},
    slots::AdmissionRule,
};

use crate::{
    body::{CountRequestMessages, RequestBodies, SideDefault},
    handles::{Family, Registrar, Table},
    layer::MetricsLayer,
    naming::{Names, Naming},
    policy::MetricsPolicy,
};

/// How many methods first seen at run time may earn label values of their own when no method
/// is known (no registry, no allow-list): the rest are recorded as `unknown`.
///
/// A method earns its values by being called repeatedly (see
/// [`palisade_core::slots`]), so a flood of random paths takes none of them; still, on a server
/// exposed to untrusted callers give the layer the [registry](MetricsBuilder::registry), so that
/// no caller-chosen path ever becomes a label value.
pub const DEFAULT_MAX_DYNAMIC_METHODS: usize = 100;

/// Configures a [`MetricsLayer`]: a `MetricsBuilder<Server>` from [`MetricsLayer::server`] or a
/// `MetricsBuilder<Client>` from [`MetricsLayer::client`]; [`build`](MetricsBuilder::build)
/// makes the `MetricsLayer<K>` of the same side. `R` is the request bodies' handling, as in
/// [`MetricsLayer<K, R>`](MetricsLayer).
///
/// Handles are registered when [`build`](MetricsBuilder::build) runs, with the `metrics`
/// facade's recorder of that moment (or the one given to
/// [`recorder`](MetricsBuilder::recorder)): install the recorder first. A layer built while no
/// recorder is installed would record nothing, ever: `build` says so in a `tracing` warning.
///
/// # Example
///
/// ```
/// use palisade_core::{Matcher, MethodRegistry};
/// use palisade_metrics::MetricsLayer;
///
/// let registry = MethodRegistry::from_encoded_file_descriptor_set(palisade_demo::FILE_DESCRIPTOR_SET)
///     .unwrap();
/// let layer = MetricsLayer::server()
///     .registry(registry)                  // grpc_type, and the methods that get their own series
///     .histogram_with_code(true)           // grpc_code on grpc_server_handling_seconds too
///     .namespace("shop")                   // shop_grpc_server_started_total, ...
///     .constant_label("region", "eu-west-1")
///     .skip(Matcher::health_and_reflection())
///     .build();
/// # let _ = layer;
/// ```
#[must_use = "a builder does nothing until `.build()` makes the layer"]
pub struct MetricsBuilder<K, R = SideDefault> {
    naming: Naming,
    namespace: Option<String>,
    constant_labels: Vec<Label>,
    histogram_with_code: bool,
    registry: Option<MethodRegistry>,
    allow: Vec<String>,
    max_dynamic: Option<usize>,
    skip: Option<Matcher>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    _side: PhantomData<fn() -> (K, R)>,
}

impl<K: OnSide> MetricsBuilder<K> {
    pub(crate) fn new() -> Self {
        Self {
            naming: Naming::default(),
            namespace: None,
            constant_labels: Vec::new(),
            histogram_with_code: false,
            registry: None,
            allow: Vec::new(),
            max_dynamic: None,
            skip: None,
            recorder: None,
            _side: PhantomData,
        }
    }
}

impl MetricsBuilder<Client> {
    /// Counts a client's request messages (`grpc_client_msg_sent_total`) in the request body,
    /// streams included: the inner service gets a [`RequestBody`](crate::RequestBody) instead
    /// of the request's own body, and the layer is a
    /// `MetricsLayer<Client, CountRequestMessages>`.
    ///
    /// Such a layer does **not** fit a tonic `Channel` as it comes (a `Channel` takes
    /// `tonic::body::Body`): box the body below it, as here. Without this option a client
    /// layer leaves the request body unchanged and counts the one request message of a unary
    /// or server-streaming call when the call starts (for methods whose type the
    /// [registry](Self::registry) gives); client- and bidi-streaming calls' request messages
    /// are then not counted.
    ///
    /// ```
    /// use palisade_core::side::Client;
    /// use palisade_metrics::{MetricsLayer, body::CountRequestMessages};
    ///
    /// let layer: MetricsLayer<Client, CountRequestMessages> =
    ///     MetricsLayer::client().count_request_messages().build();
    /// # async fn on_a_channel(layer: MetricsLayer<Client, CountRequestMessages>) {
    /// # let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let channel = tower::ServiceBuilder::new()
    ///     .layer(layer)
    ///     .map_request(|request: http::Request<_>| request.map(tonic::body::Body::new))
    ///     .service(channel);
    /// let _client = palisade_demo::pb::greeter_client::GreeterClient::new(channel);
    /// # }
    /// # let _ = layer;
    /// ```
    pub fn count_request_messages(self) -> MetricsBuilder<Client, CountRequestMessages> {
        MetricsBuilder {
            naming: self.naming,
            namespace: self.namespace,
            constant_labels: self.constant_labels,
            histogram_with_code: self.histogram_with_code,
            registry: self.registry,
            allow: self.allow,
            max_dynamic: self.max_dynamic,
            skip: self.skip,
            recorder: self.recorder,
            _side: PhantomData,
        }
    }
}

impl<K: OnSide, R> MetricsBuilder<K, R> {
    /// The names and labels to record under; go-grpc-prometheus's by default.
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Prefixes every metric name, as Prometheus client libraries' `namespace` does:
    /// `{namespace}_grpc_server_started_total`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Adds a label with a fixed value to every series this layer records.
    pub fn constant_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.constant_labels
            .push(Label::new(key.into(), value.into()));
        self
    }

    /// Adds `grpc_code` to the handling-time histogram (off by default, as in
    /// go-grpc-prometheus). Its series are created per code on first use.
    pub fn histogram_with_code(mut self, enabled: bool) -> Self {
        self.histogram_with_code = enabled;
        self
    }

    /// The methods the service (or client) knows, with their types: they give `grpc_type`,
    /// their series exist from the start with zero values, and — unless
    /// [`max_dynamic_methods`](Self::max_dynamic_methods) says otherwise — only they get
    /// label values of their own; every other path is recorded as `unknown`.
    pub fn registry(mut self, registry: MethodRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Adds methods (`package.Service/Method`) to the allow-list: known like the registry's,
    /// with `grpc_type` from the registry when it has them, `unknown` otherwise.
    pub fn allow_methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.allow.extend(methods.into_iter().map(Into::into));
        self
    }

    /// How many methods that are not known may still get label values of their own. On a
    /// server a method earns them only once it has been called
    /// [`ADMISSION_THRESHOLD`](palisade_core::slots::ADMISSION_THRESHOLD) times recently, so
    /// paths called once or twice — a scan, a flood of random paths — never take the slots from
    /// real methods; its first few calls are recorded as `unknown`, so without a registry a
    /// server shows an `unknown` series beside its methods' own: give the layer the
    /// [registry](Self::registry). On a client, whose paths are its own, a method gets its
    /// slot at its first call. Past the cap every other
    /// path is recorded under `grpc_service="unknown"`, `grpc_method="unknown"`, as Envoy's gRPC
    /// stats filter does. Default: 0 when methods are known (a registry or an allow-list),
    /// [`DEFAULT_MAX_DYNAMIC_METHODS`] otherwise.
    ///
    /// A series cannot be taken back once exported, so a slot is never given up: a caller who
    /// repeats made-up paths can still take them. On a server exposed to untrusted callers,
    /// give the layer the [registry](Self::registry) and leave this at 0.
    pub fn max_dynamic_methods(mut self, max: usize) -> Self {
        self.max_dynamic = Some(max);
        self
    }

    /// RPCs this matcher selects are not recorded at all (their bodies pass untouched); by
    /// default every RPC is recorded. Called again, the matchers add up: an RPC either one
    /// selects is skipped.
    pub fn skip(mut self, matcher: Matcher) -> Self {
        self.skip = Some(match self.skip.take() {
            Some(skipped) => skipped.or(matcher),
            None => matcher,
        });
        self
    }

    /// Registers handles with this recorder instead of the `metrics` facade's global one — for
    /// tests, or to keep these series in a registry of their own.
    pub fn recorder<T: Recorder + Send + Sync + 'static>(mut self, recorder: Arc<T>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Registers the handles of every known method and makes the layer.
    pub fn build(self) -> MetricsLayer<K, R>
    where
        R: RequestBodies<K>,
    {
        let side = K::SIDE;
        // The first reading of the clock calibrates it: here, not on the first RPC.
        let _ = quanta::Instant::now();
        let family = Arc::new(Family {
            naming: self.naming,
            names: Names::new(self.naming, side, self.namespace.as_deref()),
            constant_labels: self.constant_labels,
            duration_by_code: self.histogram_with_code || self.naming == Naming::OpenTelemetry,
            registrar: Registrar::new(self.recorder),
        });
        if family.registrar.is_unrecorded() {
            // Refusing would break `build`'s signature; the handles registered now are no-ops
            // for good, so say it once, here.
            tracing::warn!(
                "palisade-metrics: a MetricsLayer was built while no `metrics` recorder is \
                 installed, so its series are no-ops and /metrics will never show them; install \
                 the recorder first (`PrometheusExporter::new().serve(addr).await` or \
                 `.install()`) and build the layer after it, or give it one with \
                 `MetricsBuilder::recorder`"
            );
        }
        family.describe();

        let allowed: Vec<_> = self
            .allow
            .iter()
            .filter_map(|name| {
                let path = format!("/{}", name.trim_start_matches('/'));
                Method::parse(&path)?;
                Some(path)
            })
            .collect();
        let registry = self.registry.unwrap_or_default();
        let known = registry
            .iter()
            .map(|info| {
                (
                    info.service.as_str(),
                    info.method.as_str(),
                    Some(info.method_type),
                )
            })
            .chain(allowed.iter().filter_map(|path| {
                let method = Method::parse(path)?;
                let method_type = registry.get(&method).map(|info| info.method_type);
                Some((method.service(), method.method(), method_type))
            }));
        let any_known = !registry.is_empty() || !allowed.is_empty();
        let max_dynamic = self.max_dynamic.unwrap_or(if any_known {
            0
        } else {
            DEFAULT_MAX_DYNAMIC_METHODS
        });
        let table = Table::new(
            family.clone(),
            known,
            max_dynamic,
            AdmissionRule::for_side(side),
        );

        let count_messages = self.naming == Naming::GoGrpcPrometheus;
        let policy = MetricsPolicy {
            table,
            side,
            naming: self.naming,
            observe_requests: count_messages && R::OBSERVED,
            count_one_request_at_start: count_messages && !R::OBSERVED,
        };
        MetricsLayer {
            inner: ObserveLayer::with_skip(policy, self.skip).map_request_body(),
        }
    }
}

impl<K, R> Clone for MetricsBuilder<K, R> {
    fn clone(&self) -> Self {
        Self {
            naming: self.naming,
            namespace: self.namespace.clone(),
            constant_labels: self.constant_labels.clone(),
            histogram_with_code: self.histogram_with_code,
            registry: self.registry.clone(),
            allow: self.allow.clone(),
            max_dynamic: self.max_dynamic,
            skip: self.skip.clone(),
            recorder: self.recorder.clone(),
            _side: PhantomData,
        }
    }
}

impl<K: OnSide, R> fmt::Debug for MetricsBuilder<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsBuilder")
            .field("side", &K::SIDE)
            .field("naming", &self.naming)
            .field("namespace", &self.namespace)
            .field("constant_labels", &self.constant_labels)
            .field("histogram_with_code", &self.histogram_with_code)
            .field("registry", &self.registry)
            .field("allow", &self.allow)
            .field("max_dynamic", &self.max_dynamic)
            .field("skip", &self.skip)
            .field("recorder", &self.recorder.as_ref().map(|_| ".."))
            .finish()
    }
}

/// A builder fits a preset's slot of its own side: it takes the preset's registry if it was
/// given none, and is built there.
impl<K: OnSide, R: RequestBodies<K>> BuildLayer<K> for MetricsBuilder<K, R> {
    type Layer = MetricsLayer<K, R>;
    const NAME: &'static str = "metrics";

    fn use_registry(mut self, registry: &MethodRegistry) -> Self {
        if self.registry.is_none() {
            self.registry = Some(registry.clone());
        }
        self
    }

    fn build_layer(self) -> Result<MetricsLayer<K, R>, BoxError> {
        Ok(self.build())
    }
}
