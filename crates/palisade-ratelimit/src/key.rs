//! Keys: which caller a call belongs to, for per-key buckets.

use std::{
    borrow::Cow,
    fmt,
    marker::PhantomData,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use http::{Extensions, HeaderMap, HeaderName, Uri};
use palisade_core::{Method, Peer};

/// Where a limit finds a call's key: the peer's address, a metadata value, a value in the
/// request extensions (such as the JWT claims palisade-jwt puts there), or your own function.
///
/// # Example
///
/// ```
/// use palisade_ratelimit::{Key, KeyValue};
///
/// // The caller's IP address (IPv4, or IPv6 by /64 network).
/// let peer = Key::peer_ip();
/// // An API key or tenant header.
/// let api_key = Key::metadata("x-api-key");
/// // A value some earlier layer put into the extensions — say an authenticated subject.
/// #[derive(Clone)]
/// struct Subject(String);
/// let subject = Key::extension(|subject: &Subject| Some(KeyValue::from(subject.0.as_str())));
/// // Anything else.
/// let tenant = Key::from_fn(|request| {
///     let host = request.uri().host()?;
///     Some(KeyValue::from(host))
/// });
/// # let _ = (peer, api_key, subject, tenant);
/// ```
#[derive(Clone)]
pub struct Key(Source);

#[derive(Clone)]
enum Source {
    PeerIp { v4_prefix: u8, v6_prefix: u8 },
    Metadata(HeaderName),
    Custom(Arc<dyn KeyExtractor>),
}

impl Key {
    /// The peer's IP address (tonic's connection info, or a [`Peer`] in the extensions): an
    /// IPv4 address as is, an IPv6 address by its /64 network — one host usually holds a whole
    /// /64, so per-address limits on IPv6 would be free to dodge. IPv4-mapped IPv6 addresses
    /// count as IPv4. Calls without a peer address are keyless.
    pub fn peer_ip() -> Self {
        Self::peer_network(32, 64)
    }

    /// The peer's network: its IP address masked to `v4_prefix` bits (at most 32) for IPv4
    /// and `v6_prefix` bits (at most 128) for IPv6.
    pub fn peer_network(v4_prefix: u8, v6_prefix: u8) -> Self {
        Key(Source::PeerIp {
            v4_prefix: v4_prefix.min(32),
            v6_prefix: v6_prefix.min(128),
        })
    }

    /// The value of a metadata entry (its first, when repeated), such as `x-api-key` or a
    /// tenant header. An absent or empty value is no key.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid metadata name (lowercase, no spaces) — a configuration error.
    pub fn metadata(name: impl AsRef<str>) -> Self {
        Self::try_metadata(name.as_ref())
            .unwrap_or_else(|_| panic!("{:?} is not a valid metadata name", name.as_ref()))
    }

    /// [`Key::metadata`] for names read at run time (a command-line flag): an invalid name is
    /// an error.
    ///
    /// ```
    /// use palisade_ratelimit::Key;
    /// assert!(Key::try_metadata("x-tenant").is_ok());
    /// assert!(Key::try_metadata("not a name").is_err());
    /// ```
    pub fn try_metadata(name: &str) -> Result<Self, http::header::InvalidHeaderName> {
        Ok(Key(Source::Metadata(HeaderName::try_from(name)?)))
    }

    /// A value an earlier layer put into the request extensions, read by `f`; no `T` in the
    /// extensions (or `f` answering `None`) is no key.
    ///
    /// The layer that puts `T` there must run before the limit (be outside it). When none of
    /// the first 16 calls a key sees has a `T` at all — a per-subject limit placed before
    /// authentication, which would put every caller in one shared bucket — it says so once, in
    /// a `tracing` warning. (A few calls without it first, to public methods that
    /// authentication lets through, are not a misplacement: one call with it in those 16 and
    /// the key never warns.)
    ///
    /// The JWT subject, with palisade-jwt's verified claims in the extensions:
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use palisade_jwt::StandardClaims;
    /// use palisade_ratelimit::{Key, KeyValue, Limit, NoKey, Quota};
    ///
    /// let subject = Key::extension(|c: &StandardClaims| c.subject().map(KeyValue::from));
    /// let limit = Limit::per_key(subject, Quota::per_second(NonZeroU32::new(10).unwrap()))
    ///     .when_keyless(NoKey::Reject);
    /// # let _ = limit;
    /// ```
    pub fn extension<T, F>(f: F) -> Self
    where
        T: Send + Sync + 'static,
        F: for<'a> Fn(&'a T) -> Option<KeyValue<'a>> + Send + Sync + 'static,
    {
        Key(Source::Custom(Arc::new(FromExtension {
            f,
            missing: AtomicU32::new(0),
            _type: PhantomData::<fn(&T)>,
        })))
    }

    /// A value of type `T` in the request extensions, as bytes (`String`, `Vec<u8>`,
    /// `bytes::Bytes`, or your newtype implementing `AsRef<[u8]>`).
    pub fn extension_value<T>() -> Self
    where
        T: AsRef<[u8]> + Send + Sync + 'static,
    {
        Self::extension(|value: &T| Some(KeyValue::from(value.as_ref())))
    }

    /// A key computed by `f` from the request's method, URI, headers and extensions.
    pub fn from_fn<F>(f: F) -> Self
    where
        F: for<'a> Fn(&RequestInfo<'a>) -> Option<KeyValue<'a>> + Send + Sync + 'static,
    {
        Self::custom(FromFn(f))
    }

    /// A key from your own [`KeyExtractor`].
    pub fn custom(extractor: impl KeyExtractor) -> Self {
        Key(Source::Custom(Arc::new(extractor)))
    }

    /// The key of a request, if it has one.
    pub fn extract<'a>(&self, request: &RequestInfo<'a>) -> Option<KeyValue<'a>> {
        match &self.0 {
            Source::PeerIp {
                v4_prefix,
                v6_prefix,
            } => {
                let ip = Peer::remote_addr_of(request.extensions())?
                    .ip()
                    .to_canonical();
                Some(KeyValue::ip(ip, *v4_prefix, *v6_prefix))
            }
            Source::Metadata(name) => {
                let value = request.headers().get(name)?.as_bytes();
                (!value.is_empty()).then(|| KeyValue::from(value))
            }
            Source::Custom(extractor) => extractor.extract(request),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::PeerIp {
                v4_prefix,
                v6_prefix,
            } => write!(f, "PeerIp(/{v4_prefix}, /{v6_prefix})"),
            Source::Metadata(name) => f.debug_tuple("Metadata").field(name).finish(),
            Source::Custom(extractor) => f.debug_tuple("Custom").field(extractor).finish(),
        }
    }
}

