//! The fake API server against the real kube-rs client over HTTP: REST
//! verbs, Status errors, selectors, pagination, watches, reflectors through
//! a forced 410, and the hooks a migration driver's tests will use.
//! No root needed.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crossover_tests::apiserver::{ApiError, FakeApiServer, Gvr, Options, fixtures};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Namespace, Node, Pod},
};
use kube::{
    Client, Config,
    api::{
        Api, ApiResource, DeleteParams, DynamicObject, EvictParams, GroupVersionKind, ListParams,
        Patch, PatchParams, PostParams, WatchEvent, WatchParams,
    },
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{reflector, watcher},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn cluster() -> FakeApiServer {
    let server = FakeApiServer::start().unwrap();
    for obj in fixtures::cluster(3, 1) {
        server.apply(obj).unwrap();
    }
    server
}

/// The `kube::Error::Api` status code, or a panic saying what came instead.
fn api_code<T: std::fmt::Debug>(r: kube::Result<T>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected a Status error, got {other:?}"),
    }
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

type Errors = Arc<Mutex<Vec<String>>>;

/// A reflector driven in the background; watcher errors are recorded.
fn spawn_reflector<K>(api: Api<K>, cfg: watcher::Config) -> (reflector::Store<K>, Errors)
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let errors: Errors = Default::default();
    let seen = errors.clone();
    let stream = reflector::reflector(writer, watcher(api, cfg));
    tokio::spawn(stream.for_each(move |item| {
        if let Err(e) = item {
            seen.lock().unwrap().push(format!("{e:?}"));
        }
        std::future::ready(())
    }));
    (reader, errors)
}

fn names<K: kube::Resource>(items: impl IntoIterator<Item = K>) -> Vec<String> {
    let mut n: Vec<String> = items
        .into_iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn kubeconfig_connects_over_plain_http() {
    let server = cluster();
    let dir = std::env::temp_dir().join(format!("crossover-kubeconfig-{}", std::process::id()));
    server.write_kubeconfig(&dir).unwrap();
    let kc = Kubeconfig::read_from(&dir).unwrap();
    std::fs::remove_file(&dir).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.scheme_str(), Some("http"));
    assert_eq!(config.default_namespace, "default");
    let client = Client::try_from(config).unwrap();

    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let listed = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        names(listed.items),
        ["control-plane", "worker-1", "worker-2"]
    );
    // The default namespace comes from the kubeconfig's context.
    let pods: Api<Pod> = Api::default_namespaced(client);
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        9
    );

    let log = server.requests();
    let paths: Vec<_> = log
        .iter()
        .map(|r| (r.verb.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("discovery", "/version"),
            ("list", "/api/v1/nodes"),
            ("list", "/api/v1/namespaces/default/pods")
        ]
    );
}

