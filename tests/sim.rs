//! The cluster sim on the fake API server, driven over HTTP with kube-rs the
//! way `crossover migrate` drives a cluster: evictions against disruption
//! budgets, DaemonSet and ReplicaSet replacements, the scheduler around
//! cordons, a node's switch to Cilium addresses (and back), and the failure
//! modes. No root needed, except for the last test, which puts the pods the
//! sim places into a lab and pings them.
use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use crossover_tests::{
    apiserver::{
        FakeApiServer, Gvr,
        fixtures::{
            self, DaemonSetBuilder, MIGRATION_LABEL, PdbBuilder, PodBuilder, ReplicaSetBuilder,
        },
        sim::{ClusterSim, PodPlacement, SimOptions},
    },
    lab::{Lab, LabSpec, Network, PodKind, exec::in_ns},
    netns::unique,
    require_root,
};
use futures_util::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, ReplicaSet},
    core::v1::{Event, Node, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client,
    api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn options() -> SimOptions {
    SimOptions::default()
}

/// A fixture cluster (`nodes` nodes, the first `migrated` labelled, two app
/// pods a node) with the sim running on it.
fn cluster(nodes: usize, migrated: usize, options: SimOptions) -> (FakeApiServer, ClusterSim) {
    let server = FakeApiServer::start().unwrap();
    for obj in fixtures::cluster(nodes, migrated) {
        server.apply(obj).unwrap();
    }
    let sim = ClusterSim::install(&server, options);
    (server, sim)
}

/// A client that reports a 429 at once instead of retrying it, as a
/// driver that wants to see refusals configures it.
fn no_retry(server: &FakeApiServer) -> Client {
    let mut config = server.config();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn in_net(pod: &Pod, cidr: &str) -> bool {
    let net: Ipv4Net = cidr.parse().unwrap();
    ip(pod).is_some_and(|a| net.contains(&a))
}

async fn pods_on(api: &Api<Pod>, node: &str) -> Vec<Pod> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    api.list(&lp).await.unwrap().items
}

/// The one pod of `labels` on `node`.
async fn pod_of(api: &Api<Pod>, labels: &str, node: &str) -> Pod {
    let lp = ListParams::default()
        .labels(labels)
        .fields(&format!("spec.nodeName={node}"));
    let mut items = api.list(&lp).await.unwrap().items;
    assert_eq!(items.len(), 1, "pods {labels} on {node}: {items:#?}");
    items.remove(0)
}

fn status_code<T: std::fmt::Debug>(r: kube::Result<T>) -> Box<kube::core::Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("expected a Status error, got {other:?}"),
    }
}

async fn cordon(client: &Client, node: &str, yes: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "unschedulable": yes } })),
        )
        .await
        .unwrap();
}

async fn label(client: &Client, node: &str, on: bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let value = if on { json!("true") } else { json!(null) };
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { MIGRATION_LABEL: value } } })),
        )
        .await
        .unwrap();
}

