//! HTTP: the apiserver's URL layout, verbs, query parameters and answers.
//! One fallback handler parses the path itself, because the layout
//! (`/api/v1/namespaces/{ns}/{plural}/{name}/{sub}` and its `/apis/{group}`
//! twin) is data-driven by the registry, not a fixed route table.
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::watch as signal;

use super::{
    Options, discovery,
    kinds::{Gvr, Registry, ResourceKind},
    log::{Log, RequestRecord},
    patch::Patch,
    selector::Selectors,
    status::ApiError,
    store::Store,
    subresource::{self, Handlers, SubresourceRequest},
    watch::{self as watches, WatchRequest},
};

/// What every request handler shares.
pub(crate) struct Shared {
    pub store: Store,
    pub log: Log,
    pub options: Options,
    pub handlers: RwLock<Handlers>,
    pub reviews: RwLock<super::Reviews>,
    /// Changed to end every open watch (`close_watches`, shutdown).
    pub closer: signal::Sender<Close>,
}

/// How open watches are told to end.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Close {
    pub epoch: u64,
    /// With an ERROR 410 event, as when the history they follow is gone.
    pub gone: bool,
}

/// The longest watch when the client gives no `timeoutSeconds`: the real
/// server picks 30 to 60 minutes.
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);
const MAX_BODY: usize = 64 << 20;

enum Route {
    Version,
    CoreVersions,
    Groups,
    Resources { group: String, version: String },
    Object(Target),
}

/// A resource path: the kind, and the namespace, name and subresource it
/// names (a collection when `name` is `None`).
struct Target {
    kind: Arc<ResourceKind>,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str, registry: &Registry) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    let find = |plural: &str| registry.get(&Gvr::new(group, version, plural));
    let target = |kind, namespace: Option<&str>, tail: &[&str]| {
        if tail.len() > 2 {
            return Err(ApiError::no_route());
        }
        Ok(Route::Object(Target {
            kind,
            namespace: namespace.map(str::to_string),
            name: tail.first().map(|s| s.to_string()),
            sub: tail.get(1).map(|s| s.to_string()),
        }))
    };
    match rest {
        [] => Ok(Route::Resources {
            group: group.into(),
            version: version.into(),
        }),
        ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|k| k.namespaced) => {
            target(find(plural).expect("checked"), Some(ns), tail)
        }
        [plural, tail @ ..] => match find(plural) {
            // A namespaced object is only reachable under its namespace.
            Some(kind) if !kind.namespaced || tail.is_empty() => target(kind, None, tail),
            _ => Err(ApiError::no_route()),
        },
    }
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let stall = shared
        .reviews
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .stall;
    if let Some(stall) = stall.filter(|_| path.ends_with("reviews")) {
        tokio::time::sleep(stall).await;
    }
    let (verb, result) = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(body) => dispatch(&shared, &method, &path, &query, &content_type, &body),
        Err(e) => ("unknown".into(), Err(ApiError::bad_request(e.to_string()))),
    };
    let response = result.unwrap_or_else(|e| error_response(&e));
    shared.log.record(RequestRecord {
        method: method.to_string(),
        path,
        query,
        status: response.status().as_u16(),
        verb,
    });
    response
}