#[tokio::test]
async fn typed_verbs_and_status_errors() {
    let server = cluster();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");

    let mut cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "crossover-state"},
        "data": {"phase": "draining"},
    }))
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert_eq!(rv1, server.resource_version().to_string());
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("kube-system"));

    assert_eq!(
        api_code(cms.create(&PostParams::default(), &cm).await),
        (409, "AlreadyExists".into())
    );

    let patched = cms
        .patch(
            "crossover-state",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"node": "worker-1"}})),
        )
        .await
        .unwrap();
    let data = patched.data.clone().unwrap();
    assert_eq!(
        (data["phase"].as_str(), data["node"].as_str()),
        ("draining", "worker-1")
    );
    assert_eq!(patched.metadata.uid, created.metadata.uid);
    assert_eq!(patched.metadata.generation, Some(2));

    // A replace carrying the first resourceVersion is stale.
    cm.metadata.resource_version = Some(rv1);
    assert_eq!(
        api_code(
            cms.replace("crossover-state", &PostParams::default(), &cm)
                .await
        ),
        (409, "Conflict".into())
    );
    cm.metadata.resource_version = patched.metadata.resource_version.clone();
    let replaced = cms
        .replace("crossover-state", &PostParams::default(), &cm)
        .await
        .unwrap();
    assert_eq!(replaced.data.unwrap().get("node"), None);

    // Server-side apply creates, then merges.
    let pp = PatchParams::apply("crossover").force();
    let applied = cms
        .patch(
            "crossover-lease",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.metadata.name.as_deref(), Some("crossover-lease"));

    let deleted = cms
        .delete("crossover-state", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deleted.is_left(), "a delete returns the object");
    assert_eq!(
        api_code(cms.get("crossover-state").await),
        (404, "NotFound".into())
    );
    assert_eq!(
        api_code(
            cms.delete("crossover-state", &DeleteParams::default())
                .await
        ),
        (404, "NotFound".into())
    );
    assert!(
        server
            .get(
                &Gvr::of::<ConfigMap>(),
                Some("kube-system"),
                "crossover-state"
            )
            .is_none()
    );

    // Cordon: a strategic merge patch on a cluster-scoped object.
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    let node: Node = server.get_as(None, "worker-1").unwrap();
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));

    // Namespaces are cluster-scoped objects under /api/v1/namespaces/{name};
    // Leases and events.k8s.io Events are what a driver will write.
    let ns: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        ns.get("kube-system")
            .await
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("kube-system")
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "crossover-driver"},
        "spec": {"holderIdentity": "driver-0", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let event = serde_json::from_value(json!({
        "metadata": {"generateName": "worker-1."},
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reason": "Cordoned", "action": "Migrate", "type": "Normal",
        "reportingController": "crossover", "reportingInstance": "driver-0",
        "regarding": {"kind": "Node", "name": "worker-1"},
    }))
    .unwrap();
    let event = events.create(&PostParams::default(), &event).await.unwrap();
    assert!(event.metadata.name.unwrap().starts_with("worker-1."));
    assert_eq!(
        server
            .list(&Gvr::new("events.k8s.io", "v1", "events"), Some("default"))
            .len(),
        1
    );

    // All-namespaces list and a kind nobody registered.
    let pods: Api<Pod> = Api::all(client.clone());
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        15
    );
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
        "widgets",
    );
    let widgets: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    assert_eq!(
        api_code(widgets.list(&ListParams::default()).await),
        (404, "NotFound".into())
    );
    assert_eq!(
        api_code(pods.list(&ListParams::default().labels("a in b")).await).0,
        400
    );
}

#[tokio::test]
async fn cilium_nodes_as_dynamic_objects() {
    let server = cluster();
    let client = server.client();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNode"),
        "ciliumnodes",
    );
    let cns: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let list = cns.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 3);
    let w1 = cns.get("worker-1").await.unwrap();
    assert_eq!(w1.data["spec"]["ipam"]["podCIDRs"][0], "10.245.1.0/24");
    let addrs = &w1.data["spec"]["addresses"];
    assert!(
        addrs
            .as_array()
            .unwrap()
            .contains(&json!({"type": "CiliumInternalIP", "ip": "10.245.1.1"}))
    );

    // The operator hands out a new CIDR after the CiliumNode is deleted.
    cns.delete("worker-2", &DeleteParams::default())
        .await
        .unwrap();
    let mut fresh = DynamicObject::new("worker-2", &ar);
    fresh.data = json!({"spec": {"ipam": {"podCIDRs": ["10.245.9.0/24"]}}});
    cns.create(&PostParams::default(), &fresh).await.unwrap();
    let cn = server.get(&Gvr::cilium_nodes(), None, "worker-2").unwrap();
    assert_eq!(cn["spec"]["ipam"]["podCIDRs"][0], "10.245.9.0/24");
    assert_eq!(cn["kind"], "CiliumNode");

    // CiliumNodeConfig is namespaced, in both served versions.
    for version in ["v2", "v2alpha1"] {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cilium.io", version, "CiliumNodeConfig"),
            "ciliumnodeconfigs",
        );
        let cncs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "kube-system", &ar);
        let pp = PatchParams::apply("crossover");
        let obj = json!({
            "apiVersion": format!("cilium.io/{version}"), "kind": "CiliumNodeConfig",
            "spec": {"defaults": {"cni-exclusive": "true"}},
        });
        cncs.patch("cilium-default", &pp, &Patch::Apply(obj))
            .await
            .unwrap();
        let got = cncs.get("cilium-default").await.unwrap();
        assert_eq!(got.data["spec"]["defaults"]["cni-exclusive"], "true");
    }
}

