//! Bad cluster shapes and flags are refused with an error naming the field.
use observer::shape::ClusterShape;

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
    let cases = [
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