/// The verb (for the log) and the answer.
fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &str,
    content_type: &str,
    body: &[u8],
) -> (String, Result<Response, ApiError>) {
    let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let registry = shared.store.registry();
    let target = match route(path, &registry) {
        Ok(Route::Version) => return ("discovery".into(), Ok(ok(&discovery::version()))),
        Ok(Route::CoreVersions) => {
            return ("discovery".into(), Ok(ok(&discovery::core_versions())));
        }
        Ok(Route::Groups) => return ("discovery".into(), Ok(ok(&discovery::groups(&registry)))),
        Ok(Route::Resources { group, version }) => {
            let found = discovery::resources(&registry, &group, &version);
            return (
                "discovery".into(),
                found.map(|r| ok(&r)).ok_or_else(ApiError::no_route),
            );
        }
        Ok(Route::Object(t)) => t,
        Err(e) => return ("unknown".into(), Err(e)),
    };
    let verb = match (method.as_str(), &target.name) {
        ("GET", None) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => {
            "watch"
        }
        ("GET", Some(_)) if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) => {
            "watch"
        }
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        (other, _) => return ("unknown".into(), Err(ApiError::method_not_allowed(other))),
    };
    let dry_run = q.get("dryRun").is_some_and(|v| v == "All");
    let json_body = || -> Result<Value, ApiError> {
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
    };
    let (store, gvr) = (&shared.store, &target.kind.gvr);
    let ns = target.namespace.as_deref();

    if let (Some(name), Some(sub)) = (&target.name, &target.sub) {
        let verb = format!("{verb}/{sub}");
        let handler = shared.handlers.read().unwrap().get(gvr, sub);
        let handler = match handler {
            Some(h) => h,
            None if sub == "status" && target.kind.subresources.iter().any(|s| s == sub) => {
                Arc::new(subresource::status)
            }
            None => return (verb, Err(ApiError::no_route())),
        };
        let result = json_body().and_then(|body| {
            let req = SubresourceRequest {
                method: method.to_string(),
                gvr: gvr.clone(),
                namespace: target.namespace.clone(),
                name: name.clone(),
                subresource: sub.clone(),
                body,
                content_type: content_type.to_string(),
                dry_run,
            };
            handler(store, &req).map(|(code, v)| json_response(code, &v))
        });
        return (verb, result);
    }

    let result = match (verb, target.name.as_deref()) {
        ("watch", name) => watch(shared, &target, &q, name),
        ("list", _) => list(store, &target, &q).map(|v| ok(&v)),
        ("get", Some(name)) => store
            .get(gvr, ns, name)
            .map(|v| ok(&v))
            .ok_or_else(|| ApiError::not_found(gvr, name)),
        ("create", None) => json_body()
            .and_then(|b| {
                let reviews = shared.reviews.read().unwrap_or_else(|e| e.into_inner());
                match reviews.answer(gvr, &b) {
                    Some(review) => review,
                    None => store.create(gvr, ns, b, dry_run),
                }
            })
            .map(|v| json_response(201, &v)),
        ("update", Some(name)) => json_body()
            .and_then(|b| store.replace(gvr, ns, name, b, dry_run))
            .map(|v| ok(&v)),
        ("patch", Some(name)) => Patch::parse(content_type, body).and_then(|p| {
            let existed = store.get(gvr, ns, name).is_some();
            let v = store.patch(gvr, ns, name, &p, dry_run)?;
            Ok(json_response(if existed { 200 } else { 201 }, &v))
        }),
        ("delete", Some(name)) => json_body()
            .and_then(|opts| delete(store, gvr, ns, name, &opts, dry_run))
            .map(|v| ok(&v)),
        ("deletecollection", None) => {
            delete_collection(store, &target, &q, dry_run).map(|v| ok(&v))
        }
        _ => Err(ApiError::method_not_allowed(method.as_str())),
    };
    (verb.to_string(), result)
}

fn selectors(q: &HashMap<String, String>) -> Result<Selectors, ApiError> {
    Selectors::parse(
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )
}