#[tokio::test]
async fn label_and_field_selectors() {
    let server = cluster();
    let client = server.client();
    let pods: Api<Pod> = Api::all(client.clone());
    let list = |lp: ListParams| {
        let pods = pods.clone();
        async move { names(pods.list(&lp).await.unwrap().items) }
    };
    assert_eq!(
        list(
            ListParams::default()
                .labels("k8s-app=cilium")
                .fields("spec.nodeName=worker-1")
        )
        .await,
        ["cilium-worker-1"]
    );
    assert_eq!(
        list(ListParams::default().labels("app in (goldpinger, flannel),app!=flannel")).await,
        [
            "goldpinger-control-plane",
            "goldpinger-worker-1",
            "goldpinger-worker-2"
        ]
    );
    assert_eq!(
        list(ListParams::default().labels("!app,k8s-app"))
            .await
            .len(),
        3
    );
    assert_eq!(
        list(ListParams::default().fields("metadata.namespace=default,spec.nodeName!=worker-1"))
            .await
            .len(),
        6
    );
    let nodes: Api<Node> = Api::all(client.clone());
    let migrated = nodes
        .list(&ListParams::default().labels("io.cilium.migration/cilium-default=true"))
        .await
        .unwrap();
    assert_eq!(names(migrated.items), ["worker-1"]);

    // Step 4 of the guide: delete the node's Cilium agent by selectors.
    let system: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let gone = system
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default()
                .labels("k8s-app=cilium")
                .fields("spec.nodeName=worker-2"),
        )
        .await
        .unwrap();
    assert_eq!(names(gone.left().unwrap().items), ["cilium-worker-2"]);
    assert_eq!(server.list(&Gvr::of::<Pod>(), Some("kube-system")).len(), 2);
}

#[tokio::test]
async fn pagination_with_continue_tokens() {
    let server = cluster();
    let pods: Api<Pod> = Api::all(server.client());
    let mut lp = ListParams::default().limit(4);
    let (mut all, mut pages) = (Vec::new(), 0);
    let mut first_rv = None;
    loop {
        let page = pods.list(&lp).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 4);
        let rv = page.metadata.resource_version.clone();
        assert_eq!(
            *first_rv.get_or_insert(rv.clone()),
            rv,
            "every page has the first page's rv"
        );
        all.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    let expected: Vec<String> = names(
        server
            .list(&Gvr::of::<Pod>(), None)
            .into_iter()
            .map(|v| serde_json::from_value::<Pod>(v).unwrap()),
    );
    assert_eq!(names(all), expected);

    // A token from before a compaction has expired.
    let page = pods.list(&ListParams::default().limit(4)).await.unwrap();
    server.apply(fixtures::namespace("later")).unwrap();
    server.compact();
    let token = page.metadata.continue_.unwrap();
    assert_eq!(
        api_code(
            pods.list(&ListParams::default().limit(4).continue_token(&token))
                .await
        ),
        (410, "Expired".into())
    );
}

#[tokio::test]
async fn reflector_sees_objects_appear_change_and_go() {
    let server = cluster();
    let client = server.client();
    let cfg = watcher::Config::default().page_size(2);
    let (nodes, errors) = spawn_reflector(Api::<Node>::all(client.clone()), cfg);
    tokio::time::timeout(WAIT, nodes.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(nodes.state().len(), 3);
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.verb == "list")
        .count();
    assert_eq!(lists, 2, "three nodes in pages of two");
    let has = |name: &str| {
        nodes
            .state()
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some(name))
    };
    eventually("a watch opens", || server.stats().open_watches == 1).await;

    // A test-side write and an HTTP write both reach the reflector.
    server.apply(fixtures::NodeBuilder::lab(3).value()).unwrap();
    eventually("worker-3 appears", || has("worker-3")).await;
    let api: Api<Node> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &fixtures::NodeBuilder::new("extra").build(),
    )
    .await
    .unwrap();
    eventually("extra appears", || has("extra")).await;

    let label = |name: &str| {
        nodes
            .state()
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| {
                n.metadata
                    .labels
                    .clone()?
                    .get(fixtures::MIGRATION_LABEL)
                    .cloned()
            })
    };
    assert_eq!(label("worker-2"), None);
    api.patch(
        "worker-2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {fixtures::MIGRATION_LABEL: "true"}}})),
    )
    .await
    .unwrap();
    eventually("worker-2 is labelled", || {
        label("worker-2").as_deref() == Some("true")
    })
    .await;

    server.delete(&Gvr::of::<Node>(), None, "worker-3").unwrap();
    api.delete("extra", &DeleteParams::default()).await.unwrap();
    eventually("worker-3 and extra go", || {
        !has("worker-3") && !has("extra")
    })
    .await;
    assert_eq!(nodes.state().len(), 3);
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}

