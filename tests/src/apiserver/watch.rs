//! Watch streams: newline-delimited JSON events over a chunked response,
//! replayed from the store's history after the asked resourceVersion, then
//! live. A stream that asks for forgotten history gets one ERROR event with
//! a 410 Status and ends, which is what makes kube-rs's watcher relist.
use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use super::{
    kinds::ResourceKind,
    routes::Shared,
    selector::Selectors,
    status::ApiError,
    store::{Change, ChangeType},
};

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// `resourceVersion` unset or "0", or `sendInitialEvents=true`: the
    /// current objects as ADDED events first.
    Snapshot,
    /// Events after this resourceVersion.
    After(u64),
}

#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub kind: Arc<ResourceKind>,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    pub start: Start,
    /// `sendInitialEvents=true`: end the snapshot with a bookmark
    /// annotated `k8s.io/initial-events-end` (streaming lists).
    pub initial_events_end: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
}

impl WatchRequest {
    /// What an event of `change` is to this watch, if anything: an object
    /// entering the selection is ADDED, one leaving it DELETED, as the
    /// real server's watch cache reports them.
    fn event_for(&self, change: &Change) -> Option<&'static str> {
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != change.key.namespace)
        {
            return None;
        }
        let now = self.selectors.matches(&change.object);
        let before = change
            .old
            .as_ref()
            .is_some_and(|o| self.selectors.matches(o));
        match (change.change, before, now) {
            (ChangeType::Added, _, true) => Some("ADDED"),
            (ChangeType::Modified, true, true) => Some("MODIFIED"),
            (ChangeType::Modified, false, true) => Some("ADDED"),
            (ChangeType::Modified, true, false) => Some("DELETED"),
            (ChangeType::Deleted, _, true) => Some("DELETED"),
            _ => None,
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({ "resourceVersion": rv.to_string() });
        if initial_end {
            meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        line(
            "BOOKMARK",
            &json!({
                "kind": self.kind.kind,
                "apiVersion": self.kind.gvr.api_version(),
                "metadata": meta,
            }),
        )
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out = serde_json::to_vec(&json!({ "type": kind, "object": object }))
        .expect("JSON values serialize");
    out.push(b'\n');
    Bytes::from(out)
}

/// Starts the watch task and returns the response body it feeds. The task
/// ends at the timeout, on `close_watches`, on server shutdown, when the
/// client goes away, or after a 410.
pub(crate) fn stream(shared: Arc<Shared>, req: WatchRequest) -> Body {
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _open = shared.log.watch_opened();
        run(&shared, &req, &tx).await;
    });
    let chunks = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| b.map(Ok::<_, Infallible>))
    });
    Body::from_stream(chunks)
}

async fn run(shared: &Shared, req: &WatchRequest, tx: &mpsc::Sender<Bytes>) {
    let store = &shared.store;
    let deadline = Instant::now() + req.timeout;
    // Subscribe before reading anything, so no write falls in between.
    let mut head = store.subscribe();
    head.borrow_and_update();
    let mut closer = shared.closer.subscribe();
    closer.borrow_and_update();

    let mut cursor = match req.start {
        Start::After(rv) => rv,
        Start::Snapshot => {
            let gvr = &req.kind.gvr;
            let (items, rv) =
                store.list_matching(gvr, req.namespace.as_deref(), &req.selectors, None);
            for item in &items {
                if tx.send(line("ADDED", item)).await.is_err() {
                    return;
                }
            }
            if req.initial_events_end && tx.send(req.bookmark(rv, true)).await.is_err() {
                return;
            }
            rv
        }
    };

    let period = shared
        .options
        .bookmark_interval
        .max(Duration::from_millis(10));
    let mut bookmarks = interval_at(Instant::now() + period, period);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        match store.changes_since(&req.kind.gvr, cursor) {
            Ok((changes, head_rv)) => {
                for change in changes {
                    if let Some(kind) = req.event_for(&change)
                        && tx.send(line(kind, &change.object)).await.is_err()
                    {
                        return;
                    }
                }
                cursor = head_rv;
            }
            Err(gone) => {
                shared.log.gone();
                let _ = tx.send(line("ERROR", &gone.to_status())).await;
                return;
            }
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = bookmarks.tick(), if req.bookmarks => {
                shared.log.bookmark();
                if tx.send(req.bookmark(cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = sleep_until(deadline) => return,
            _ = closer.changed() => {
                if closer.borrow().gone {
                    shared.log.gone();
                    let floor = store.resource_version();
                    let _ = tx.send(line("ERROR", &ApiError::gone(cursor, floor).to_status())).await;
                }
                return;
            }
            _ = tx.closed() => return,
        }
    }
}

/// Parses the watch's `resourceVersion`.
pub(crate) fn start_of(rv: Option<&str>, send_initial_events: bool) -> Result<Start, ApiError> {
    match rv.unwrap_or("") {
        _ if send_initial_events => Ok(Start::Snapshot),
        "" | "0" => Ok(Start::Snapshot),
        rv => rv
            .parse()
            .map(Start::After)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))),
    }
}
