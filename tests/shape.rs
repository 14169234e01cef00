//! Bad cluster shapes and flags are refused with an error naming the field.
use observer::shape::ClusterShape;
use serde_json::Value;

fn error_of(json: &str) -> String {
    ClusterShape::from_json(json).expect_err(json).to_string()
}

const NET_OK: &str =
    r#"{"role":"legacy","cidrs":["10.244.0.0/16"],"encapsulation":{"vxlan":{"port":8472}}}"#;

#[test]
fn a_valid_shape_round_trips() {
    let json = format!(
        r#"{{"local_node":"n1","networks":[{NET_OK}],"nodes":[{{"name":"n1","underlay":"192.168.1.1","overlay_addrs":["10.244.0.0"],"pod_cidrs":[{{"role":"legacy","cidr":"10.244.0.0/24"}}]}}]}}"#
    );
    let shape = ClusterShape::from_json(&json).unwrap();
    assert_eq!(
        shape.local().unwrap().underlay,
        std::net::Ipv4Addr::new(192, 168, 1, 1)
    );
    // 8472 from the network, 4789 from the default extra ports.
    let ports: Vec<u16> = shape
        .encap_ports()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, vec![8472, 4789]);
    assert_eq!(shape.kernel_addrs().len(), 4);
}

#[test]
fn every_invalid_field_is_named() {
    let cases: [(&str, &str); 20] = [
        ("{", "invalid JSON"),
        (r#"{"networks":[],"bogus":1}"#, "unknown field `bogus`"),
        (
            r#"{"networks":[{"role":"calico","cidrs":[],"encapsulation":"native"}]}"#,
            "unknown variant `calico`",
        ),
        (
            r#"{"networks":[{"role":"legacy","cidrs":["10.244.0.0/33"],"encapsulation":"native"}]}"#,
            "invalid IP address",
        ),
        (
            r#"{"networks":[{"role":"legacy","cidrs":["10.0.0.0/8"],"encapsulation":"native"},{"role":"cilium","cidrs":["10.245.0.0/16"],"encapsulation":"native"}]}"#,
            "networks[1].cidrs (10.245.0.0/16) overlaps networks[0].cidrs (10.0.0.0/8)",
        ),
        (
            r#"{"networks":[{"role":"legacy","cidrs":[],"encapsulation":{"vxlan":{"port":8472}}},{"role":"cilium","cidrs":[],"encapsulation":{"vxlan":{"port":8472}}}]}"#,
            "networks[1].encapsulation: UDP port 8472 is already used by another overlay",
        ),
        (
            r#"{"networks":[{"role":"cilium","cidrs":[],"encapsulation":{"geneve":{"port":0}}}]}"#,
            "networks[0].encapsulation: port 0",
        ),
        (
            r#"{"networks":[],"local_node":"ghost"}"#,
            "local_node \"ghost\" is not in nodes",
        ),
        (
            r#"{"networks":[],"nodes":[{"name":"a","underlay":"1.1.1.1"},{"name":"a","underlay":"1.1.1.2"}]}"#,
            "nodes[1].name \"a\" appears twice",
        ),
        (
            r#"{"networks":[],"nodes":[{"name":"a","underlay":"1.1.1"}]}"#,
            "invalid IPv4 address syntax",
        ),
        (
            r#"{"networks":[],"extra_vxlan_ports":{"1":"legacy","2":"legacy","3":"legacy","4":"legacy","5":"legacy","6":"legacy","7":"legacy","8":"legacy","9":"legacy"}}"#,
            "9 tunnel ports configured, the kernel program knows at most 8",
        ),
        (
            r#"{"networks":[{"role":"legacy","cidrs":["10.244.0.5/16"],"encapsulation":"native"}]}"#,
            "networks[0].cidrs (10.244.0.5/16) has host bits set: write 10.244.0.0/16",
        ),
        (
            r#"{"networks":[],"nodes":[{"name":"a","underlay":"1.1.1.1"},{"name":"b","underlay":"1.1.1.1"}]}"#,
            "nodes[1] (b) and nodes[0] (a) have the same underlay 1.1.1.1",
        ),
        (
            r#"{"networks":[],"nodes":[{"name":"a","underlay":"1.1.1.1"},{"name":"b","underlay":"1.1.1.2","overlay_addrs":["1.1.1.1"]}]}"#,
            "nodes[1].overlay_addrs (1.1.1.1) is nodes[0] (a)'s underlay",
        ),
        (
            &format!(
                r#"{{"networks":[{NET_OK}],"nodes":[{{"name":"a","underlay":"1.1.1.1","pod_cidrs":[{{"role":"legacy","cidr":"10.244.0.0/24"}}]}},{{"name":"b","underlay":"1.1.1.2","pod_cidrs":[{{"role":"legacy","cidr":"10.244.0.128/25"}}]}}]}}"#
            ),
            "nodes[1].pod_cidrs[0] (b, 10.244.0.128/25) overlaps nodes[0].pod_cidrs[0] (a, 10.244.0.0/24)",
        ),
        (
            &format!(
                r#"{{"networks":[{NET_OK}],"nodes":[{{"name":"a","underlay":"1.1.1.1","pod_cidrs":[{{"role":"legacy","cidr":"10.99.0.0/24"}}]}}]}}"#
            ),
            "nodes[0].pod_cidrs[0] (a, 10.99.0.0/24) lies outside every Legacy network (10.244.0.0/16)",
        ),
        (
            &format!(
                r#"{{"networks":[{NET_OK}],"nodes":[{{"name":"a","underlay":"1.1.1.1","pod_cidrs":[{{"role":"legacy","cidr":"10.244.3.7/24"}}]}}]}}"#
            ),
            "nodes[0].pod_cidrs[0] (a, 10.244.3.7/24) has host bits set: write 10.244.3.0/24",
        ),
        (
            r#"{"networks":[{"role":"legacy","cidrs":[],"encapsulation":"ipip"},{"role":"cilium","cidrs":[],"encapsulation":"ipip"}]}"#,
            "networks[1].encapsulation: IP-in-IP is already used by networks[0] (Legacy)",
        ),
        (
            r#"{"networks":[{"role":"legacy","cidrs":[],"encapsulation":"native","cross_subnet":true}]}"#,
            "networks[0].cross_subnet: a native network has no tunnel to use across subnets",
        ),
        (
            r#"{"networks":[],"interfaces":[{"pattern":"gke*","hook":"pods"}]}"#,
            "unknown hook \"pods\"",
        ),
    ];
    for (json, expected) in cases {
        let err = error_of(json);
        assert!(
            err.contains(expected),
            "for {json}\n  got: {err}\n  want: {expected}"
        );
        assert!(err.starts_with("cluster shape: "), "{err}");
    }
}

#[test]
fn an_aws_style_network_is_made_of_its_nodes_shares() {
    // AWS VPC CNI: pods in the nodes' subnet, no cluster-wide pod range;
    // each pod a /32 share of its node, routed natively.
    let json = r#"{"networks":[{"role":"legacy","cidrs":[],"encapsulation":"native"}],"nodes":[
        {"name":"a","underlay":"172.31.0.10","pod_cidrs":[{"role":"legacy","cidr":"172.31.0.23/32"},{"role":"legacy","cidr":"172.31.0.24/32"}]},
        {"name":"b","underlay":"172.31.0.11","pod_cidrs":[{"role":"legacy","cidr":"172.31.0.31/32"}]}]}"#;
    let shape = ClusterShape::from_json(json).unwrap();
    assert_eq!(shape.kernel_addrs().len(), 5);
    let err = ClusterShape::from_json(&json.replace("172.31.0.31/32", "172.31.0.23/32"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nodes[1].pod_cidrs[0] (b, 172.31.0.23/32) overlaps nodes[0].pod_cidrs[0] (a, 172.31.0.23/32)"), "{err}");
}

#[test]
fn the_address_table_is_sized_from_the_shape() {
    let nodes: Vec<String> = (0..10_000u32)
        .map(|i| {
            format!(
                r#"{{"name":"n{i}","underlay":"172.16.{}.{}","overlay_addrs":["10.{}.{}.1"],"pod_cidrs":[{{"role":"legacy","cidr":"10.{}.{}.0/24"}}]}}"#,
                i / 250,
                i % 250 + 1,
                64 + i / 256,
                i % 256,
                64 + i / 256,
                i % 256,
            )
        })
        .collect();
    let json = format!(
        r#"{{"networks":[{{"role":"legacy","cidrs":["10.64.0.0/10"],"encapsulation":"native"}}],"nodes":[{}]}}"#,
        nodes.join(",")
    );
    let shape = ClusterShape::from_json(&json).unwrap();
    assert_eq!(shape.kernel_addrs().len(), 30_001);
    assert_eq!(shape.addr_capacity(None).unwrap(), 60_002, "room to double");
    assert_eq!(shape.addr_capacity(Some(40_000)).unwrap(), 40_000);
    let err = shape.addr_capacity(Some(16_384)).unwrap_err().to_string();
    assert!(
        err.contains("--addr-capacity 16384 is below the 30001 address ranges this shape needs"),
        "{err}"
    );
    let small = ClusterShape::from_json(r#"{"networks":[]}"#).unwrap();
    assert_eq!(
        small.addr_capacity(None).unwrap(),
        16_384,
        "at least the default"
    );
}

/// Calico's IPPools and BlockAffinities served by the fake API server, read
/// by the agent's watches (`Cluster`) as dynamic objects: the legacy
/// network's range and VXLAN CrossSubnet encapsulation from the pool, each
/// node's share from its blocks, every value's source; a bad pool and a bad
/// block are named with their field and left out, the rest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calico_pools_and_blocks_from_the_api_make_the_shape() {
    use crossover_tests::apiserver::{
        FakeApiServer, Gvr, ResourceKind,
        fixtures::{NodeBuilder, calico_object},
    };
    use observer::cluster::{Cluster, ClusterOptions, derive::ShapeOverrides};
    use serde_json::json;

    let server = FakeApiServer::start().unwrap();
    for (plural, kind) in [("ippools", "IPPool"), ("blockaffinities", "BlockAffinity")] {
        server.register(ResourceKind::new(
            Gvr::new("crd.projectcalico.org", "v1", plural),
            kind,
            false,
        ));
    }
    for (j, name) in ["control-plane", "worker-1"].iter().enumerate() {
        let ip = format!("172.18.{j}.{}", j + 2);
        let node = NodeBuilder::new(name)
            .internal_ip(&ip)
            .annotation("projectcalico.org/IPv4Address", &format!("{ip}/24"))
            .annotation(
                "projectcalico.org/IPv4VXLANTunnelAddr",
                &format!("10.244.{}.0", j * 64),
            )
            .value();
        server.apply(node).unwrap();
    }
    let objects = [
        calico_object(
            "IPPool",
            "default-ipv4-ippool",
            json!({"cidr": "10.244.0.0/16", "vxlanMode": "CrossSubnet", "ipipMode": "Never", "natOutgoing": true}),
        ),
        calico_object(
            "IPPool",
            "typo",
            json!({"cidr": "10.250.0.0/16", "vxlanMode": "crosssubnet"}),
        ),
        calico_object(
            "BlockAffinity",
            "control-plane-10-244-0-0-26",
            json!({"cidr": "10.244.0.0/26", "node": "control-plane", "state": "confirmed", "deleted": "false"}),
        ),
        calico_object(
            "BlockAffinity",
            "worker-1-10-244-0-64-26",
            json!({"cidr": "10.244.0.64/26", "node": "worker-1", "state": "confirmed", "deleted": "false"}),
        ),
        calico_object(
            "BlockAffinity",
            "worker-1-pending",
            json!({"cidr": "10.244.0.128/26", "node": "worker-1", "state": "pending", "deleted": "false"}),
        ),
        calico_object("BlockAffinity", "orphan", json!({"cidr": "10.244.1.0/26"})),
    ];
    for object in objects {
        server.apply(object).unwrap();
    }
    let kubeconfig = std::env::temp_dir().join(format!(
        "crossover-calico-shape-{}.yaml",
        std::process::id()
    ));
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let cluster = Cluster::start(ClusterOptions {
        kubeconfig: Some(kubeconfig.clone()),
        node_name: "control-plane".into(),
        cilium_namespace: "kube-system".into(),
        agent_namespace: "crossover".into(),
        agent_selector: "app=crossover-agent".into(),
        probe_selector: "app=crossover-probe".into(),
        migration_name: "crossover".into(),
        overrides: ShapeOverrides::default(),
    })
    .await
    .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(20), cluster.wait_synced())
        .await
        .expect("watches synced");
    let health = cluster.health();
    assert!(
        health["ippools"].synced && health["blockaffinities"].synced,
        "{health:?}"
    );
    let derived = cluster.derive();
    let _ = std::fs::remove_file(&kubeconfig);
    let shape = serde_json::to_value(&derived.shape).unwrap();
    assert_eq!(
        shape["networks"][0],
        json!({
            "role": "legacy",
            "cidrs": ["10.244.0.0/16"],
            "encapsulation": {"vxlan": {"port": 4789}},
            "cross_subnet": true,
        }),
        "{shape:#}"
    );
    assert_eq!(shape["networks"].as_array().unwrap().len(), 2, "{shape:#}");
    let shares: Vec<(&str, &Value)> = shape["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), &n["pod_cidrs"]))
        .collect();
    assert_eq!(
        shares,
        [
            (
                "control-plane",
                &json!([{"role": "legacy", "cidr": "10.244.0.0/26"}])
            ),
            (
                "worker-1",
                &json!([{"role": "legacy", "cidr": "10.244.0.64/26"}])
            ),
        ]
    );
    let sources: Vec<(String, String)> = derived
        .sources
        .iter()
        .map(|s| (s.field.to_string(), s.from.clone()))
        .collect();
    for want in [
        ("legacy.cidrs", "IPPools' spec.cidr (default-ipv4-ippool)"),
        (
            "legacy.encapsulation",
            "IPPool default-ipv4-ippool spec.vxlanMode=CrossSubnet",
        ),
        (
            "nodes[].pod_cidrs (legacy)",
            "BlockAffinities' spec.cidr by spec.node (confirmed); 1 pending, deleted or IPv6 left out",
        ),
    ] {
        assert!(
            sources.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {sources:?}"
        );
    }
    for want in [
        "IPPool \"typo\" spec.vxlanMode: \"crosssubnet\" is not Always, CrossSubnet or Never; that pool is left out",
        "BlockAffinity \"orphan\" spec.node: missing; that block is left out",
    ] {
        assert!(
            derived.warnings.iter().any(|w| w == want),
            "{want} in {:?}",
            derived.warnings
        );
    }
    derived.shape.validate().unwrap();
}

/// A CrossSubnet network's peers are on its tunnel's overlay or on
/// `native`: both get PEER_STATS slots (`peer_overlays`); without the flag
/// a VXLAN network's pairs are only on its tunnel's overlay.
#[test]
fn a_cross_subnet_network_reaches_peers_on_its_tunnel_and_natively() {
    use observer_ebpf::Overlay;
    let json = |cross: bool| {
        format!(
            r#"{{"networks":[{{"role":"legacy","cidrs":["10.244.0.0/16"],"encapsulation":{{"vxlan":{{"port":4789}}}},"cross_subnet":{cross}}}],"extra_vxlan_ports":{{}}}}"#
        )
    };
    let overlays = |cross: bool| {
        ClusterShape::from_json(&json(cross))
            .unwrap()
            .peer_overlays()
            .unwrap()
    };
    assert_eq!(overlays(true), [Overlay::Legacy, Overlay::Native]);
    assert_eq!(overlays(false), [Overlay::Legacy]);
}

#[test]
fn listed_pods_are_32s_of_their_node_and_checked() {
    // The AWS VPC CNI's network: no ranges, each pod listed.
    let json = r#"{"networks":[{"role":"legacy","cidrs":[],"encapsulation":"native"},
        {"role":"cilium","cidrs":["10.245.0.0/16"],"encapsulation":{"vxlan":{"port":8473}}}],
        "nodes":[{"name":"a","underlay":"172.31.0.10"},{"name":"b","underlay":"172.31.0.11"}],
        "pods":[{"addr":"172.31.5.23","node":"a","role":"legacy"},{"addr":"172.31.9.40","node":"b","role":"legacy"}]}"#;
    let shape = ClusterShape::from_json(json).unwrap();
    assert_eq!(shape.rangeless_role(), Some(observer::shape::Role::Legacy));
    let entries: Vec<(String, u8, std::net::Ipv4Addr)> = shape
        .pod_entries()
        .into_iter()
        .map(|(net, info)| {
            (
                net.to_string(),
                info.net,
                observer::shape::addr_from_wire(info.node),
            )
        })
        .collect();
    let legacy = observer_ebpf::Net::Legacy.wire();
    assert_eq!(
        entries,
        vec![
            (
                "172.31.5.23/32".into(),
                legacy,
                "172.31.0.10".parse().unwrap()
            ),
            (
                "172.31.9.40/32".into(),
                legacy,
                "172.31.0.11".parse().unwrap()
            ),
        ]
    );
    // Kept apart from the ranges, which the kernel takes all or none.
    assert!(
        shape
            .kernel_addrs()
            .iter()
            .all(|(net, _)| net.prefix_len() < 32
                || !["172.31.5.23", "172.31.9.40"].contains(&net.addr().to_string().as_str()))
    );
    assert!(shape.without_pods().pods.is_empty());

    let second = r#"{"addr":"172.31.9.40","node":"b","role":"legacy"}"#;
    for (bad, want) in [
        (
            r#"{"addr":"172.31.9.40","node":"c","role":"legacy"}"#,
            "pods[1] (172.31.9.40, c): the node is not in nodes",
        ),
        (
            r#"{"addr":"172.31.5.23","node":"b","role":"legacy"}"#,
            "pods[1] (172.31.5.23, b): the address is listed twice",
        ),
        (
            r#"{"addr":"172.31.0.10","node":"b","role":"legacy"}"#,
            "pods[1] (172.31.0.10, b): the address is a node's own",
        ),
        (
            r#"{"addr":"10.245.3.4","node":"b","role":"legacy"}"#,
            "pods[1] (10.245.3.4, b): a Legacy pod inside a Cilium range",
        ),
    ] {
        let err = error_of(&json.replace(second, bad));
        assert!(err.contains(want), "{err}");
    }
}