/// Guide step 4: delete the node's agent pod, wait for its replacement.
async fn restart_agent(client: &Client, sim: &ClusterSim, node: &str) -> Pod {
    let ks: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let old = pod_of(&ks, "k8s-app=cilium", node).await;
    ks.delete(
        &old.metadata.name.clone().unwrap(),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    sim.settle().await;
    let new = pod_of(&ks, "k8s-app=cilium", node).await;
    assert_ne!(new.metadata.name, old.metadata.name);
    new
}

#[tokio::test]
async fn eviction_honours_a_budget_until_the_replacement_is_ready() {
    let (server, sim) = cluster(
        3,
        0,
        SimOptions {
            pod_ready_delay: Duration::from_secs(1),
            ..options()
        },
    );
    let client = no_retry(&server);
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "default");
    pdbs.create(
        &PostParams::default(),
        &PdbBuilder::new("default", "app", &[("app", "app")])
            .max_unavailable(1)
            .build(),
    )
    .await
    .unwrap();
    sim.settle().await;
    let status = pdbs.get("app").await.unwrap().status.unwrap();
    assert_eq!(
        (
            status.expected_pods,
            status.desired_healthy,
            status.current_healthy,
            status.disruptions_allowed
        ),
        (6, 5, 6, 1)
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let evicted = pods
        .evict("app-1-worker-1", &EvictParams::default())
        .await
        .unwrap();
    assert_eq!(evicted.code, 201);
    // The replacement exists but is not Ready yet: the budget is spent.
    let refused = status_code(pods.evict("app-2-worker-1", &EvictParams::default()).await);
    assert_eq!(
        (refused.code, refused.reason.as_str()),
        (429, "TooManyRequests")
    );
    assert_eq!(
        refused.message,
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    let cause = &refused.details.as_ref().unwrap().causes[0];
    assert_eq!(cause.reason, "DisruptionBudget");
    assert_eq!(
        cause.message,
        "The disruption budget app needs 5 healthy pods and has 5 currently"
    );
    assert!(pods.get_opt("app-2-worker-1").await.unwrap().is_some());

    // Once the replacement is Ready the budget allows one more.
    sim.settle().await;
    let all = pods
        .list(&ListParams::default().labels("app=app"))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 6);
    assert!(all.items.iter().all(ready));
    pods.evict("app-2-worker-1", &EvictParams::default())
        .await
        .unwrap();
    assert_eq!(
        status_code(pods.evict("app-2-worker-1", &EvictParams::default()).await).code,
        404
    );

    // minAvailable counts the matching pods themselves.
    sim.settle().await;
    pdbs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "maxUnavailable": null, "minAvailable": 6 } })),
    )
    .await
    .unwrap();
    sim.settle().await;
    let s = pdbs.get("app").await.unwrap().status.unwrap();
    assert_eq!((s.desired_healthy, s.disruptions_allowed), (6, 0));
    assert_eq!(s.observed_generation, Some(2));
    let allowed = s.conditions.unwrap();
    assert_eq!(allowed[0].type_, "DisruptionAllowed");
    assert_eq!(allowed[0].status, "False");
    let victim = pods
        .list(&ListParams::default().labels("app=app"))
        .await
        .unwrap()
        .items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    assert_eq!(
        status_code(pods.evict(&victim, &EvictParams::default()).await).code,
        429
    );
}

#[tokio::test]
async fn percentages_round_up_and_unready_pods_go_while_the_budget_is_met() {
    let (server, sim) = cluster(3, 0, options());
    let pdb = |b: PdbBuilder| server.apply(b.value()).unwrap();
    // 50% of 6 expected (the ReplicaSet's scale) must stay: 3.
    let half = pdb(PdbBuilder::new("default", "half", &[("app", "app")]).min_available_percent(50));
    let b = crossover_tests::apiserver::sim::budget(server.store(), &half);
    assert_eq!(
        (b.expected_pods, b.desired_healthy, b.disruptions_allowed),
        (6, 3, 3)
    );
    // 34% of 6 may go, rounded up: 3 unavailable, 3 must stay.
    let most =
        pdb(PdbBuilder::new("default", "half", &[("app", "app")]).max_unavailable_percent(34));
    let b = crossover_tests::apiserver::sim::budget(server.store(), &most);
    assert_eq!((b.desired_healthy, b.disruptions_allowed), (3, 3));
    // DaemonSet pods count their DaemonSet's desired number.
    let gp = pdb(PdbBuilder::new("default", "gp", &[("app", "goldpinger")]).max_unavailable(0));
    let b = crossover_tests::apiserver::sim::budget(server.store(), &gp);
    assert_eq!(
        (b.expected_pods, b.current_healthy, b.disruptions_allowed),
        (3, 3, 0)
    );

    // An unready pod under a budget that is not met: IfHealthyBudget (the
    // default) refuses, AlwaysAllow lets it go.
    server
        .apply(
            PodBuilder::new("default", "goldpinger-worker-1")
                .label("app", "goldpinger")
                .node("worker-1", "172.18.0.3")
                .ip("10.244.1.2")
                .ready(false)
                .owner(fixtures::Owner::DaemonSet("goldpinger".into()))
                .value(),
        )
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(no_retry(&server), "default");
    let refused = status_code(
        pods.evict("goldpinger-worker-1", &EvictParams::default())
            .await,
    );
    assert_eq!(refused.code, 429);
    pdb(PdbBuilder::new("default", "gp", &[("app", "goldpinger")])
        .max_unavailable(0)
        .unhealthy_pod_eviction_policy("AlwaysAllow"));
    pods.evict("goldpinger-worker-1", &EvictParams::default())
        .await
        .unwrap();
    // Two budgets over one pod: the eviction subresource gives up.
    pdb(PdbBuilder::new("default", "gp-2", &[("app", "goldpinger")]).max_unavailable(1));
    let twice = status_code(
        pods.evict("goldpinger-worker-2", &EvictParams::default())
            .await,
    );
    assert_eq!(twice.code, 500, "{twice:?}");
    drop(sim);
}

