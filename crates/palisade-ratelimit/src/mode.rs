//! Whether the server layer touches bodies: [`Plain`] (the default) never does; [`Metered`]
//! wraps them for per-message limits.

use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;
use palisade_core::Rejection;
use tower_service::Service;

use crate::{
    backend::Decision,
    body::{Cut, Meter, RequestBody, ResponseBody},
    key::RequestInfo,
    series::Lookup,
    shared::{Shared, Tally, write_headers},
};

mod sealed {
    pub trait Sealed {}
}

/// How the server layer treats bodies; see [`Plain`] and [`Metered`].
///
/// Sealed: the layer's two modes are the only ones.
pub trait Mode: sealed::Sealed + Send + Sync + 'static {
    /// The request body the inner service gets.
    type RequestBody<B: Body>;
    /// The response body the layer returns.
    type ResponseBody<B>;

    /// Calls the inner service with a call that passed.
    #[doc(hidden)]
    fn dispatch<S, B>(call: Dispatch<'_, B>, inner: &mut S) -> (S::Future, Option<Box<Extra>>)
    where
        S: Service<Request<Self::RequestBody<B>>>,
        B: Body;

    /// Calls the inner service with a call no limit applies to.
    #[doc(hidden)]
    fn pass<S, B>(request: Request<B>, inner: &mut S) -> S::Future
    where
        S: Service<Request<Self::RequestBody<B>>>,
        B: Body;

    /// A response without extras, as the layer returns it.
    #[doc(hidden)]
    fn wrap<B>(response: Response<B>) -> Response<Self::ResponseBody<B>>;

    /// The response the layer returns.
    #[doc(hidden)]
    fn finish<B: Default>(
        response: Response<B>,
        extra: Option<Box<Extra>>,
    ) -> Response<Self::ResponseBody<B>>;

    /// A rejection as the layer's response.
    #[doc(hidden)]
    fn reject<B: Default>(rejection: Rejection) -> Response<Self::ResponseBody<B>>;
}

/// The default mode: request and response bodies pass untouched — the inner service gets the
/// request the layer got, and the layer returns the response it gets. Per-message limits need
/// [`Metered`].
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

/// A call every limit let through, on its way to the inner service.
#[doc(hidden)]
#[derive(Debug)]
pub struct Dispatch<'a, B> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) lookup: &'a Lookup<'a>,
    pub(crate) tally: &'a Tally,
    pub(crate) request: Request<B>,
}

/// What a few calls carry to their response: `x-ratelimit-*` values
/// ([`RateLimitHeaders::Always`](crate::RateLimitHeaders::Always)) and the cut of a metered
/// stream. Boxed, so that the common call's future stays small.
#[doc(hidden)]
#[derive(Debug)]
pub struct Extra {
    pub(crate) headers: Option<Decision>,
    pub(crate) cut: Option<Arc<Cut>>,
}

impl Extra {
    fn headers(headers: Option<Decision>) -> Option<Box<Extra>> {
        headers.map(|headers| {
            Box::new(Extra {
                headers: Some(headers),
                cut: None,
            })
        })
    }
}

impl Mode for Plain {
    type RequestBody<B: Body> = B;
    type ResponseBody<B> = B;

    #[inline]
    fn dispatch<S, B>(call: Dispatch<'_, B>, inner: &mut S) -> (S::Future, Option<Box<Extra>>)
    where
        S: Service<Request<B>>,
        B: Body,
    {
        let entry = call.lookup.entry();
        call.shared.count_passed(entry, call.tally);
        let extra = Extra::headers(call.shared.allowed_headers(call.tally));
        (inner.call(call.request), extra)
    }

    #[inline]
    fn pass<S, B>(request: Request<B>, inner: &mut S) -> S::Future
    where
        S: Service<Request<B>>,
        B: Body,
    {
        inner.call(request)
    }

    #[inline(always)]
    fn wrap<B>(response: Response<B>) -> Response<B> {
        response
    }

    #[inline]
    fn finish<B: Default>(mut response: Response<B>, extra: Option<Box<Extra>>) -> Response<B> {
        if let Some(decision) = extra.and_then(|extra| extra.headers) {
            write_headers(response.headers_mut(), &decision);
        }
        response
    }

    fn reject<B: Default>(rejection: Rejection) -> Response<B> {
        rejection.into_response()
    }
}

impl Mode for Metered {
    type RequestBody<B: Body> = RequestBody<B>;
    type ResponseBody<B> = ResponseBody<B>;

    fn dispatch<S, B>(call: Dispatch<'_, B>, inner: &mut S) -> (S::Future, Option<Box<Extra>>)
    where
        S: Service<Request<RequestBody<B>>>,
        B: Body,
    {
        let Dispatch {
            shared,
            lookup,
            tally,
            request,
        } = call;
        let entry = lookup.entry();
        shared.count_passed(entry, tally);
        let headers = shared.allowed_headers(tally);
        if entry.per_message {
            let charges = shared.message_charges(entry, &RequestInfo::new(&request));
            if !charges.is_empty() {
                let cut = Arc::new(Cut::default());
                let meter =
                    Meter::new(shared.clone(), entry.counters.clone(), charges, cut.clone());
                let future = inner.call(request.map(|body| RequestBody::metered(body, meter)));
                let extra = Extra {
                    headers,
                    cut: Some(cut),
                };
                return (future, Some(Box::new(extra)));
            }
        }
        (
            inner.call(request.map(RequestBody::new)),
            Extra::headers(headers),
        )
    }

    fn pass<S, B>(request: Request<B>, inner: &mut S) -> S::Future
    where
        S: Service<Request<RequestBody<B>>>,
        B: Body,
    {
        inner.call(request.map(RequestBody::new))
    }

    fn wrap<B>(response: Response<B>) -> Response<ResponseBody<B>> {
        response.map(|body| ResponseBody::new(body, None))
    }

    fn finish<B: Default>(
        response: Response<B>,
        extra: Option<Box<Extra>>,
    ) -> Response<ResponseBody<B>> {
        let Some(extra) = extra else {
            return Self::wrap(response);
        };
        let Extra { headers, cut } = *extra;
        if let Some(rejection) = cut.as_deref().and_then(Cut::get) {
            // The request stream was cut before the response started.
            return rejection.to_response();
        }
        let mut response = response.map(|body| ResponseBody::new(body, cut));
        if let Some(decision) = headers {
            write_headers(response.headers_mut(), &decision);
        }
        response
    }

    fn reject<B: Default>(rejection: Rejection) -> Response<ResponseBody<B>> {
        rejection.into_response()
    }
}