/// A list, paginated by `limit` and `continue`. A continue token carries
/// the first page's resourceVersion, which every page reports, so a client
/// that watches from it afterwards replays whatever changed meanwhile; the
/// pages themselves read the current objects (the real server reads a
/// snapshot). A token older than the history is 410 Expired, as on etcd.
fn list(store: &Store, target: &Target, q: &HashMap<String, String>) -> Result<Value, ApiError> {
    let selectors = selectors(q)?;
    let limit: usize = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let token = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => Some(parse_continue(c)?),
        None => None,
    };
    if let Some((rv, _)) = &token {
        store.check_not_compacted(*rv)?;
    }
    let gvr = &target.kind.gvr;
    let after = token.as_ref().map(|(_, key)| key);
    let (mut items, head) =
        store.list_matching(gvr, target.namespace.as_deref(), &selectors, after);
    let rv = token.as_ref().map_or(head, |(rv, _)| *rv);
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if limit > 0 && items.len() > limit {
        let remaining = items.len() - limit;
        items.truncate(limit);
        let last = &items[limit - 1]["metadata"];
        let ns = last["namespace"].as_str().unwrap_or("");
        let name = last["name"].as_str().unwrap_or("");
        metadata["continue"] = json!(format!("{rv}/{ns}/{name}"));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": target.kind.list_kind(),
        "apiVersion": gvr.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn parse_continue(token: &str) -> Result<(u64, (String, String)), ApiError> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let mut parts = token.splitn(3, '/');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?;
    let name = parts.next().ok_or_else(bad)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

fn watch(
    shared: &Arc<Shared>,
    target: &Target,
    q: &HashMap<String, String>,
    name: Option<&str>,
) -> Result<Response, ApiError> {
    let mut selectors = selectors(q)?;
    if let Some(name) = name {
        // The old per-object watch path is a watch of one name.
        let field = Selectors::parse(None, Some(&format!("metadata.name={name}")))?;
        selectors.fields = field.fields.and(selectors.fields);
    }
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let timeout = match q.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_WATCH,
    };
    let initial = flag("sendInitialEvents");
    if initial && !flag("allowWatchBookmarks") {
        return Err(ApiError::invalid(
            &target.kind.gvr,
            "",
            "sendInitialEvents requires allowWatchBookmarks=true",
        ));
    }
    let req = WatchRequest {
        kind: target.kind.clone(),
        namespace: target.namespace.clone(),
        selectors,
        start: watches::start_of(q.get("resourceVersion").map(String::as_str), initial)?,
        initial_events_end: initial,
        bookmarks: flag("allowWatchBookmarks"),
        timeout,
    };
    let body = watches::stream(shared.clone(), req);
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("static parts are valid"))
}

/// Deletes honouring `preconditions` in the DeleteOptions body.
fn delete(
    store: &Store,
    gvr: &Gvr,
    ns: Option<&str>,
    name: &str,
    opts: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let pre = &opts["preconditions"];
    store.mutate(gvr, ns, name, dry_run, |old| {
        let old = old.ok_or_else(|| ApiError::not_found(gvr, name))?;
        for field in ["resourceVersion", "uid"] {
            if let Some(want) = pre[field].as_str()
                && Some(want) != old["metadata"][field].as_str()
            {
                return Err(ApiError::conflict(gvr, name));
            }
        }
        Ok(None)
    })
}

fn delete_collection(
    store: &Store,
    target: &Target,
    q: &HashMap<String, String>,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let gvr = &target.kind.gvr;
    let (items, _) = store.list_matching(gvr, target.namespace.as_deref(), &selectors(q)?, None);
    let mut deleted = Vec::new();
    for item in items {
        let meta = &item["metadata"];
        let (ns, name) = (
            meta["namespace"].as_str(),
            meta["name"].as_str().unwrap_or(""),
        );
        match store.delete(gvr, ns, name, dry_run) {
            Ok(v) => deleted.push(v),
            // Gone since the list: someone else deleted it.
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": target.kind.list_kind(),
        "apiVersion": gvr.api_version(),
        "metadata": { "resourceVersion": store.resource_version().to_string() },
        "items": deleted,
    }))
}

fn error_response(e: &ApiError) -> Response {
    let mut response = json_response(e.code, &e.to_status());
    if let Some(secs) = e.retry_after_seconds {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

fn ok(v: &Value) -> Response {
    json_response(200, v)
}

pub(crate) fn json_response(code: u16, v: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(v).expect("JSON values serialize");
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}
