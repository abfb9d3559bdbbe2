//! Whether the server layer touches bodies: [`Plain`] (the default) never does; [`Metered`]
//! wraps them for per-message limits.

use http_body::Body;

use crate::body::{MeteredService, RequestBody, ResponseBody};

mod sealed {
    pub trait Sealed {}
}

/// How the server layer treats bodies; see [`Plain`] and [`Metered`].
///
/// Either way the layer's service is palisade-core's [`Admit`](palisade_core::admit::Admit)
/// with the [`RateLimitAdmission`](crate::RateLimitAdmission); the mode says what is between
/// it and your service ([`Inner`](Mode::Inner)).
///
/// Sealed: the layer's two modes are the only ones.
pub trait Mode: sealed::Sealed + Send + Sync + 'static {
    /// The request body the inner service gets.
    type RequestBody<B: Body>;
    /// The response body the admission wraps (in
    /// [`admit::ResponseBody`](palisade_core::admit::ResponseBody)).
    type ResponseBody<B>;
    /// What the admission calls: your service itself, or a [`MeteredService`] around it.
    type Inner<S>;

    /// Wraps the inner service.
    #[doc(hidden)]
    fn inner<S>(service: S) -> Self::Inner<S>;
}

/// The default mode: request and response bodies pass untouched — the inner service gets the
/// request the layer got, and the layer returns the response it gets (in
/// [`admit::ResponseBody`](palisade_core::admit::ResponseBody), which forwards its frames).
/// Per-message limits need [`Metered`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Plain;

/// Request bodies become [`RequestBody`]s, which take a token per received message for
/// [per-message limits](crate::Limit::per_message), and responses [`ResponseBody`]s, which end
/// a stream cut for want of tokens with the rejection (see the [`body`](crate::body) module).
/// Made by [`RateLimitBuilder::build_metered`](crate::RateLimitBuilder::build_metered).
#[derive(Clone, Copy, Debug, Default)]
pub struct Metered;

impl sealed::Sealed for Plain {}
impl sealed::Sealed for Metered {}

impl Mode for Plain {
    type RequestBody<B: Body> = B;
    type ResponseBody<B> = B;
    type Inner<S> = S;

    #[inline(always)]
    fn inner<S>(service: S) -> S {
        service
    }
}

impl Mode for Metered {
    type RequestBody<B: Body> = RequestBody<B>;
    type ResponseBody<B> = ResponseBody<B>;
    type Inner<S> = MeteredService<S>;

    fn inner<S>(service: S) -> MeteredService<S> {
        MeteredService::new(service)
    }
}