#[tokio::test]
async fn daemonset_pods_come_back_under_new_names_and_status_follows() {
    let (server, sim) = cluster(3, 0, options());
    let client = server.client();
    let ks: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    sim.settle().await;
    let cilium = dss.get("cilium").await.unwrap();
    let s = cilium.status.clone().unwrap();
    assert_eq!(
        (
            s.desired_number_scheduled,
            s.number_ready,
            s.observed_generation
        ),
        (3, 3, Some(1))
    );

    // A cordoned node keeps its DaemonSet pods: they tolerate it.
    cordon(&client, "worker-1", true).await;
    ks.delete("cilium-worker-1", &DeleteParams::default())
        .await
        .unwrap();
    sim.settle().await;
    let new = pod_of(&ks, "k8s-app=cilium", "worker-1").await;
    let name = new.metadata.name.clone().unwrap();
    assert!(
        name.starts_with("cilium-") && name.len() == "cilium-".len() + 5,
        "{name}"
    );
    let owner = &new.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("DaemonSet", "cilium")
    );
    assert_eq!(Some(&owner.uid), cilium.metadata.uid.as_ref());
    sim.settle().await;
    let new = ks.get(&name).await.unwrap();
    assert!(ready(&new));
    // Host network: the node's address.
    assert_eq!(ip(&new), Some("172.18.0.3".parse().unwrap()));
    let s = dss.get("cilium").await.unwrap().status.unwrap();
    assert_eq!(
        (
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_ready,
            s.number_available,
            s.updated_number_scheduled
        ),
        (3, 3, 3, Some(3), Some(3))
    );

    // A DaemonSet with a nodeSelector runs only where it matches.
    let labelled = DaemonSetBuilder::new("default", "probe", &[("app", "probe")])
        .node_selector(&[(MIGRATION_LABEL, "true")])
        .build();
    Api::<DaemonSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &labelled)
        .await
        .unwrap();
    label(&client, "worker-2", true).await;
    sim.settle().await;
    let probes: Api<Pod> = Api::namespaced(client.clone(), "default");
    let running = probes
        .list(&ListParams::default().labels("app=probe"))
        .await
        .unwrap()
        .items;
    assert_eq!(running.len(), 1);
    assert_eq!(node_of(&running[0]), Some("worker-2"));
    assert!(
        in_net(&running[0], "10.244.2.0/24"),
        "{:?}",
        ip(&running[0])
    );
    label(&client, "worker-2", false).await;
    sim.settle().await;
    assert!(
        probes
            .list(&ListParams::default().labels("app=probe"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn rollout_restart_replaces_agents_one_at_a_time() {
    let (server, sim) = cluster(3, 0, options());
    let client = server.client();
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let ks: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    sim.settle().await;
    // Watch the agents while `kubectl rollout restart` does its work.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let watch = tokio::spawn(
        watcher(dss.clone(), watcher::Config::default())
            .applied_objects()
            .for_each(move |ds| {
                if let Ok(ds) = ds {
                    log.lock().unwrap().push(ds.status.unwrap_or_default());
                }
                std::future::ready(())
            }),
    );
    dss.patch(
        "cilium",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "spec": { "template": { "metadata": { "annotations": {
            "kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z" } } } } }),
        ),
    )
    .await
    .unwrap();
    sim.settle().await;
    let s = dss.get("cilium").await.unwrap().status.unwrap();
    assert_eq!(
        (
            s.updated_number_scheduled,
            s.number_available,
            s.observed_generation
        ),
        (Some(3), Some(3), Some(2))
    );
    let agents = ks
        .list(&ListParams::default().labels("k8s-app=cilium"))
        .await
        .unwrap();
    assert!(agents.items.iter().all(|p| {
        let name = p.metadata.name.as_deref().unwrap();
        !name.ends_with("worker-1") && !name.ends_with("worker-2") && !name.ends_with("plane")
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    watch.abort();
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|s| s.number_unavailable.unwrap_or(0) <= 1),
        "more than one agent down at once: {seen:#?}"
    );
    assert!(seen.iter().any(|s| s.number_unavailable == Some(1)));
}