/// Finds a call's key; implemented for closures by [`Key::from_fn`], or write your own and
/// use [`Key::custom`].
///
/// # Example
///
/// ```
/// use palisade_ratelimit::{Key, KeyExtractor, KeyValue, RequestInfo};
///
/// /// The tenant: the `x-tenant` header, else the `:authority`.
/// #[derive(Debug)]
/// struct Tenant;
///
/// impl KeyExtractor for Tenant {
///     fn extract<'a>(&self, request: &RequestInfo<'a>) -> Option<KeyValue<'a>> {
///         match request.headers().get("x-tenant") {
///             Some(value) => Some(KeyValue::from(value.as_bytes())),
///             None => request.uri().authority().map(|a| KeyValue::from(a.as_str())),
///         }
///     }
/// }
///
/// let key = Key::custom(Tenant);
/// # let _ = key;
/// ```
pub trait KeyExtractor: fmt::Debug + Send + Sync + 'static {
    /// The key of a request, if it has one.
    fn extract<'a>(&self, request: &RequestInfo<'a>) -> Option<KeyValue<'a>>;
}

struct FromFn<F>(F);

impl<F> KeyExtractor for FromFn<F>
where
    F: for<'a> Fn(&RequestInfo<'a>) -> Option<KeyValue<'a>> + Send + Sync + 'static,
{
    fn extract<'a>(&self, request: &RequestInfo<'a>) -> Option<KeyValue<'a>> {
        (self.0)(request)
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn(..)")
    }
}

struct FromExtension<T, F> {
    f: F,
    /// How many of the first calls had no `T`, up to [`CHECKED_CALLS`]; [`CHECKED`] once a
    /// call had one or the warning was given.
    missing: AtomicU32,
    _type: PhantomData<fn(&T)>,
}

