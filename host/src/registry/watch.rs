//! Watching the handlers directory: a change (`notify`) or a file that has
//! just settled triggers a rescan on a blocking thread, off the hot path.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};

use super::Registry;

/// Lets a burst of events (a copy writes many times) become one rescan.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Rescan this often even without events: a directory on a network file
/// system, or replaced under the watch, may not report changes.
const FALLBACK_RESCAN: Duration = Duration::from_secs(10);

/// Watches the registry's directory until `stop` turns true.
pub(crate) async fn watch(registry: Arc<Registry>, stop: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            notify.notify_one();
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&registry.dir, RecursiveMode::Recursive)?;
        Ok(watcher)
    });
    let _watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                dir = %registry.dir.display(),
                %error,
                every_s = FALLBACK_RESCAN.as_secs(),
                "cannot watch the handlers directory; rescanning it on a timer"
            );
            None
        }
    };
    tracing::info!(dir = %registry.dir.display(), "watching handlers directory");
    let mut settle: Option<Duration> = None;
    loop {
        // A little past the settle time, so the file is old enough by then.
        let wait = settle.map_or(FALLBACK_RESCAN, |d| d + DEBOUNCE);
        tokio::select! {
            _ = stopped(stop.clone()) => return,
            _ = changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep(wait) => {}
        }
        let registry = registry.clone();
        settle = match tokio::task::spawn_blocking(move || {
            let rescanned = registry.rescan();
            if rescanned.as_ref().is_ok_and(|r| r.changed) {
                give_back_freed_memory();
            }
            rescanned
        })
        .await
        {
            Ok(Ok(rescanned)) => rescanned.settle,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot rescan handlers directory; the loaded versions keep serving");
                None
            }
            Err(panic) => std::panic::resume_unwind(panic.into_panic()),
        };
    }
}

/// Compiling a version allocates tens of MiB, on this thread and on
/// wasmtime's compile threads, all freed once it is loaded. mimalloc (the
/// binary's allocator) returns freed pages to the system only after a delay
/// (1 s), and only when some thread next frees a page or collects
/// (`_mi_arenas_collect` in its page.c and theap.c); these threads go idle
/// right after, so without this each swap left the host a few MiB bigger
/// (P6: 1.16× the RSS after the first swap, against 1.05× with this).
fn give_back_freed_memory() {
    // SAFETY: mi_collect has no preconditions; it only frees what is unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}
