//! Levels per code: go-grpc-middleware's defaults, and the dynamic-level helpers `tracing`
//! needs (its macros take a constant level).

use palisade_core::Code;
use tracing::Level;

use crate::TARGET;

/// go-grpc-middleware's `DefaultServerCodeToLevel`: the level of a server's finish event.
///
/// - `INFO`: OK, NotFound, Canceled, AlreadyExists, InvalidArgument, Unauthenticated;
/// - `WARN`: DeadlineExceeded, PermissionDenied, ResourceExhausted, FailedPrecondition,
///   Aborted, OutOfRange, Unavailable;
/// - `ERROR`: Unknown, Unimplemented, Internal, DataLoss.
///
/// ```
/// use palisade_core::Code;
/// use palisade_logging::default_server_level;
/// use tracing::Level;
///
/// assert_eq!(default_server_level(Code::NotFound), Level::INFO);
/// assert_eq!(default_server_level(Code::Unavailable), Level::WARN);
/// assert_eq!(default_server_level(Code::Internal), Level::ERROR);
/// ```
pub fn default_server_level(code: Code) -> Level {
    match code {
        Code::Ok
        | Code::NotFound
        | Code::Cancelled
        | Code::AlreadyExists
        | Code::InvalidArgument
        | Code::Unauthenticated => Level::INFO,
        Code::DeadlineExceeded
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable => Level::WARN,
        Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => Level::ERROR,
    }
}

/// go-grpc-middleware's `DefaultClientCodeToLevel`: the level of a client's finish event.
///
/// - `DEBUG`: OK, Canceled, InvalidArgument, NotFound, AlreadyExists, ResourceExhausted,
///   FailedPrecondition, Aborted, OutOfRange;
/// - `INFO`: Unknown, DeadlineExceeded, PermissionDenied, Unauthenticated;
/// - `WARN`: Unimplemented, Internal, Unavailable, DataLoss.
///
/// ```
/// use palisade_core::Code;
/// use palisade_logging::default_client_level;
/// use tracing::Level;
///
/// assert_eq!(default_client_level(Code::Ok), Level::DEBUG);
/// assert_eq!(default_client_level(Code::PermissionDenied), Level::INFO);
/// assert_eq!(default_client_level(Code::Unavailable), Level::WARN);
/// ```
pub fn default_client_level(code: Code) -> Level {
    match code {
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange => Level::DEBUG,
        Code::Unknown | Code::DeadlineExceeded | Code::PermissionDenied | Code::Unauthenticated => {
            Level::INFO
        }
        Code::Unimplemented | Code::Internal | Code::Unavailable | Code::DataLoss => Level::WARN,
    }
}

/// Whether the current subscriber may want something at `level` from this crate's target:
/// the global max level and the callsite's cached interest, so a filtered-out layer costs a few
/// loads.
pub(crate) fn level_enabled(level: Level) -> bool {
    if level == Level::ERROR {
        tracing::enabled!(target: TARGET, Level::ERROR)
    } else if level == Level::WARN {
        tracing::enabled!(target: TARGET, Level::WARN)
    } else if level == Level::INFO {
        tracing::enabled!(target: TARGET, Level::INFO)
    } else if level == Level::DEBUG {
        tracing::enabled!(target: TARGET, Level::DEBUG)
    } else {
        tracing::enabled!(target: TARGET, Level::TRACE)
    }
}

/// `tracing::event!` with an explicit parent at a level known only at run time.
macro_rules! event_at {
    ($level:expr, parent: $parent:expr, $($fields:tt)+) => {{
        let level: ::tracing::Level = $level;
        if level == ::tracing::Level::ERROR {
            ::tracing::event!(target: $crate::TARGET, parent: $parent, ::tracing::Level::ERROR, $($fields)+)
        } else if level == ::tracing::Level::WARN {
            ::tracing::event!(target: $crate::TARGET, parent: $parent, ::tracing::Level::WARN, $($fields)+)
        } else if level == ::tracing::Level::INFO {
            ::tracing::event!(target: $crate::TARGET, parent: $parent, ::tracing::Level::INFO, $($fields)+)
        } else if level == ::tracing::Level::DEBUG {
            ::tracing::event!(target: $crate::TARGET, parent: $parent, ::tracing::Level::DEBUG, $($fields)+)
        } else {
            ::tracing::event!(target: $crate::TARGET, parent: $parent, ::tracing::Level::TRACE, $($fields)+)
        }
    }};
}

/// `tracing::span!` with an explicit parent at a level known only at run time.
macro_rules! span_at {
    ($level:expr, parent: $parent:expr, $($fields:tt)+) => {{
        let level: ::tracing::Level = $level;
        if level == ::tracing::Level::ERROR {
            ::tracing::span!(target: $crate::TARGET, parent: $parent, ::tracing::Level::ERROR, $($fields)+)
        } else if level == ::tracing::Level::WARN {
            ::tracing::span!(target: $crate::TARGET, parent: $parent, ::tracing::Level::WARN, $($fields)+)
        } else if level == ::tracing::Level::INFO {
            ::tracing::span!(target: $crate::TARGET, parent: $parent, ::tracing::Level::INFO, $($fields)+)
        } else if level == ::tracing::Level::DEBUG {
            ::tracing::span!(target: $crate::TARGET, parent: $parent, ::tracing::Level::DEBUG, $($fields)+)
        } else {
            ::tracing::span!(target: $crate::TARGET, parent: $parent, ::tracing::Level::TRACE, $($fields)+)
        }
    }};
}

pub(crate) use {event_at, span_at};