/// How many calls without the extension, before any with it, make a key warn.
const CHECKED_CALLS: u32 = 16;

/// The check is over.
const CHECKED: u32 = u32::MAX;

impl<T, F> FromExtension<T, F> {
    #[cold]
    fn check(&self, present: bool) {
        if present {
            self.missing.store(CHECKED, Ordering::Relaxed);
            return;
        }
        let counted = self
            .missing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |missing| {
                (missing < CHECKED_CALLS).then_some(missing + 1)
            });
        if counted == Ok(CHECKED_CALLS - 1) {
            self.missing.store(CHECKED, Ordering::Relaxed);
            tracing::warn!(
                extension = std::any::type_name::<T>(),
                calls = CHECKED_CALLS,
                "palisade-ratelimit: a limit keyed on a request extension found none in its \
                 first calls: the layer that adds it (authentication, for claims) must come \
                 before the rate limit, or every caller without it shares one bucket \
                 (`NoKey::Shared`); put the limit after auth, or choose \
                 `Limit::when_keyless(NoKey::Reject)`"
            );
        }
    }
}

impl<T, F> KeyExtractor for FromExtension<T, F>
where
    T: Send + Sync + 'static,
    F: for<'a> Fn(&'a T) -> Option<KeyValue<'a>> + Send + Sync + 'static,
{
    fn extract<'a>(&self, request: &RequestInfo<'a>) -> Option<KeyValue<'a>> {
        let value = request.extensions().get::<T>();
        if self.missing.load(Ordering::Relaxed) != CHECKED {
            self.check(value.is_some());
        }
        (self.f)(value?)
    }
}

impl<T, F> fmt::Debug for FromExtension<T, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extension<{}>", std::any::type_name::<T>())
    }
}

/// What a key function sees of a request: its method, URI, metadata and extensions.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    /// The view of a request.
    pub fn new<B>(request: &'a http::Request<B>) -> Self {
        Self {
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The view of a request's head.
    pub(crate) fn from_parts(parts: &'a http::request::Parts) -> Self {
        Self {
            uri: &parts.uri,
            headers: &parts.headers,
            extensions: &parts.extensions,
        }
    }

    /// The gRPC method, when the path is one (parsed on each call: keep it if you need it
    /// twice).
    pub fn method(&self) -> Option<Method<'a>> {
        Method::from_uri(self.uri)
    }

    /// The request URI.
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request metadata.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The request extensions.
    pub fn extensions(&self) -> &'a Extensions {
        self.extensions
    }
}

/// A call's key: bytes borrowed from the request, or a small value of its own.
///
/// ```
/// use palisade_ratelimit::KeyValue;
///
/// assert_eq!(KeyValue::from("tenant-7").as_bytes(), b"tenant-7");
/// assert_eq!(KeyValue::from(42u64).as_bytes(), 42u64.to_be_bytes());
/// let owned = KeyValue::from(format!("user:{}", 7));
/// assert_eq!(owned.as_bytes(), b"user:7");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue<'a>(Repr<'a>);

#[derive(Clone, PartialEq, Eq)]
enum Repr<'a> {
    Bytes(Cow<'a, [u8]>),
    Inline { len: u8, bytes: [u8; 16] },
}