#[tokio::test]
async fn forced_410_makes_the_watcher_relist_and_converge() {
    let server = cluster();
    let client = server.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let (store, errors) = spawn_reflector(cms.clone(), watcher::Config::default());
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    eventually("a watch opens", || server.stats().open_watches == 1).await;
    let before = server.stats();

    // Behind the reflector's back: one object changes while its watch is
    // told its history is gone; it must relist to see the new state.
    server.expire_watches();
    let cm = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"namespace": "kube-system", "name": name}, "data": {"k": "v"}})
    };
    server.apply(cm("after-410")).unwrap();
    let has = |name: &str| {
        store
            .state()
            .iter()
            .any(|c| c.metadata.name.as_deref() == Some(name))
    };
    // The old watch may deliver the write before it sees the expiry, so
    // wait for the relist and the new watch rather than for the object.
    eventually("a relist and a new watch", || {
        let s = server.stats();
        s.lists > before.lists && s.watches_started > before.watches_started && s.open_watches == 1
    })
    .await;
    eventually("after-410 appears", || has("after-410")).await;
    assert_eq!(server.stats().watches_gone, before.watches_gone + 1);
    assert!(
        errors.lock().unwrap().iter().any(|e| e.contains("410")),
        "the watcher saw no 410: {:?}",
        errors.lock().unwrap()
    );
    // Still converging after the relist.
    server
        .delete(
            &Gvr::of::<ConfigMap>(),
            Some("kube-system"),
            "cilium-config",
        )
        .unwrap();
    eventually("cilium-config goes", || !has("cilium-config")).await;
    assert_eq!(
        names(store.state().iter().map(|c| (**c).clone())),
        ["after-410"]
    );

    // Resuming a raw watch from before the compaction: ERROR 410 first.
    let mut events = cms
        .watch(&WatchParams::default(), "2")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
}

#[tokio::test]
async fn streaming_list_and_watch_selection() {
    let server = cluster();
    let client = server.client();
    let cfg = watcher::Config::default()
        .streaming_lists()
        .labels("app=goldpinger");
    let (pods, errors) = spawn_reflector(Api::<Pod>::namespaced(client.clone(), "default"), cfg);
    tokio::time::timeout(WAIT, pods.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pods.state().len(), 3);
    let log = server.requests();
    assert!(
        log.iter().all(|r| r.verb != "list"),
        "a streaming list does not list"
    );
    let watch = log.iter().find(|r| r.verb == "watch").unwrap();
    assert_eq!(watch.param("sendInitialEvents").as_deref(), Some("true"));

    // Labelling a pod into the selection is an ADDED; out of it, DELETED.
    let gvr = Gvr::of::<Pod>();
    server
        .patch(
            &gvr,
            Some("default"),
            "app-1-worker-1",
            json!({"metadata": {"labels": {"app": "goldpinger"}}}),
        )
        .unwrap();
    eventually("app-1-worker-1 enters", || pods.state().len() == 4).await;
    server
        .patch(
            &gvr,
            Some("default"),
            "goldpinger-worker-2",
            json!({"metadata": {"labels": {"app": "other"}}}),
        )
        .unwrap();
    eventually("goldpinger-worker-2 leaves", || pods.state().len() == 3).await;
    let mut now = names(pods.state().iter().map(|p| (**p).clone()));
    now.sort();
    assert_eq!(
        now,
        [
            "app-1-worker-1",
            "goldpinger-control-plane",
            "goldpinger-worker-1"
        ]
    );
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}

