//! [`changes`]: when to reload a configuration file.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash, Hasher},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};

/// How long a burst of file events (an editor's write, a ConfigMap's symlink swap) is
/// given to settle before the file is read.
const SETTLE: Duration = Duration::from_millis(50);

/// Why to reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The file's content changed (or it appeared, or it went away).
    File,
    /// The process got SIGHUP.
    Hangup,
}

/// What [`changes`] returns: call [`next`](Changes::next) in a loop.
pub struct Changes {
    path: PathBuf,
    events: mpsc::Receiver<()>,
    hangups: Signal,
    /// A digest of the content last seen (`None`: unreadable).
    seen: Option<u64>,
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Watches `path` — through its directory, so a file replaced by a rename or a Kubernetes
/// ConfigMap's `..data` symlink swap is seen as well as one written in place — and SIGHUP.
/// Must be called inside a tokio runtime.
///
/// # Errors
///
/// The directory cannot be watched, or SIGHUP cannot be listened for.
pub fn changes(path: impl AsRef<Path>) -> io::Result<Changes> {
    let path = path.as_ref().to_path_buf();
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, events) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // One pending wake-up is enough: the file is read when it is taken.
            let _ = tx.try_send(());
        }
    })
    .map_err(io::Error::other)?;
    watcher
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(io::Error::other)?;
    let hangups = signal(SignalKind::hangup())?;
    let seen = digest(&path);
    Ok(Changes {
        path,
        events,
        hangups,
        seen,
        _watcher: watcher,
    })
}

impl Changes {
    /// The next reason to reload: a SIGHUP, or a change of the file's content (events that
    /// leave it as it was, such as a touch or another file in the directory, are not one).
    /// `None` if the watcher stopped.
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            tokio::select! {
                hangup = self.hangups.recv() => {
                    hangup?;
                    self.seen = digest(&self.path);
                    return Some(Change::Hangup);
                }
                event = self.events.recv() => {
                    event?;
                    tokio::time::sleep(SETTLE).await;
                    // Events during the settling are part of this change.
                    while self.events.try_recv().is_ok() {}
                    let now = digest(&self.path);
                    if now != self.seen {
                        self.seen = now;
                        return Some(Change::File);
                    }
                }
            }
        }
    }
}

/// A digest of the file's content, following symlinks; `None` when it cannot be read.
fn digest(path: &Path) -> Option<u64> {
    let content = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    content.hash(&mut hasher);
    Some(hasher.finish())
}