impl KeyValue<'_> {
    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Bytes(bytes) => bytes,
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
        }
    }

    /// The key, owning its bytes.
    pub fn into_owned(self) -> KeyValue<'static> {
        KeyValue(match self.0 {
            Repr::Bytes(bytes) => Repr::Bytes(Cow::Owned(bytes.into_owned())),
            Repr::Inline { len, bytes } => Repr::Inline { len, bytes },
        })
    }

    fn inline(data: &[u8]) -> Self {
        let mut bytes = [0; 16];
        bytes[..data.len()].copy_from_slice(data);
        KeyValue(Repr::Inline {
            len: data.len() as u8,
            bytes,
        })
    }

    /// An IP address masked to a prefix, a tag byte first (4 or 6).
    fn ip(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> Self {
        match ip {
            IpAddr::V4(v4) => {
                let masked = u32::from(v4) & mask32(v4_prefix);
                let mut data = [4; 5];
                data[1..].copy_from_slice(&masked.to_be_bytes());
                Self::inline(&data)
            }
            IpAddr::V6(v6) => {
                let masked = u128::from(v6) & mask128(v6_prefix);
                let bytes = masked.to_be_bytes();
                // The prefix's bytes only, after a tag: /64 keys are 9 bytes.
                let len = usize::from(v6_prefix.div_ceil(8)).clamp(1, 15);
                let mut data = [6; 16];
                data[1..=len].copy_from_slice(&bytes[..len]);
                if v6_prefix > 120 {
                    // A full address does not fit after the tag: drop the tag, keep 16 bytes.
                    return KeyValue(Repr::Inline { len: 16, bytes });
                }
                Self::inline(&data[..=len])
            }
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Debug for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys may be secrets (API keys): show their length only.
        write!(f, "KeyValue({} bytes)", self.as_bytes().len())
    }
}

impl<'a> From<&'a [u8]> for KeyValue<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        KeyValue(Repr::Bytes(Cow::Borrowed(bytes)))
    }
}

impl<'a> From<&'a str> for KeyValue<'a> {
    fn from(text: &'a str) -> Self {
        Self::from(text.as_bytes())
    }
}

impl<'a> From<&'a String> for KeyValue<'a> {
    fn from(text: &'a String) -> Self {
        Self::from(text.as_bytes())
    }
}

impl From<String> for KeyValue<'static> {
    fn from(text: String) -> Self {
        KeyValue(Repr::Bytes(Cow::Owned(text.into_bytes())))
    }
}

impl From<Vec<u8>> for KeyValue<'static> {
    fn from(bytes: Vec<u8>) -> Self {
        KeyValue(Repr::Bytes(Cow::Owned(bytes)))
    }
}

impl From<u64> for KeyValue<'static> {
    fn from(n: u64) -> Self {
        Self::inline(&n.to_be_bytes())
    }
}

impl From<IpAddr> for KeyValue<'static> {
    /// The whole address.
    fn from(ip: IpAddr) -> Self {
        Self::ip(ip.to_canonical(), 32, 128)
    }
}

