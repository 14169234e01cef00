//! Subresources: `status` built in, anything else by a handler the test
//! (or a simulated controller) registers. By default an eviction deletes
//! the pod; `sim::ClusterSim` registers `sim::evict_with_budgets`, which
//! consults PodDisruptionBudgets and answers 429 as the real server does.
use std::{collections::HashMap, sync::Arc};

use serde_json::Value;

use super::{
    kinds::Gvr,
    patch::Patch,
    status::{self, ApiError},
    store::Store,
};

/// A request to `.../{plural}/{name}/{subresource}`.
#[derive(Clone, Debug)]
pub struct SubresourceRequest {
    pub method: String,
    pub gvr: Gvr,
    pub namespace: Option<String>,
    pub name: String,
    pub subresource: String,
    /// The body parsed as JSON (`Null` when empty).
    pub body: Value,
    pub content_type: String,
    pub dry_run: bool,
}

/// Answers a subresource request with an HTTP code and a JSON body, or an
/// error that becomes a `Status`.
pub type SubresourceHandler =
    Arc<dyn Fn(&Store, &SubresourceRequest) -> Result<(u16, Value), ApiError> + Send + Sync>;

/// Handlers by (group, plural, subresource), for every version.
#[derive(Clone, Default)]
pub struct Handlers(HashMap<(String, String, String), SubresourceHandler>);

impl Handlers {
    /// `pods/eviction` deletes the pod.
    pub fn defaults() -> Self {
        let mut h = Handlers::default();
        h.insert("", "pods", "eviction", Arc::new(evict_unconditionally));
        h
    }

    pub fn insert(&mut self, group: &str, plural: &str, sub: &str, f: SubresourceHandler) {
        self.0.insert((group.into(), plural.into(), sub.into()), f);
    }

    pub fn get(&self, gvr: &Gvr, sub: &str) -> Option<SubresourceHandler> {
        self.0
            .get(&(gvr.group.clone(), gvr.resource.clone(), sub.into()))
            .cloned()
    }
}

/// `POST pods/{name}/eviction` without disruption budgets: the pod goes,
/// and the answer is the real server's 201 Success Status.
pub fn evict_unconditionally(
    store: &Store,
    req: &SubresourceRequest,
) -> Result<(u16, Value), ApiError> {
    if req.method != "POST" {
        return Err(ApiError::method_not_allowed(&req.method));
    }
    store.delete(&req.gvr, req.namespace.as_deref(), &req.name, req.dry_run)?;
    Ok((201, status::success(201, Some((&req.gvr, &req.name)))))
}

/// `status`: GET reads the object; PUT and PATCH change only `.status`,
/// as on the real server, so a status writer cannot clobber the spec.
pub fn status(store: &Store, req: &SubresourceRequest) -> Result<(u16, Value), ApiError> {
    let (gvr, ns, name) = (&req.gvr, req.namespace.as_deref(), req.name.as_str());
    let written = match req.method.as_str() {
        "GET" => {
            return store
                .get(gvr, ns, name)
                .map(|o| (200, o))
                .ok_or_else(|| ApiError::not_found(gvr, name));
        }
        "PUT" => store.mutate(gvr, ns, name, req.dry_run, |old| {
            let old = old.ok_or_else(|| ApiError::not_found(gvr, name))?;
            let sent = req.body["metadata"]["resourceVersion"].as_str();
            if sent.is_some_and(|rv| Some(rv) != old["metadata"]["resourceVersion"].as_str()) {
                return Err(ApiError::conflict(gvr, name));
            }
            Ok(Some(with_status(old, &req.body)))
        })?,
        "PATCH" => {
            let patch = Patch::parse(&req.content_type, &serde_json::to_vec(&req.body).unwrap())?;
            store.mutate(gvr, ns, name, req.dry_run, |old| {
                let old = old.ok_or_else(|| ApiError::not_found(gvr, name))?;
                Ok(Some(with_status(old, &patch.apply_to(old)?)))
            })?
        }
        other => return Err(ApiError::method_not_allowed(other)),
    };
    Ok((200, written))
}

fn with_status(old: &Value, new: &Value) -> Value {
    let mut out = old.clone();
    match new.get("status") {
        Some(s) => out["status"] = s.clone(),
        None => {
            if let Some(m) = out.as_object_mut() {
                m.remove("status");
            }
        }
    }
    out
}
