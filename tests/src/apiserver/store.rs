//! Objects, one global resourceVersion, and the bounded history watches
//! replay from. Every write, from HTTP or from the test, goes through
//! [`Store::mutate`], so both produce the same watch events.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, RwLock},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    kinds::{Gvr, Registry, ResourceKind},
    patch::Patch,
    selector::Selectors,
    status::ApiError,
};

/// Where an object lives. `namespace` is empty for cluster-scoped kinds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjKey {
    pub gvr: Gvr,
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed write, as watches replay it and reactors see it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub key: ObjKey,
    pub change: ChangeType,
    /// The object before the write (`None` for an addition).
    pub old: Option<Value>,
    /// The object after the write; for a deletion, the last state with the
    /// deletion's resourceVersion, as the real server sends it.
    pub object: Value,
}

/// Called after every committed write, outside the store's lock, on the
/// writer's thread; it may write in turn (a controller reacting to a pod
/// deletion). It must not write on every call, or writes never end.
pub type Reactor = Arc<dyn Fn(&Store, &Change) + Send + Sync>;

/// History kept for watches by default; older resourceVersions get 410.
pub const DEFAULT_HISTORY: usize = 10_000;

struct State {
    rv: u64,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    /// Watches from a resourceVersion below this have missed events.
    floor: u64,
    uids: u64,
}

struct Inner {
    state: Mutex<State>,
    registry: RwLock<Registry>,
    reactors: RwLock<Vec<Reactor>>,
    /// The current resourceVersion, for watches to wait on.
    head: watch::Sender<u64>,
}

