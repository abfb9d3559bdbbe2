//! Remote keys: a JWKS URL or OIDC discovery, cached, refreshed in the background, refetched on
//! an unknown `kid` at most once per cool-down, the last good keys kept while the endpoint is down.

use std::{
    fmt,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::Uri;
use tokio::{
    sync::{Notify, futures::OwnedNotified},
    task::AbortHandle,
    time::Instant,
};

use crate::{
    config::RemoteOptions,
    key::{Key, KeySet},
};

/// The largest JWKS or discovery document read (bigger bodies are a failed fetch).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where remote keys come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// A JWKS document at this URL.
    Jwks(Uri),
    /// OIDC discovery: `{issuer}/.well-known/openid-configuration` names the JWKS URL.
    Oidc { issuer: String, discovery: Uri },
}

impl Source {
    pub(crate) fn jwks(url: &str) -> Result<Source, String> {
        Ok(Source::Jwks(parse_url(url)?))
    }

    pub(crate) fn oidc(issuer: &str) -> Result<Source, String> {
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        Ok(Source::Oidc {
            issuer: issuer.to_owned(),
            discovery: parse_url(&discovery)?,
        })
    }
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|_| format!("invalid URL {url:?}"))?;
    match uri.scheme_str() {
        Some("http") => Ok(uri),
        Some("https") if cfg!(feature = "https") => Ok(uri),
        Some("https") => Err(format!(
            "{url:?} is https: enable palisade-jwt's `https` feature"
        )),
        _ => Err(format!("{url:?} is not an http(s) URL")),
    }
}

/// The HTTP client remote keys are fetched with.
#[derive(Clone)]
#[cfg_attr(feature = "https", allow(dead_code))]
pub(crate) enum HttpClient {
    /// hyper-util's client, plain HTTP.
    Plain(
        Box<
            hyper_util::client::legacy::Client<
                hyper_util::client::legacy::connect::HttpConnector,
                http_body_util::Empty<Bytes>,
            >,
        >,
    ),
    /// reqwest with rustls: HTTP and HTTPS.
    #[cfg(feature = "https")]
    Reqwest(reqwest::Client),
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpClient::Plain(_) => f.write_str("HttpClient::Plain"),
            #[cfg(feature = "https")]
            HttpClient::Reqwest(_) => f.write_str("HttpClient::Reqwest"),
        }
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        #[cfg(feature = "https")]
        {
            HttpClient::Reqwest(
                reqwest::Client::builder()
                    .https_only(false)
                    .build()
                    .unwrap_or_default(),
            )
        }
        #[cfg(not(feature = "https"))]
        {
            HttpClient::Plain(Box::new(
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http(),
            ))
        }
    }
}

impl HttpClient {
    /// GETs a document of at most [`MAX_DOCUMENT_BYTES`].
    async fn get(&self, uri: &Uri) -> Result<Bytes, String> {
        match self {
            HttpClient::Plain(client) => {
                use http_body_util::BodyExt;
                if uri.scheme_str() != Some("http") {
                    return Err("only http URLs without the `https` feature".into());
                }
                let request = http::Request::get(uri.clone())
                    .header(http::header::ACCEPT, "application/json")
                    .body(http_body_util::Empty::new())
                    .map_err(|e| e.to_string())?;
                let response = client.request(request).await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("HTTP status {}", response.status()));
                }
                let body = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT_BYTES);
                Ok(body.collect().await.map_err(|e| e.to_string())?.to_bytes())
            }
            #[cfg(feature = "https")]
            HttpClient::Reqwest(client) => {
                let mut response = client
                    .get(uri.to_string())
                    .header(http::header::ACCEPT, "application/json")
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("HTTP status {}", response.status()));
                }
                let mut body = bytes::BytesMut::new();
                while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                    if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err("document too large".into());
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(body.freeze())
            }
        }
    }
}

/// Keys from a remote source, shared by every clone of a layer.
pub(crate) struct Remote {
    source: Source,
    client: HttpClient,
    options: RemoteOptions,
    /// The last good keys (empty until the first successful fetch).
    keys: RwLock<Arc<KeySet>>,
    state: Mutex<State>,
    /// Told when a fetch ends, successful or not: every call waiting for it
    /// ([`OwnedNotified`], made while the fetch is in flight) wakes.
    done: Arc<Notify>,
    started: AtomicBool,
    fetches: AtomicU64,
}

#[derive(Default)]
struct State {
    in_flight: bool,
    last_attempt: Option<Instant>,
    last_ok: bool,
    /// The JWKS URL found by OIDC discovery.
    jwks_uri: Option<Uri>,
    refresh_task: Option<AbortHandle>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("source", &self.source)
            .field("options", &self.options)
            .field("keys", &self.keys().len())
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub(crate) fn new(source: Source, client: HttpClient, options: RemoteOptions) -> Arc<Remote> {
        Arc::new(Remote {
            source,
            client,
            options,
            keys: RwLock::new(Arc::new(KeySet::default())),
            state: Mutex::new(State::default()),
            done: Arc::new(Notify::new()),
            started: AtomicBool::new(false),
            fetches: AtomicU64::new(0),
        })
    }

