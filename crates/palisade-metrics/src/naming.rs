//! Metric names, label keys and label values, for each [`Naming`].

use metrics::SharedString;
use palisade_core::{Code, MethodType, Side, code::go_name};

/// Which names and labels the layer records under.
///
/// # Example
///
/// ```
/// use palisade_metrics::{MetricsLayer, Naming};
///
/// // `rpc.server.call.duration` (seconds) with `rpc.system.name`, `rpc.method` and
/// // `rpc.response.status_code`, as OpenTelemetry's RPC conventions name it.
/// let layer = MetricsLayer::server().naming(Naming::OpenTelemetry).build();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Naming {
    /// go-grpc-prometheus's series, so its dashboards and alerts work as they are:
    /// `grpc_{server,client}_started_total`, `_handled_total` (with `grpc_code`),
    /// `_msg_received_total`, `_msg_sent_total` and the `_handling_seconds` histogram, labelled
    /// `grpc_type`, `grpc_service`, `grpc_method`.
    #[default]
    GoGrpcPrometheus,
    /// OpenTelemetry's RPC conventions: one histogram, `rpc.server.call.duration` or
    /// `rpc.client.call.duration` in seconds, labelled `rpc.system.name` (`grpc`), `rpc.method`
    /// (`package.Service/Method`, `_OTHER` for methods past the cardinality bound) and
    /// `rpc.response.status_code` (`OK`, `DEADLINE_EXCEEDED`, …). A Prometheus exporter writes
    /// the dots as underscores.
    OpenTelemetry,
}

/// One metric: its full name and help text.
#[derive(Clone, Debug)]
pub(crate) struct Metric {
    pub(crate) name: SharedString,
    pub(crate) help: &'static str,
}

/// The metrics one layer records; `None` for those its naming has not.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub(crate) started: Option<Metric>,
    pub(crate) handled: Option<Metric>,
    /// Messages the request body carries: received on a server, sent on a client.
    pub(crate) request_messages: Option<Metric>,
    /// Messages the response body carries: sent on a server, received on a client.
    pub(crate) response_messages: Option<Metric>,
    pub(crate) duration: Option<Metric>,
}

impl Names {
    pub(crate) fn new(naming: Naming, side: Side, namespace: Option<&str>) -> Self {
        match naming {
            Naming::GoGrpcPrometheus => {
                let name = |suffix: &str| -> SharedString {
                    let side = side.as_str();
                    match namespace {
                        Some(ns) => format!("{ns}_grpc_{side}_{suffix}").into(),
                        None => format!("grpc_{side}_{suffix}").into(),
                    }
                };
                let metric = |suffix: &str, help| {
                    Some(Metric {
                        name: name(suffix),
                        help,
                    })
                };
                let server = side == Side::Server;
                Names {
                    started: metric(
                        "started_total",
                        if server {
                            "Total number of RPCs started on the server."
                        } else {
                            "Total number of RPCs started on the client."
                        },
                    ),
                    handled: metric(
                        "handled_total",
                        if server {
                            "Total number of RPCs completed on the server, regardless of success or failure."
                        } else {
                            "Total number of RPCs completed by the client, regardless of success or failure."
                        },
                    ),
                    request_messages: if server {
                        metric(
                            "msg_received_total",
                            "Total number of RPC stream messages received on the server.",
                        )
                    } else {
                        metric(
                            "msg_sent_total",
                            "Total number of gRPC stream messages sent by the client.",
                        )
                    },
                    response_messages: if server {
                        metric(
                            "msg_sent_total",
                            "Total number of gRPC stream messages sent by the server.",
                        )
                    } else {
                        metric(
                            "msg_received_total",
                            "Total number of RPC stream messages received by the client.",
                        )
                    },
                    duration: metric(
                        "handling_seconds",
                        if server {
                            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
                        } else {
                            "Histogram of response latency (seconds) of the gRPC until it is finished by the application."
                        },
                    ),
                }
            }
            Naming::OpenTelemetry => {
                let side = side.as_str();
                let name: SharedString = match namespace {
                    Some(ns) => format!("{ns}.rpc.{side}.call.duration").into(),
                    None => format!("rpc.{side}.call.duration").into(),
                };
                Names {
                    started: None,
                    handled: None,
                    request_messages: None,
                    response_messages: None,
                    duration: Some(Metric {
                        name,
                        help: if side == "server" {
                            "Measures the duration of an incoming Remote Procedure Call (RPC)."
                        } else {
                            "Measures the duration of an outgoing Remote Procedure Call (RPC)."
                        },
                    }),
                }
            }
        }
    }
}

/// The labels naming one method, before constant labels and the code.
pub(crate) fn method_labels(
    naming: Naming,
    method: Option<(&str, &str)>,
    method_type: Option<MethodType>,
) -> Vec<(&'static str, SharedString)> {
    match naming {
        Naming::GoGrpcPrometheus => {
            let (service, method) = method.unwrap_or(("unknown", "unknown"));
            vec![
                (
                    "grpc_type",
                    SharedString::const_str(method_type.map_or("unknown", MethodType::as_str)),
                ),
                ("grpc_service", service.to_owned().into()),
                ("grpc_method", method.to_owned().into()),
            ]
        }
        Naming::OpenTelemetry => vec![
            ("rpc.system.name", SharedString::const_str("grpc")),
            (
                "rpc.method",
                match method {
                    Some((service, method)) => format!("{service}/{method}").into(),
                    None => SharedString::const_str("_OTHER"),
                },
            ),
        ],
    }
}

/// The code's label: `grpc_code` with Go's name, or `rpc.response.status_code` with gRPC's
/// canonical name.
pub(crate) fn code_label(naming: Naming, code: Code) -> (&'static str, &'static str) {
    match naming {
        Naming::GoGrpcPrometheus => ("grpc_code", go_name(code)),
        Naming::OpenTelemetry => ("rpc.response.status_code", canonical_name(code)),
    }
}

const CANONICAL_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// gRPC's canonical name of a code (`OK`, `DEADLINE_EXCEEDED`), as OpenTelemetry writes
/// `rpc.response.status_code`.
pub(crate) const fn canonical_name(code: Code) -> &'static str {
    CANONICAL_NAMES[code as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_core::code::ALL_CODES;

    #[test]
    fn canonical_names_follow_numbers() {
        assert_eq!(canonical_name(Code::Ok), "OK");
        assert_eq!(canonical_name(Code::Cancelled), "CANCELLED");
        assert_eq!(canonical_name(Code::Unauthenticated), "UNAUTHENTICATED");
        for code in ALL_CODES {
            // Same words as Go's names, written differently.
            let go = go_name(code).to_ascii_uppercase();
            let canonical = canonical_name(code).replace('_', "");
            assert_eq!(go.replace("CANCELED", "CANCELLED"), canonical, "{code:?}");
        }
    }

    #[test]
    fn namespaces_prefix_every_name() {
        let names = Names::new(Naming::GoGrpcPrometheus, Side::Client, Some("shop"));
        assert_eq!(
            &*names.started.unwrap().name,
            "shop_grpc_client_started_total"
        );
        assert_eq!(
            &*names.request_messages.unwrap().name,
            "shop_grpc_client_msg_sent_total"
        );
        assert_eq!(
            &*names.duration.unwrap().name,
            "shop_grpc_client_handling_seconds"
        );
        let names = Names::new(Naming::OpenTelemetry, Side::Server, None);
        assert!(names.started.is_none());
        assert_eq!(&*names.duration.unwrap().name, "rpc.server.call.duration");
    }
}