/// The object store. Cheap to clone; clones share the objects.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    pub fn new(registry: Registry, history_cap: usize) -> Self {
        Store {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    rv: 1,
                    objects: BTreeMap::new(),
                    history: VecDeque::new(),
                    history_cap: history_cap.max(1),
                    floor: 1,
                    uids: 0,
                }),
                registry: RwLock::new(registry),
                reactors: RwLock::new(Vec::new()),
                head: watch::channel(1).0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking reactor or test must not wedge every later request.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, kind: ResourceKind) {
        self.inner.registry.write().unwrap().register(kind);
    }

    pub fn kind(&self, gvr: &Gvr) -> Option<Arc<ResourceKind>> {
        self.inner.registry.read().unwrap().get(gvr)
    }

    pub fn registry(&self) -> Registry {
        self.inner.registry.read().unwrap().clone()
    }

    /// The kind an object names by `apiVersion` and `kind`.
    pub fn kind_of(&self, obj: &Value) -> Result<Arc<ResourceKind>, ApiError> {
        let av = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        self.inner
            .registry
            .read()
            .unwrap()
            .by_kind(av, kind)
            .ok_or_else(|| ApiError::bad_request(format!("no served kind {kind:?} in {av:?}")))
    }

    pub fn on_write(&self, reactor: Reactor) {
        self.inner.reactors.write().unwrap().push(reactor);
    }

    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    /// Forgets the whole history: a watch or a paginated list from any
    /// resourceVersion older than the current one gets 410 Gone.
    pub fn compact(&self) {
        let mut s = self.state();
        s.history.clear();
        s.floor = s.rv;
    }

    pub fn set_history_cap(&self, cap: usize) {
        let mut s = self.state();
        s.history_cap = cap.max(1);
        trim(&mut s);
    }

    /// The events of `gvr` after `since`, and the resourceVersion they
    /// bring the caller to; 410 when some of them were forgotten.
    pub(crate) fn changes_since(
        &self,
        gvr: &Gvr,
        since: u64,
    ) -> Result<(Vec<Arc<Change>>, u64), ApiError> {
        let s = self.state();
        if since < s.floor {
            return Err(ApiError::gone(since, s.floor));
        }
        let start = s.history.partition_point(|c| c.rv <= since);
        let changes = s
            .history
            .range(start..)
            .filter(|c| &c.key.gvr == gvr)
            .cloned()
            .collect();
        Ok((changes, s.rv.max(since)))
    }

    pub(crate) fn check_not_compacted(&self, rv: u64) -> Result<(), ApiError> {
        let floor = self.state().floor;
        if rv < floor {
            return Err(ApiError::gone(rv, floor));
        }
        Ok(())
    }

    pub fn get(&self, gvr: &Gvr, namespace: Option<&str>, name: &str) -> Option<Value> {
        let key = ObjKey {
            gvr: gvr.clone(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.into(),
        };
        self.state().objects.get(&key).cloned()
    }

    /// Objects of `gvr` in key order (namespace, name) after `after`,
    /// matching the selectors, in one namespace or all; with the current
    /// resourceVersion.
    pub fn list_matching(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        selectors: &Selectors,
        after: Option<&(String, String)>,
    ) -> (Vec<Value>, u64) {
        let s = self.state();
        let items = s
            .objects
            .iter()
            .filter(|(k, _)| &k.gvr == gvr)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(|(k, _)| after.is_none_or(|(ns, n)| (&k.namespace, &k.name) > (ns, n)))
            .filter(|(_, v)| selectors.matches(v))
            .map(|(_, v)| v.clone())
            .collect();
        (items, s.rv)
    }

    pub fn list(&self, gvr: &Gvr, namespace: Option<&str>) -> Vec<Value> {
        self.list_matching(gvr, namespace, &Selectors::default(), None)
            .0
    }

    /// Creates; 409 AlreadyExists if the name is taken. Honours
    /// `metadata.generateName`.
    pub fn create(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let prefix = obj["metadata"]["generateName"].as_str().unwrap_or_default();
            if prefix.is_empty() {
                return Err(ApiError::invalid(gvr, "", "metadata.name: Required value"));
            }
            name = format!("{prefix}{}", suffix(self.resource_version()));
            obj["metadata"]["name"] = json!(name);
        }
        self.mutate(gvr, namespace, &name, dry_run, |old| match old {
            Some(_) => Err(ApiError::already_exists(gvr, &name)),
            None => Ok(Some(obj)),
        })
    }

    /// Replaces; 409 Conflict when the body's resourceVersion is set and stale.
    pub fn replace(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.mutate(gvr, namespace, name, dry_run, |old| {
            let old = old.ok_or_else(|| ApiError::not_found(gvr, name))?;
            check_precondition(gvr, name, old, &obj)?;
            Ok(Some(obj))
        })
    }

    /// Patches; an apply patch creates the object when it is absent.
    pub fn patch(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        patch: &Patch,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.mutate(gvr, namespace, name, dry_run, |old| {
            let base = match (old, patch) {
                (Some(old), _) => old.clone(),
                (None, Patch::Apply(_)) => json!({}),
                (None, _) => return Err(ApiError::not_found(gvr, name)),
            };
            let new = patch.apply_to(&base)?;
            if let Some(old) = old {
                check_precondition(gvr, name, old, &new)?;
            }
            Ok(Some(new))
        })
    }

    /// Deletes and returns the object as it was, with the deletion's
    /// resourceVersion. There are no finalizers: deletion is immediate.
    pub fn delete(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.mutate(gvr, namespace, name, dry_run, |old| match old {
            Some(_) => Ok(None),
            None => Err(ApiError::not_found(gvr, name)),
        })
    }

    /// Creates the object, or replaces it whatever its resourceVersion:
    /// the test-side "make it so".
    pub fn apply(&self, mut obj: Value) -> Result<Value, ApiError> {
        let kind = self.kind_of(&obj)?;
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        self.mutate(&kind.gvr, ns.as_deref(), &name, false, |_| Ok(Some(obj)))
    }

    /// The one write path: `f` sees the current object (or `None`) and
    /// returns the new one (or `None` to delete). The server owns
    /// `apiVersion`, `kind`, the name, namespace, uid, creation time,
    /// generation and resourceVersion. Returns the committed object (the
    /// deleted one for a deletion); with `dry_run`, what would be.
    pub fn mutate(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        name: &str,
        dry_run: bool,
        f: impl FnOnce(Option<&Value>) -> Result<Option<Value>, ApiError>,
    ) -> Result<Value, ApiError> {
        let kind = self.kind(gvr).ok_or_else(ApiError::no_route)?;
        let namespace = match (kind.namespaced, namespace.filter(|n| !n.is_empty())) {
            (true, Some(ns)) => ns.to_string(),
            (true, None) => return Err(ApiError::bad_request("the namespace is required")),
            (false, _) => String::new(),
        };
        let key = ObjKey {
            gvr: gvr.clone(),
            namespace,
            name: name.to_string(),
        };
        let change = {
            let mut s = self.state();
            let old = s.objects.get(&key).cloned();
            let new = f(old.as_ref())?;
            let rv = s.rv + 1;
            let (change, object) = match (new, &old) {
                (Some(mut new), _) => {
                    if old.is_none() {
                        s.uids += 1;
                    }
                    let uid = s.uids;
                    stamp(&kind, &key, &mut new, old.as_ref(), rv, uid)?;
                    let change = if old.is_some() {
                        ChangeType::Modified
                    } else {
                        ChangeType::Added
                    };
                    (change, new)
                }
                (None, Some(old)) => {
                    let mut gone = old.clone();
                    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
                    (ChangeType::Deleted, gone)
                }
                (None, None) => return Err(ApiError::not_found(gvr, name)),
            };
            if dry_run {
                return Ok(object);
            }
            s.rv = rv;
            match change {
                ChangeType::Deleted => s.objects.remove(&key),
                _ => s.objects.insert(key.clone(), object.clone()),
            };
            let change = Arc::new(Change {
                rv,
                key,
                change,
                old,
                object,
            });
            s.history.push_back(change.clone());
            trim(&mut s);
            change
        };
        self.inner.head.send_replace(change.rv);
        let reactors = self.inner.reactors.read().unwrap().clone();
        for reactor in reactors {
            reactor(self, &change);
        }
        Ok(change.object.clone())
    }
}

