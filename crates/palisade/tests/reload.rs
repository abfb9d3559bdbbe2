//! Live reload over a real tonic connection: a rate limit swapped while calls run (issue #19's
//! checks for the mechanism), every old stack let go, and the file watcher's view of writes,
//! renames, ConfigMap symlink swaps and SIGHUP.

use std::{
    num::NonZeroU32,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use palisade::{
    ratelimit::{Limit, Quota, RateLimitLayer},
    reload::{Change, ReloadLayer, changes},
};
use palisade_demo::pb::HelloRequest;
use tower::{Layer, ServiceBuilder};

fn per_second(n: u32) -> RateLimitLayer {
    let n = NonZeroU32::new(n).unwrap();
    RateLimitLayer::server()
        .limit(Limit::global(Quota::per_second(n).with_burst(n)))
        .build()
        .unwrap()
}

fn hello() -> HelloRequest {
    HelloRequest {
        name: "reload".into(),
        ..Default::default()
    }
}

/// Counts the stacks alive: one per generation per service the reload layer wraps.
#[derive(Clone)]
struct Alive(Arc<AtomicUsize>);

struct Token(Arc<AtomicUsize>);

impl Drop for Token {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    _token: Arc<Token>,
}

impl<S> Layer<S> for Alive {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Counted {
            inner,
            _token: Arc::new(Token(Arc::clone(&self.0))),
        }
    }
}

impl<S: tower::Service<R>, R> tower::Service<R> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.inner.call(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_limit_acts_on_new_calls_and_an_open_stream_completes() {
    let (layer, reloader) = ReloadLayer::new(per_second(5));
    let server = palisade_demo::spawn(layer).await;
    let mut client = server.client().await;
    // A stream open across the reload (ten replies, 50 ms apart).
    let mut stream_client = client.clone();
    let stream = tokio::spawn(async move {
        let request = HelloRequest {
            count: 10,
            delay_ms: 50,
            ..hello()
        };
        let mut stream = stream_client.say_hello_stream(request).await?.into_inner();
        let mut replies = 0;
        while stream.message().await?.is_some() {
            replies += 1;
        }
        Ok::<_, tonic::Status>(replies)
    });
    let mut ok = 0;
    for _ in 0..20 {
        if client.say_hello(hello()).await.is_ok() {
            ok += 1;
        }
    }
    assert!(ok <= 7, "5/s, burst 5: {ok} of 20 let through");
    assert_eq!(reloader.swap(per_second(1000)), 1);
    for call in 0..20 {
        client
            .say_hello(hello())
            .await
            .unwrap_or_else(|status| panic!("call {call} after the reload: {status:?}"));
    }
    assert_eq!(
        stream.await.unwrap().unwrap(),
        10,
        "the open stream completes OK"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_lose_no_call_and_keep_no_old_stack() {
    let alive = Alive(Arc::new(AtomicUsize::new(0)));
    let stack = |rate| {
        ServiceBuilder::new()
            .layer(alive.clone())
            .layer(per_second(rate))
            .into_inner()
    };
    let (layer, reloader) = ReloadLayer::new(stack(1_000_000));
    let server = palisade_demo::spawn(layer).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        // Each on a connection of its own.
        let mut client = server.client().await;
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        load.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.notified() => return,
                    // A call that never ends is a lost one: each gets 10 s.
                    reply = tokio::time::timeout(Duration::from_secs(10), client.say_hello(hello())) => {
                        reply
                            .expect("no call is lost during the reloads")
                            .expect("no call fails during the reloads");
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        });
    }
    for generation in 1..=100_u64 {
        let before = done.load(Ordering::SeqCst);
        let rate = if generation % 2 == 0 {
            1_000_000
        } else {
            999_999
        };
        assert_eq!(reloader.swap(stack(rate)), generation);
        // Calls keep completing between reloads.
        while done.load(Ordering::SeqCst) < before + 4 {
            tokio::task::yield_now().await;
        }
    }
    stop.notify_waiters();
    for _ in 0..4 {
        stop.notify_one();
    }
    while let Some(task) = load.join_next().await {
        task.unwrap();
    }
    // Generation 100 is built once over the routes; every older stack is gone once the
    // calls that used them are over.
    let wait = async {
        while alive.0.load(Ordering::SeqCst) > 1 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("{} stacks alive", alive.0.load(Ordering::SeqCst)));
    server.shutdown().await;
}

async fn next(changes: &mut palisade::reload::Changes) -> Change {
    tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change within 10 s")
        .expect("the watcher runs")
}

/// Nothing more comes within a short while: the events before were one change.
async fn quiet(changes: &mut palisade::reload::Changes) {
    let more = tokio::time::timeout(Duration::from_millis(300), changes.next()).await;
    assert!(more.is_err(), "no further change: {more:?}");
}

fn write_atomically(path: &Path, content: &str) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, content).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

#[tokio::test]
async fn writes_renames_configmap_swaps_and_sighup_are_changes_and_touches_are_not() {
    let dir = tempdir();
    let path = dir.join("palisade.toml");
    std::fs::write(&path, "rate = 5\n").unwrap();
    let mut changes = changes(&path).unwrap();

    std::fs::write(&path, "rate = 6\n").unwrap();
    assert_eq!(next(&mut changes).await, Change::File, "written in place");
    write_atomically(&path, "rate = 7\n");
    assert_eq!(
        next(&mut changes).await,
        Change::File,
        "replaced by a rename"
    );
    quiet(&mut changes).await;

    // The same content again, and another file in the directory: not a change.
    std::fs::write(&path, "rate = 7\n").unwrap();
    std::fs::write(dir.join("other.txt"), "x").unwrap();
    quiet(&mut changes).await;

    let pid = std::process::id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    assert_eq!(next(&mut changes).await, Change::Hangup);
}

#[tokio::test]
async fn a_configmap_update_is_seen_through_its_symlinks() {
    // What the kubelet writes: `..2026_1/palisade.toml`, `..data -> ..2026_1`,
    // `palisade.toml -> ..data/palisade.toml`; an update writes a new directory and swaps
    // `..data` with a rename.
    let dir = tempdir();
    let first = dir.join("..2026_1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("palisade.toml"), "rate = 5\n").unwrap();
    std::os::unix::fs::symlink("..2026_1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/palisade.toml", dir.join("palisade.toml")).unwrap();
    let path = dir.join("palisade.toml");
    let mut changes = changes(&path).unwrap();

    let second = dir.join("..2026_2");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("palisade.toml"), "rate = 1000\n").unwrap();
    std::os::unix::fs::symlink("..2026_2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();
    assert_eq!(next(&mut changes).await, Change::File);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "rate = 1000\n");
}

/// A fresh directory under the target's temporary directory.
fn tempdir() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "palisade-reload-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