#[tokio::test]
async fn bookmarks_and_watch_timeout() {
    let options = Options {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let server = FakeApiServer::start_with(options).unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    let rv = server.resource_version().to_string();
    let started = std::time::Instant::now();
    let stream = nodes
        .watch(&WatchParams::default().timeout(1), &rv)
        .await
        .unwrap();
    server.apply(fixtures::NodeBuilder::lab(1).value()).unwrap();
    let events: Vec<_> = tokio::time::timeout(WAIT, stream.try_collect::<Vec<_>>())
        .await
        .expect("the server ends the watch at timeoutSeconds")
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(
        matches!(events.first(), Some(WatchEvent::Added(n)) if n.metadata.name.as_deref() == Some("worker-1"))
    );
    let bookmarks: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
            _ => None,
        })
        .collect();
    assert!(
        bookmarks.len() >= 5,
        "{} bookmarks in a second",
        bookmarks.len()
    );
    assert_eq!(
        bookmarks.last().unwrap(),
        &server.resource_version().to_string()
    );
    eventually("the watch is closed", || server.stats().open_watches == 0).await;
}

#[tokio::test]
async fn eviction_and_hooks() {
    let server = cluster();
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = pods
        .evict("app-1-worker-1", &EvictParams::default())
        .await
        .unwrap();
    assert_eq!(status.code, 201);
    assert!(
        server
            .get(&Gvr::of::<Pod>(), Some("default"), "app-1-worker-1")
            .is_none()
    );
    assert_eq!(
        api_code(pods.evict("app-1-worker-1", &EvictParams::default()).await).0,
        404
    );

    // What a PodDisruptionBudget check will plug in: a 429 answer. kube-rs
    // retries 429 by default (15 times, backing off), so the client that
    // wants the answer at once turns that off.
    server.on_subresource("", "pods", "eviction", |_, req| {
        Err(ApiError::too_many_requests(format!(
            "Cannot evict pod as it would violate the pod's disruption budget: {}",
            req.name
        )))
    });
    let mut config = server.config();
    config.default_retry = false;
    let no_retry: Api<Pod> = Api::namespaced(Client::try_from(config).unwrap(), "default");
    let before = server.stats().requests;
    assert_eq!(
        api_code(
            no_retry
                .evict("app-2-worker-1", &EvictParams::default())
                .await
        ),
        (429, "TooManyRequests".into())
    );
    assert_eq!(server.stats().requests, before + 1);
    // With the default client and a Retry-After, it retries until allowed.
    let refusals = Arc::new(Mutex::new(2));
    let left = refusals.clone();
    server.on_subresource("", "pods", "eviction", move |store, req| {
        let mut left = left.lock().unwrap();
        if *left > 0 {
            *left -= 1;
            return Err(ApiError::too_many_requests("disruption budget").retry_after(1));
        }
        crossover_tests::apiserver::evict_unconditionally(store, req)
    });
    let started = std::time::Instant::now();
    pods.evict("app-2-worker-1", &EvictParams::default())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(*refusals.lock().unwrap(), 0);

    // A DaemonSet controller in a few lines: deleted DS pods come back.
    server.on_write(|store, change| {
        let owned_by_ds = change.object["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet";
        if change.change == crossover_tests::apiserver::ChangeType::Deleted && owned_by_ds {
            let mut pod = change.object.clone();
            let meta = pod["metadata"].as_object_mut().unwrap();
            for k in ["uid", "resourceVersion", "creationTimestamp"] {
                meta.remove(k);
            }
            store.apply(pod).unwrap();
        }
    });
    let old = pods.get("goldpinger-worker-1").await.unwrap();
    pods.delete("goldpinger-worker-1", &DeleteParams::default())
        .await
        .unwrap();
    let new = pods.get("goldpinger-worker-1").await.unwrap();
    assert_ne!(old.metadata.uid, new.metadata.uid);
    assert_eq!(new.metadata.generation, Some(1));

    // The status subresource changes status only.
    let patched = pods
        .patch_status(
            "goldpinger-worker-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "spec": {"nodeName": "elsewhere"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Failed"));
    assert_eq!(patched.spec.unwrap().node_name.as_deref(), Some("worker-1"));
}