fn trim(s: &mut State) {
    while s.history.len() > s.history_cap {
        let dropped = s.history.pop_front().expect("longer than cap >= 1");
        s.floor = dropped.rv;
    }
}

/// Optimistic concurrency: a resourceVersion in the body must be current.
fn check_precondition(gvr: &Gvr, name: &str, old: &Value, new: &Value) -> Result<(), ApiError> {
    match new["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && Some(rv) != old["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::conflict(gvr, name))
        }
        _ => Ok(()),
    }
}

/// Sets what the server owns on a written object.
fn stamp(
    kind: &ResourceKind,
    key: &ObjKey,
    obj: &mut Value,
    old: Option<&Value>,
    rv: u64,
    uid: u64,
) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the object is not a JSON object"));
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let meta = &obj["metadata"];
    let named = meta["name"].as_str().unwrap_or(&key.name);
    if named != key.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({named}) does not match the name on the URL ({})",
            key.name
        )));
    }
    if let Some(ns) = meta["namespace"].as_str()
        && kind.namespaced
        && ns != key.namespace
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({ns}) does not match the namespace sent on the request ({})",
            key.namespace
        )));
    }
    obj["apiVersion"] = json!(kind.gvr.api_version());
    obj["kind"] = json!(kind.kind);
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("made an object above");
    meta.insert("name".into(), json!(key.name));
    if kind.namespaced {
        meta.insert("namespace".into(), json!(key.namespace));
    } else {
        meta.remove("namespace");
    }
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    match old {
        Some(old) => {
            for field in ["uid", "creationTimestamp"] {
                meta.insert(field.into(), old["metadata"][field].clone());
            }
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let bumped = generation + i64::from(content(old) != content(obj));
            obj["metadata"]["generation"] = json!(bumped);
        }
        None => {
            meta.insert("uid".into(), json!(uid_string(uid)));
            let now = serde_json::to_value(Time(Timestamp::now())).expect("time serializes");
            meta.insert("creationTimestamp".into(), now);
            meta.insert("generation".into(), json!(1));
        }
    }
    Ok(())
}

/// What `metadata.generation` counts changes of: everything but metadata
/// and status.
fn content(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// UUID-shaped, unique per store and stable across runs.
fn uid_string(n: u64) -> String {
    format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)
}

/// generateName's random part: five lowercase alphanumerics, from the
/// resourceVersion so names stay unique and reproducible.
fn suffix(mut n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    n = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(n % ALPHABET.len() as u64) as usize] as char;
            n /= ALPHABET.len() as u64;
            c
        })
        .collect()
}
