//! What the server was asked, for tests to assert on: that a client
//! relisted after a 410, how many watches are open, which writes it made.
use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

/// Requests remembered; older ones are dropped (counters keep counting).
const KEEP: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, still percent-encoded.
    pub query: String,
    /// The HTTP status; 200 for a watch that started, whatever ends it.
    pub status: u16,
    /// The Kubernetes verb, as audit logs name it: `get`, `list`, `watch`,
    /// `create`, `update`, `patch`, `delete`, `deletecollection`; for a
    /// subresource, the verb and the subresource (`create/eviction`);
    /// `discovery` for `/api`, `/apis`, `/version`; `unknown` for a 404 path.
    pub verb: String,
}

impl RequestRecord {
    /// The decoded value of a query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }
}

/// Counters at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub lists: u64,
    pub watches_started: u64,
    pub open_watches: usize,
    /// Watches ended by an ERROR event with 410 Gone.
    pub watches_gone: u64,
    pub bookmarks_sent: u64,
}

#[derive(Default)]
pub struct Log {
    records: Mutex<VecDeque<RequestRecord>>,
    requests: AtomicU64,
    lists: AtomicU64,
    watches_started: AtomicU64,
    open_watches: AtomicUsize,
    watches_gone: AtomicU64,
    bookmarks_sent: AtomicU64,
}

impl Log {
    pub(crate) fn record(&self, r: RequestRecord) {
        self.requests.fetch_add(1, Relaxed);
        match r.verb.as_str() {
            "watch" => self.watches_started.fetch_add(1, Relaxed),
            "list" => self.lists.fetch_add(1, Relaxed),
            _ => 0,
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == KEEP {
            records.pop_front();
        }
        records.push_back(r);
    }

    pub(crate) fn watch_opened(&self) -> OpenWatch<'_> {
        self.open_watches.fetch_add(1, Relaxed);
        OpenWatch(self)
    }

    pub(crate) fn gone(&self) {
        self.watches_gone.fetch_add(1, Relaxed);
    }

    pub(crate) fn bookmark(&self) {
        self.bookmarks_sent.fetch_add(1, Relaxed);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().cloned().collect()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.requests.load(Relaxed),
            lists: self.lists.load(Relaxed),
            watches_started: self.watches_started.load(Relaxed),
            open_watches: self.open_watches.load(Relaxed),
            watches_gone: self.watches_gone.load(Relaxed),
            bookmarks_sent: self.bookmarks_sent.load(Relaxed),
        }
    }
}

/// Decrements the open-watch gauge when the watch task ends, however.
pub(crate) struct OpenWatch<'a>(&'a Log);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Relaxed);
    }
}