/// The lab's way: a listener bound elsewhere, a server with its own
/// runtime started from synchronous code, a client on another runtime.
#[test]
fn serves_a_given_listener_without_a_runtime() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = FakeApiServer::start_on(listener).unwrap();
    assert_eq!(server.url(), format!("http://{addr}"));
    server.apply(fixtures::cilium_config()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = rt.block_on(async {
        let cms: Api<ConfigMap> = Api::namespaced(server.client(), "kube-system");
        cms.get("cilium-config").await.unwrap().data.unwrap()
    });
    assert_eq!(data["tunnel-port"], "8473");
    assert_eq!(data["cluster-pool-ipv4-cidr"], "10.245.0.0/16");
    drop(server);
    let refused = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::net::TcpStream::connect(addr).await
    });
    assert!(refused.is_err(), "the server stops when dropped");
}

#[test]
fn cluster_fixture_follows_the_lab_plan() {
    let server = FakeApiServer::start().unwrap();
    for obj in fixtures::cluster(3, 2) {
        server.apply(obj).unwrap();
    }
    let node = |name: &str| server.get_as::<Node>(None, name).unwrap();
    let migrated = |n: &Node| {
        n.metadata
            .labels
            .as_ref()
            .unwrap()
            .get(fixtures::MIGRATION_LABEL)
            .cloned()
    };
    // Workers first: two migrated means both workers, not the control plane.
    assert_eq!(migrated(&node("worker-1")).as_deref(), Some("true"));
    assert_eq!(migrated(&node("worker-2")).as_deref(), Some("true"));
    assert_eq!(migrated(&node("control-plane")), None);

    let w2 = node("worker-2");
    let spec = w2.spec.unwrap();
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.2.0/24"));
    let status = w2.status.unwrap();
    let internal = status
        .addresses
        .unwrap()
        .into_iter()
        .find(|a| a.type_ == "InternalIP");
    assert_eq!(internal.unwrap().address, "172.18.0.4");
    let ann = w2.metadata.annotations.unwrap();
    let backend: serde_json::Value =
        serde_json::from_str(&ann["flannel.alpha.coreos.com/backend-data"]).unwrap();
    assert_eq!(backend, json!({"VNI": 1, "VtepMAC": "02:c0:00:01:00:02"}));
    assert_eq!(ann["flannel.alpha.coreos.com/public-ip"], "172.18.0.4");
    let cp = node("control-plane").spec.unwrap();
    assert_eq!(cp.taints.unwrap()[0].key, fixtures::CONTROL_PLANE_LABEL);

    // Pods: Cilium addresses on migrated nodes, Flannel's elsewhere; host
    // network pods have the node's address.
    let pod = |ns: &str, name: &str| server.get_as::<Pod>(Some(ns), name).unwrap();
    let ip = |p: Pod| p.status.unwrap().pod_ip.unwrap();
    assert_eq!(ip(pod("default", "goldpinger-worker-1")), "10.245.1.2");
    assert_eq!(ip(pod("default", "app-2-worker-2")), "10.245.2.4");
    assert_eq!(ip(pod("default", "goldpinger-control-plane")), "10.244.0.2");
    let agent = pod("kube-system", "cilium-worker-1");
    assert_eq!(agent.spec.as_ref().unwrap().host_network, Some(true));
    assert_eq!(
        agent.metadata.owner_references.as_ref().unwrap()[0].kind,
        "DaemonSet"
    );
    assert_eq!(ip(agent), "172.18.0.3");

    let cn = server
        .get(&Gvr::cilium_nodes(), None, "control-plane")
        .unwrap();
    assert_eq!(cn["spec"]["ipam"]["podCIDRs"], json!(["10.245.0.0/24"]));
    let cm = server
        .get_as::<ConfigMap>(Some("kube-system"), "cilium-config")
        .unwrap();
    let data = cm.data.unwrap();
    assert_eq!(
        (
            data["ipam"].as_str(),
            data["tunnel-protocol"].as_str(),
            data["enable-policy"].as_str()
        ),
        ("cluster-pool", "vxlan", "never")
    );
}