/// What a keyed limit does with a call that has no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoKey {
    /// Keyless calls share one bucket of the limit's quota (the default).
    #[default]
    Shared,
    /// Keyless calls are rejected (with `grpc-retry-pushback-ms: -1`: retrying will not help).
    Reject,
    /// Keyless calls are not limited by this limit.
    Unlimited,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_key(ip: &str, v4: u8, v6: u8) -> Vec<u8> {
        KeyValue::ip(ip.parse::<IpAddr>().unwrap().to_canonical(), v4, v6)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn ip_keys_are_masked_and_tagged() {
        assert_eq!(ip_key("10.1.2.3", 32, 64), [4, 10, 1, 2, 3]);
        assert_eq!(ip_key("10.1.2.3", 24, 64), [4, 10, 1, 2, 0]);
        assert_eq!(ip_key("10.1.2.3", 0, 64), [4, 0, 0, 0, 0]);
        assert_eq!(ip_key("::ffff:10.1.2.3", 32, 64), [4, 10, 1, 2, 3]);
        let a = ip_key("2001:db8::1", 32, 64);
        assert_eq!(a, ip_key("2001:db8::ffff:1", 32, 64));
        assert_ne!(a, ip_key("2001:db8:0:1::1", 32, 64));
        assert_eq!(a.len(), 9);
        assert_eq!(ip_key("2001:db8::1", 32, 128).len(), 16);
        assert_ne!(
            ip_key("2001:db8::1", 32, 128),
            ip_key("2001:db8::2", 32, 128)
        );
        assert_eq!(ip_key("2001:db8::1", 32, 0), [6, 0]);
    }

    #[test]
    fn metadata_keys_ignore_empty_values() {
        let key = Key::metadata("x-api-key");
        let mut request = http::Request::new(());
        assert!(key.extract(&RequestInfo::new(&request)).is_none());
        request
            .headers_mut()
            .insert("x-api-key", "".parse().unwrap());
        assert!(key.extract(&RequestInfo::new(&request)).is_none());
        request
            .headers_mut()
            .insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(
            key.extract(&RequestInfo::new(&request)).unwrap().as_bytes(),
            b"k1"
        );
    }

    #[test]
    fn extension_keys() {
        #[derive(Clone)]
        struct Claims {
            sub: Option<String>,
        }
        let key = Key::extension(|claims: &Claims| claims.sub.as_deref().map(KeyValue::from));
        let by_value = Key::extension_value::<String>();
        let mut request = http::Request::new(());
        assert!(key.extract(&RequestInfo::new(&request)).is_none());
        request.extensions_mut().insert(Claims { sub: None });
        assert!(key.extract(&RequestInfo::new(&request)).is_none());
        request.extensions_mut().insert(Claims {
            sub: Some("ada".into()),
        });
        request.extensions_mut().insert(String::from("tenant"));
        assert_eq!(
            key.extract(&RequestInfo::new(&request)).unwrap().as_bytes(),
            b"ada"
        );
        assert_eq!(
            by_value
                .extract(&RequestInfo::new(&request))
                .unwrap()
                .as_bytes(),
            b"tenant"
        );
        assert!(format!("{key:?}").contains("Claims"));
    }

    /// What `tracing` events say on this thread while `f` runs.
    fn warnings_during(f: impl FnOnce()) -> String {
        palisade_demo::capture::warnings_during(f).1
    }

    const WARNING: &str = "found none in its first calls";

    #[test]
    fn a_key_on_an_extension_missing_from_its_first_calls_warns_once() {
        use palisade_jwt::StandardClaims;
        let text = warnings_during(|| {
            // A per-subject limit placed before auth: no claims, ever.
            let key = Key::extension(|c: &StandardClaims| c.subject().map(KeyValue::from));
            let clone = key.clone();
            let request = http::Request::new(());
            for _ in 0..CHECKED_CALLS / 2 - 1 {
                assert!(key.extract(&RequestInfo::new(&request)).is_none());
                assert!(clone.extract(&RequestInfo::new(&request)).is_none());
            }
            assert!(key.extract(&RequestInfo::new(&request)).is_none());
        });
        assert!(text.is_empty(), "not before the 16th call: {text}");

        let text = warnings_during(|| {
            let key = Key::extension(|c: &StandardClaims| c.subject().map(KeyValue::from));
            let request = http::Request::new(());
            for _ in 0..CHECKED_CALLS * 4 {
                assert!(key.extract(&RequestInfo::new(&request)).is_none());
            }
        });
        assert_eq!(text.matches(WARNING).count(), 1, "{text}");
        assert!(
            text.contains("WARN") && text.contains("StandardClaims") && text.contains("calls=16"),
            "{text}"
        );
    }

    /// A first call to a public method (that auth lets through without claims, and the limit
    /// does not exempt) is no misplacement: a call with the extension among the first ones and
    /// the key never warns, however many keyless calls follow.
    #[test]
    fn a_key_whose_extension_comes_within_its_first_calls_never_warns() {
        #[derive(Clone)]
        struct Subject(String);
        let text = warnings_during(|| {
            let key = Key::extension(|s: &Subject| Some(KeyValue::from(s.0.as_str())));
            let bare = http::Request::new(());
            for _ in 0..CHECKED_CALLS - 1 {
                assert!(key.extract(&RequestInfo::new(&bare)).is_none());
            }
            let mut request = http::Request::new(());
            request.extensions_mut().insert(Subject("ada".into()));
            assert!(key.extract(&RequestInfo::new(&request)).is_some());
            for _ in 0..CHECKED_CALLS * 4 {
                assert!(key.extract(&RequestInfo::new(&bare)).is_none());
            }
        });
        assert!(text.is_empty(), "{text}");
        // The same calls with the extension never there do warn (the check above is live).
        let text = warnings_during(|| {
            let key = Key::extension(|s: &Subject| Some(KeyValue::from(s.0.as_str())));
            let bare = http::Request::new(());
            for _ in 0..CHECKED_CALLS * 5 {
                assert!(key.extract(&RequestInfo::new(&bare)).is_none());
            }
        });
        assert_eq!(text.matches(WARNING).count(), 1, "{text}");
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(
            format!("{:?}", KeyValue::from("secret")),
            "KeyValue(6 bytes)"
        );
    }
}