    /// The last good keys.
    pub(crate) fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many fetches were started.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Starts the background refresh (the first fetch at once) if it is not running and a tokio
    /// runtime is at hand.
    #[inline]
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = runtime.spawn(refresh_loop(Arc::downgrade(self)));
        self.lock_state().refresh_task = Some(task.abort_handle());
    }

    /// Asks for a fetch because a token names a key we do not have: joins the fetch in flight,
    /// or starts one unless one started less than the cool-down ago. `Some` resolves when the
    /// fetch ends (a named future, so that a call waits for it unboxed).
    pub(crate) fn refetch(self: &Arc<Self>) -> Option<OwnedNotified> {
        self.start_fetch(false)
    }

    fn start_fetch(self: &Arc<Self>, scheduled: bool) -> Option<OwnedNotified> {
        let mut state = self.lock_state();
        // Made under the lock while the fetch is in flight, so before the fetch ends: a
        // `Notified` hears every `notify_waiters` after it was made, polled yet or not.
        if state.in_flight {
            return Some(self.done.clone().notified_owned());
        }
        let now = Instant::now();
        if !scheduled
            && state
                .last_attempt
                .is_some_and(|at| now.saturating_duration_since(at) < self.options.refetch_cooldown)
        {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        state.in_flight = true;
        state.last_attempt = Some(now);
        let done = self.done.clone().notified_owned();
        drop(state);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        runtime.spawn(self.clone().fetch_task());
        Some(done)
    }

    async fn fetch_task(self: Arc<Self>) {
        // Ends the fetch (and wakes the waiters) however this task ends: done, failed, aborted.
        struct InFlight<'a>(&'a Remote);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.lock_state().in_flight = false;
                self.0.done.notify_waiters();
            }
        }
        let _in_flight = InFlight(&self);
        let result = match tokio::time::timeout(self.options.fetch_timeout, self.fetch()).await {
            Ok(result) => result,
            Err(_) => Err("timed out".to_owned()),
        };
        match result {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), source = ?self.source, "fetched JWKS");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
                self.lock_state().last_ok = true;
            }
            Err(error) => {
                tracing::warn!(%error, source = ?self.source, "JWKS fetch failed; keeping the last good keys");
                let mut state = self.lock_state();
                state.last_ok = false;
                // Discover again next time: the JWKS URL may have moved.
                state.jwks_uri = None;
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let jwks_uri = match &self.source {
            Source::Jwks(uri) => uri.clone(),
            Source::Oidc { issuer, discovery } => {
                let known = self.lock_state().jwks_uri.clone();
                match known {
                    Some(uri) => uri,
                    None => {
                        let uri = self.discover(issuer, discovery).await?;
                        self.lock_state().jwks_uri = Some(uri.clone());
                        uri
                    }
                }
            }
        };
        let body = self.client.get(&jwks_uri).await?;
        let keys = Key::from_jwks(&body).map_err(|e| e.to_string())?;
        Ok(KeySet::new(keys))
    }

    async fn discover(&self, issuer: &str, discovery: &Uri) -> Result<Uri, String> {
        #[derive(serde::Deserialize)]
        struct Configuration {
            issuer: String,
            jwks_uri: String,
        }
        let body = self.client.get(discovery).await?;
        let config: Configuration =
            serde_json::from_slice(&body).map_err(|e| format!("discovery document: {e}"))?;
        // OpenID Connect Discovery 1.0, section 4.3: the issuer must be the one asked about.
        if config.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err("discovery document names another issuer".into());
        }
        parse_url(&config.jwks_uri)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = state.refresh_task.take() {
            task.abort();
        }
    }
}

/// Fetches at once, then every refresh interval (sooner after a failure), while the keys are in
/// use.
async fn refresh_loop(remote: Weak<Remote>) {
    loop {
        let delay = {
            let Some(remote) = remote.upgrade() else {
                return;
            };
            if let Some(done) = remote.start_fetch(true) {
                done.await;
            }
            if remote.lock_state().last_ok {
                remote.options.refresh_interval
            } else {
                remote.options.retry_interval()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(Source::jwks("http://127.0.0.1:1/jwks.json").is_ok());
        assert!(Source::jwks("ftp://x/").is_err());
        assert!(Source::jwks("not a url").is_err());
        assert_eq!(
            Source::jwks("https://idp.example/jwks").is_ok(),
            cfg!(feature = "https")
        );
        match Source::oidc("http://idp.example/realm/").unwrap() {
            Source::Oidc { discovery, .. } => assert_eq!(
                discovery.to_string(),
                "http://idp.example/realm/.well-known/openid-configuration"
            ),
            other => panic!("{other:?}"),
        }
    }
}