#[tokio::test]
async fn the_scheduler_avoids_cordoned_and_tainted_nodes_and_spreads() {
    let (server, sim) = cluster(4, 0, options());
    let client = no_retry(&server);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    cordon(&client, "worker-1", true).await;
    for name in ["app-1-worker-1", "app-2-worker-1"] {
        pods.evict(name, &EvictParams::default()).await.unwrap();
    }
    sim.settle().await;
    assert!(
        pods_on(&pods, "worker-1").await.iter().all(|p| !p
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("app-"))
    );
    // One each on worker-2 and worker-3; none on the tainted control plane.
    for (node, subnet) in [("worker-2", "10.244.2.0/24"), ("worker-3", "10.244.3.0/24")] {
        let apps: Vec<Pod> = pod_list(&pods, "app=app", node).await;
        assert_eq!(apps.len(), 3, "{node}");
        let new: Vec<&Pod> = apps
            .iter()
            .filter(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .unwrap()
                    .starts_with("app-5d9c7b-")
            })
            .collect();
        assert_eq!(new.len(), 1, "{node}");
        assert!(
            ready(new[0]) && in_net(new[0], subnet),
            "{:?}",
            new[0].status
        );
        let status = new[0].status.as_ref().unwrap();
        let host = status.host_ip.as_deref().unwrap();
        assert_eq!(
            host,
            if node == "worker-2" {
                "172.18.0.4"
            } else {
                "172.18.0.5"
            }
        );
        assert_eq!(status.phase.as_deref(), Some("Running"));
    }
    assert_eq!(pod_list(&pods, "app=app", "control-plane").await.len(), 2);

    // Nowhere to go: Pending, PodScheduled=False, a FailedScheduling event;
    // schedulable again, it goes.
    for node in ["worker-2", "worker-3"] {
        cordon(&client, node, true).await;
    }
    pods.evict("app-1-worker-2", &EvictParams::default())
        .await
        .unwrap();
    sim.settle().await;
    let pending: Vec<Pod> = pods
        .list(&ListParams::default().fields("spec.nodeName="))
        .await
        .unwrap()
        .items;
    assert_eq!(pending.len(), 1);
    let cond = pending[0]
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap();
    let scheduled = cond.iter().find(|c| c.type_ == "PodScheduled").unwrap();
    assert_eq!(
        (scheduled.status.as_str(), scheduled.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );
    assert!(
        scheduled
            .message
            .as_deref()
            .unwrap()
            .starts_with("0/4 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 3 node(s) were unschedulable."),
        "{scheduled:?}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let failed = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .count();
    assert_eq!(failed, 1);
    // A pod that tolerates the control plane's taint may go there.
    let tolerant = ReplicaSetBuilder::new("default", "tolerant-7f8c9d", &[("app", "tolerant")], 1)
        .tolerate_control_plane()
        .build();
    Api::<ReplicaSet>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &tolerant)
        .await
        .unwrap();
    sim.settle().await;
    let t = pods
        .list(&ListParams::default().labels("app=tolerant"))
        .await
        .unwrap();
    assert_eq!(node_of(&t.items[0]), Some("control-plane"));
    assert!(ready(&t.items[0]) && in_net(&t.items[0], "10.244.0.0/24"));

    cordon(&client, "worker-3", false).await;
    sim.settle().await;
    let moved = pods
        .get(pending[0].metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(node_of(&moved), Some("worker-3"));
    assert!(ready(&moved));
}

async fn pod_list(api: &Api<Pod>, labels: &str, node: &str) -> Vec<Pod> {
    let lp = ListParams::default()
        .labels(labels)
        .fields(&format!("spec.nodeName={node}"));
    api.list(&lp).await.unwrap().items
}

#[tokio::test]
async fn a_node_switches_to_cilium_after_label_and_agent_restart_and_back_on_rollback() {
    let (server, sim) = cluster(3, 0, options());
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // A watch sees every step, as the driver's would.
    let seen: Arc<Mutex<Vec<Pod>>> = Default::default();
    let log = seen.clone();
    let watch = tokio::spawn(
        watcher(pods.clone(), watcher::Config::default())
            .applied_objects()
            .for_each(move |p| {
                if let Ok(p) = p {
                    log.lock().unwrap().push(p);
                }
                std::future::ready(())
            }),
    );
    sim.settle().await;
    assert_eq!(sim.network("worker-1"), Some(Network::Legacy));
    let restart_goldpinger = || async {
        let old = pod_of(&pods, "app=goldpinger", "worker-1").await;
        pods.delete(
            old.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
        sim.settle().await;
        pod_of(&pods, "app=goldpinger", "worker-1").await
    };

    // The label alone changes nothing.
    label(&client, "worker-1", true).await;
    sim.settle().await;
    assert_eq!(sim.network("worker-1"), Some(Network::Legacy));
    let gp = restart_goldpinger().await;
    assert!(in_net(&gp, "10.244.1.0/24"), "{:?}", ip(&gp));

    // The agent's restart does; pods already there keep their addresses.
    let agent = restart_agent(&client, &sim, "worker-1").await;
    assert!(ready(&agent));
    assert_eq!(sim.network("worker-1"), Some(Network::Cilium));
    let app = pods.get("app-1-worker-1").await.unwrap();
    assert!(in_net(&app, "10.244.1.0/24"));
    let gp = restart_goldpinger().await;
    assert!(
        ready(&gp) && in_net(&gp, "10.245.1.0/24"),
        "{:?}",
        gp.status
    );
    // Not the CiliumInternalIP (cilium_host, .1).
    assert_ne!(ip(&gp), Some("10.245.1.1".parse().unwrap()));
    let cilium_name = gp.metadata.name.clone().unwrap();
    let other = pod_of(&pods, "app=goldpinger", "worker-2").await;
    assert!(in_net(&other, "10.244.2.0/24"));

    // Rollback: label off, agent restarted, back on legacy.
    label(&client, "worker-1", false).await;
    restart_agent(&client, &sim, "worker-1").await;
    assert_eq!(sim.network("worker-1"), Some(Network::Legacy));
    let gp = restart_goldpinger().await;
    assert!(in_net(&gp, "10.244.1.0/24"), "{:?}", ip(&gp));

    // The watch saw the Cilium-addressed pod come up Ready.
    sim.wait_until(WAIT, |_| {
        seen.lock().unwrap().iter().any(|p| {
            p.metadata.name.as_deref() == Some(cilium_name.as_str())
                && ready(p)
                && in_net(p, "10.245.1.0/24")
        })
    })
    .await;
    watch.abort();
    let seen = seen.lock().unwrap();
    let states: Vec<(bool, Option<Ipv4Addr>)> = seen
        .iter()
        .filter(|p| p.metadata.name.as_deref() == Some(cilium_name.as_str()))
        .map(|p| (ready(p), ip(p)))
        .collect();
    // Created, addressed, Ready: in that order.
    assert_eq!(states.first(), Some(&(false, None)), "{states:?}");
    assert!(states.last().unwrap().0, "{states:?}");
}

#[tokio::test]
async fn an_exhausted_subnet_leaves_the_pod_creating_with_a_warning() {
    let (server, sim) = cluster(3, 1, options());
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    sim.settle().await;
    assert_eq!(sim.network("worker-1"), Some(Network::Cilium));
    sim.exhaust_ipam("worker-1", true);
    let old = pod_of(&pods, "app=goldpinger", "worker-1").await;
    pods.delete(
        old.metadata.name.as_deref().unwrap(),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    sim.settle().await;
    let stuck = pod_of(&pods, "app=goldpinger", "worker-1").await;
    let status = stuck.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.pod_ip, None);
    let waiting = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let warnings: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreatePodSandBox"))
        .collect();
    assert_eq!(warnings.len(), 1);
    let e = &warnings[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.involved_object.name, stuck.metadata.name);
    let message = e.message.as_deref().unwrap();
    assert!(
        message.contains("unable to allocate IP via local cilium agent")
            && message.contains("No more IPs available"),
        "{message}"
    );
    // The DaemonSet is short one ready pod meanwhile.
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let s = ds.get("goldpinger").await.unwrap().status.unwrap();
    assert_eq!((s.current_number_scheduled, s.number_ready), (3, 2));

    sim.exhaust_ipam("worker-1", false);
    sim.settle().await;
    let started = pods
        .get(stuck.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert!(ready(&started) && in_net(&started, "10.245.1.0/24"));

    // A subnet that is really full: a /30 holds one pod, and it is taken.
    server
        .patch(
            &Gvr::cilium_nodes(),
            None,
            "worker-1",
            json!({ "spec": { "ipam": { "podCIDRs": ["10.245.1.0/30"] } } }),
        )
        .unwrap();
    let bare = PodBuilder::new("default", "bare")
        .node("worker-1", "172.18.0.3")
        .phase("Pending")
        .ready(false)
        .value();
    let mut bare = bare;
    bare["status"] = json!({});
    server.create(bare).unwrap();
    sim.settle().await;
    let bare = pods.get("bare").await.unwrap();
    assert_eq!(bare.status.unwrap().pod_ip, None, "{:?}", ip(&started));
    let about_bare = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("FailedCreatePodSandBox")
                && e.involved_object.name.as_deref() == Some("bare")
        })
        .count();
    assert_eq!(about_bare, 1);
    // Deleting the pod that holds the one address lets it start.
    pods.delete(
        started.metadata.name.as_deref().unwrap(),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    sim.settle().await;
    let bare = pods.get("bare").await.unwrap();
    assert_eq!(ip(&bare), Some("10.245.1.2".parse().unwrap()));
}

#[tokio::test]
async fn an_agent_that_never_turns_ready_keeps_the_node_on_legacy() {
    let (server, sim) = cluster(3, 0, options());
    let client = server.client();
    let ks: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    sim.set_agent_never_ready("worker-1", true);
    label(&client, "worker-1", true).await;
    let agent = restart_agent(&client, &sim, "worker-1").await;
    let status = agent.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(!ready(&agent));
    assert_eq!(sim.network("worker-1"), Some(Network::Legacy));
    // What `rollout status ds/cilium` waits on never comes.
    let s = dss.get("cilium").await.unwrap().status.unwrap();
    assert_eq!((s.number_ready, s.number_unavailable), (2, Some(1)));

    sim.set_agent_never_ready("worker-1", false);
    sim.settle().await;
    assert!(ready(
        &ks.get(agent.metadata.name.as_deref().unwrap())
            .await
            .unwrap()
    ));
    assert_eq!(sim.network("worker-1"), Some(Network::Cilium));
}

#[tokio::test]
async fn a_reboot_gives_the_nodes_pods_new_sandboxes_and_addresses() {
    let (server, sim) = cluster(3, 0, options());
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed: Arc<Mutex<Vec<PodPlacement>>> = Default::default();
    let removed: Arc<Mutex<Vec<PodPlacement>>> = Default::default();
    let (p, r) = (placed.clone(), removed.clone());
    sim.on_pod_placed(move |x| p.lock().unwrap().push(x.clone()));
    sim.on_pod_removed(move |x| r.lock().unwrap().push(x.clone()));
    label(&client, "worker-1", true).await;
    restart_agent(&client, &sim, "worker-1").await;
    removed.lock().unwrap().clear();
    placed.lock().unwrap().clear();

    sim.set_node_ready("worker-1", false).unwrap();
    sim.settle().await;
    assert!(pods_on(&pods, "worker-1").await.iter().all(|p| !ready(p)));
    sim.set_node_ready("worker-1", true).unwrap();
    sim.settle().await;
    let after = pods_on(&pods, "worker-1").await;
    assert_eq!(after.len(), 3);
    for pod in &after {
        assert!(ready(pod), "{:?}", pod.status);
        assert!(in_net(pod, "10.245.1.0/24"), "{:?}", ip(pod));
        let restarts = pod
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .restart_count;
        assert_eq!(restarts, 1);
    }
    // Each lost its legacy address and got a Cilium one, in that order.
    let removed = removed.lock().unwrap();
    let placed = placed.lock().unwrap();
    let names = |v: &[PodPlacement], net| {
        let mut n: Vec<String> = v
            .iter()
            .filter(|p| p.node == "worker-1" && p.network == Some(net))
            .map(|p| p.name.clone())
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(&removed, Network::Legacy),
        vec!["app-1-worker-1", "app-2-worker-1", "goldpinger-worker-1"]
    );
    assert_eq!(
        names(&placed, Network::Cilium),
        names(&removed, Network::Legacy)
    );
    // The agent is host-network: placed again with the node's address.
    assert!(placed.iter().any(|p| p.namespace == "kube-system"
        && p.network.is_none()
        && p.ip.to_string() == "172.18.0.3"));
}

#[tokio::test]
async fn replicaset_status_follows_its_pods() {
    let (server, sim) = cluster(3, 0, options());
    let client = server.client();
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    rss.patch(
        fixtures::APP_REPLICASET,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 8 } })),
    )
    .await
    .unwrap();
    sim.settle().await;
    let s = rss
        .get(fixtures::APP_REPLICASET)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(
        (s.replicas, s.ready_replicas, s.observed_generation),
        (8, Some(8), Some(2))
    );
    rss.patch(
        fixtures::APP_REPLICASET,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 5 } })),
    )
    .await
    .unwrap();
    sim.settle().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let apps = pods
        .list(&ListParams::default().labels("app=app"))
        .await
        .unwrap();
    assert_eq!(apps.items.len(), 5);
    let s = rss
        .get(fixtures::APP_REPLICASET)
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!((s.replicas, s.available_replicas), (5, Some(5)));
}

/// Pods the sim places become lab pods with exactly those addresses, and
/// answer ping there: an app pod evicted from a cordoned worker lands on
/// another worker (legacy), and after the worker's migration (label, agent
/// restart) its DaemonSet pod comes back on Cilium and is reachable from a
/// legacy pod across the overlays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placed_pods_become_lab_pods_that_answer_ping() {
    require_root();
    let lab = Lab::up(&LabSpec {
        name: unique("sim"),
        nodes: 3,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let lab = Arc::new(Mutex::new(lab));
    let server = FakeApiServer::start().unwrap();
    // The fixture plan allocates as the lab does: goldpinger .2, app-1 .3.
    for obj in fixtures::cluster_with_apps(3, 0, 1) {
        server.apply(obj).unwrap();
    }
    let sim = ClusterSim::install(&server, options());
    let errors: Arc<Mutex<Vec<String>>> = Default::default();
    let (l, e) = (lab.clone(), errors.clone());
    sim.on_pod_placed(move |p| {
        let Some(network) = p.network else { return };
        if let Err(err) =
            l.lock()
                .unwrap()
                .add_pod_at(&p.node, &p.name, PodKind::App, network, p.ip)
        {
            e.lock().unwrap().push(format!("placing {p:?}: {err:#}"));
        }
    });
    let (l, e) = (lab.clone(), errors.clone());
    sim.on_pod_removed(move |p| {
        let mut lab = l.lock().unwrap();
        let Some(name) = lab.pod_at(&p.node, p.ip).map(|x| x.name.clone()) else {
            return;
        };
        if let Err(err) = lab.delete_pod(&p.node, &name) {
            e.lock().unwrap().push(format!("removing {p:?}: {err:#}"));
        }
    });
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let from = lab
        .lock()
        .unwrap()
        .pod("control-plane/ds")
        .unwrap()
        .netns
        .clone();
    let ping = |addr: Ipv4Addr| in_ns(&from, &["ping", "-c1", "-W2", "-q", &addr.to_string()]);

    // Drain worker-1's app pod: it comes back on worker-2, legacy.
    cordon(&client, "worker-1", true).await;
    pods.evict("app-1-worker-1", &EvictParams::default())
        .await
        .unwrap();
    sim.settle().await;
    let moved = pod_list(&pods, "app=app", "worker-2").await;
    let moved = moved
        .iter()
        .find(|p| p.metadata.name.as_deref() != Some("app-1-worker-2"))
        .expect("a replacement on worker-2");
    assert!(
        ready(moved) && in_net(moved, "10.244.2.0/24"),
        "{:?}",
        moved.status
    );
    let addr = ip(moved).unwrap();
    {
        let lab = lab.lock().unwrap();
        assert!(
            lab.pod_at("worker-1", "10.244.1.3".parse().unwrap())
                .is_none()
        );
        let lab_pod = lab.pod_at("worker-2", addr).expect("the lab pod");
        assert_eq!(Some(lab_pod.name.as_str()), moved.metadata.name.as_deref());
    }
    ping(addr).unwrap();

    // Migrate worker-1: label, agent restart, DaemonSet pod restart.
    label(&client, "worker-1", true).await;
    restart_agent(&client, &sim, "worker-1").await;
    let gp = pod_of(&pods, "app=goldpinger", "worker-1").await;
    pods.delete(
        gp.metadata.name.as_deref().unwrap(),
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    sim.settle().await;
    cordon(&client, "worker-1", false).await;
    let gp = pod_of(&pods, "app=goldpinger", "worker-1").await;
    assert!(
        ready(&gp) && in_net(&gp, "10.245.1.0/24"),
        "{:?}",
        gp.status
    );
    let addr = ip(&gp).unwrap();
    assert_eq!(
        lab.lock()
            .unwrap()
            .pod_at("worker-1", addr)
            .unwrap()
            .network,
        Network::Cilium
    );
    ping(addr).unwrap();
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    drop(sim);
}
