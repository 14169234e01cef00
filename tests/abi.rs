//! Layout of the kernel ABI: offsets userspace relies on when it reads
//! map values, checked against the C layout the programs were built with.
use std::mem::{align_of, offset_of, size_of};

use observer_ebpf::*;

#[test]
fn flow_key_layout() {
    assert_eq!(size_of::<FlowKey>(), 16);
    assert_eq!(
        [
            offset_of!(FlowKey, src),
            offset_of!(FlowKey, dst),
            offset_of!(FlowKey, src_port),
            offset_of!(FlowKey, dst_port),
            offset_of!(FlowKey, proto),
            offset_of!(FlowKey, point),
            offset_of!(FlowKey, direction),
            offset_of!(FlowKey, _pad),
        ],
        [0, 4, 8, 10, 12, 13, 14, 15]
    );
}

#[test]
fn flow_stats_layout() {
    // 64 bytes: with the kernel's 48-byte element header and the 16-byte
    // key, a FLOWS element is two cache lines.
    assert_eq!((size_of::<FlowStats>(), align_of::<FlowStats>()), (64, 8));
    assert_eq!(
        [
            offset_of!(FlowStats, packets),
            offset_of!(FlowStats, last_seen_ns),
            offset_of!(FlowStats, segments),
            offset_of!(FlowStats, retransmits),
            offset_of!(FlowStats, seq_next),
            offset_of!(FlowStats, peer),
            offset_of!(FlowStats, peer_slot),
            offset_of!(FlowStats, syns),
            offset_of!(FlowStats, rsts),
            offset_of!(FlowStats, tcp_flags),
            offset_of!(FlowStats, src_net),
            offset_of!(FlowStats, overlay),
            offset_of!(FlowStats, marks),
        ],
        [0, 24, 32, 40, 44, 48, 52, 56, 58, 59, 60, 62, 63]
    );
}

/// What FlowStats derives rather than stores: the SNAT address from the
/// key's ends, an echo flow's replies from `segments` and its requests
/// from the rest of its packets.
#[test]
fn flow_stats_derived_values() {
    let key = FlowKey {
        src: 1,
        dst: 2,
        proto: 6,
        src_port: 40000,
        dst_port: 80,
        ..FlowKey::default()
    };
    let marked = |snat, control| FlowStats {
        marks: FlowStats::marks_of(snat, control),
        ..FlowStats::default()
    };
    for (snat, addr) in [(Snat::None, 0), (Snat::Source, 1), (Snat::Destination, 2)] {
        for control in [false, true] {
            let stats = marked(snat, control);
            assert_eq!(Snat::from_wire(stats.snat()), Some(snat));
            assert_eq!(stats.control(), control);
            assert_eq!(stats.snat_addr(&key), addr);
        }
    }

    let tcp = FlowStats {
        packets: 10,
        segments: 7,
        ..FlowStats::default()
    };
    assert_eq!(
        (
            tcp.segments(&key),
            tcp.echo_requests(&key),
            tcp.echo_replies(&key)
        ),
        (7, 0, 0)
    );
    let echo = FlowKey {
        proto: 1,
        src_port: 77,
        dst_port: 0,
        ..key
    };
    assert!(echo.is_echo());
    assert_eq!(
        (
            tcp.segments(&echo),
            tcp.echo_requests(&echo),
            tcp.echo_replies(&echo)
        ),
        (0, 3, 7)
    );
    // Other ICMP carries its type and code in dst_port, never 0.
    let unreachable = FlowKey {
        dst_port: 3 << 8 | 1,
        ..echo
    };
    assert!(!unreachable.is_echo());
    assert_eq!(tcp.echo_replies(&unreachable), 0);
}

#[test]
fn small_struct_layouts() {
    assert_eq!(size_of::<PeerKey>(), 8);
    assert_eq!(
        [
            offset_of!(PeerKey, overlay),
            offset_of!(PeerKey, direction),
            offset_of!(PeerKey, src_net),
            offset_of!(PeerKey, dst_net),
        ],
        [4, 5, 6, 7]
    );
    // The version entry can never be a packet's key, nor give it a slot.
    assert_eq!(PEER_ABI_KEY.peer, 0);
    assert!(Net::from_wire(PEER_ABI_KEY.src_net).is_none());
    assert_eq!(PEER_ABI_VERSION, 3, "2 had 16-byte values, 1 no networks");
    // One cache line per slot and CPU: a packet's update touches one line.
    assert_eq!(size_of::<PeerStats>(), 64);
    assert_eq!(offset_of!(PeerStats, segments), 16);
    assert_eq!(offset_of!(PeerStats, rsts), 32);
    assert_eq!(offset_of!(PeerStats, handshakes_reset), 56);
    assert_eq!(size_of::<PendingHandshake>(), 16);
    assert_eq!(size_of::<AddrInfo>(), 8);
    assert_eq!(offset_of!(AddrInfo, node), 4);
    assert_eq!(size_of::<EncapPort>(), 4);
    assert_eq!(
        size_of::<Config>(),
        4 * MAX_ENCAP_PORTS + 8 + 16 * MAX_BLOCK_RANGES
    );
    assert_eq!(offset_of!(Config, local_node), 32);
    assert_eq!(offset_of!(Config, control_port), 38);
    assert_eq!(offset_of!(Config, block_ranges), 40);
    assert_eq!(size_of::<BlockRange>(), 16);
    assert_eq!(offset_of!(BlockRange, shift), 12);
    // An entry never written (all zeroes) asks the trie.
    assert_eq!(BLOCK_ASK, 0);
    assert_eq!(size_of::<AddrBlock>(), 24);
    assert_eq!(offset_of!(AddrBlock, exact), 16);
    assert_eq!(offset_of!(AddrBlock, state), 20);
    assert_eq!(size_of::<SlotCacheEntry>(), 16);
    assert_eq!(offset_of!(SlotCacheEntry, slot), 8);
}

/// FRAG_NEEDED: a path's key, and its count before the latest message's
/// figures (userspace reads them at these offsets).
#[test]
fn frag_needed_layout() {
    assert_eq!(size_of::<FragKey>(), 8);
    assert_eq!(
        [
            offset_of!(FragKey, overlay),
            offset_of!(FragKey, hop),
            offset_of!(FragKey, _pad),
        ],
        [4, 5, 6]
    );
    assert_eq!((size_of::<FragNeeded>(), align_of::<FragNeeded>()), (16, 8));
    assert_eq!(
        [
            offset_of!(FragNeeded, next_hop_mtu),
            offset_of!(FragNeeded, overhead),
            offset_of!(FragNeeded, refused_len),
            offset_of!(FragNeeded, _pad),
        ],
        [8, 10, 12, 14]
    );
    for hop in MtuHop::ALL {
        assert_eq!(MtuHop::from_wire(hop.wire()), Some(*hop));
    }
    assert_eq!(MtuHop::from_wire(3), None);
    // Every peer of a 2,000-node cluster on both overlays, at two hops: a
    // path's packets are refused on this node, and past it on the wire or
    // on the peer, seldom both (a full map is counted, frag_map_full).
    assert!(DEFAULT_FRAG_CAPACITY as usize >= 2000 * 2 * 2);
}

/// The slot cache's index is inside the map, and the keys of a large
/// cluster spread over it: 1,000 peers, each on two overlays both ways,
/// collide little in 4,096 direct-mapped entries.
#[test]
fn slot_cache_indices_stay_in_the_map_and_spread() {
    let mut used = std::collections::BTreeMap::new();
    for peer in 0..1000u32 {
        for overlay in [Overlay::Legacy, Overlay::Cilium] {
            for direction in [Direction::Egress, Direction::Ingress] {
                let key = PeerKey {
                    peer: u32::from_ne_bytes([
                        192,
                        168,
                        50 + (peer / 250) as u8,
                        (peer % 250) as u8,
                    ]),
                    overlay: overlay.wire(),
                    direction: direction.wire(),
                    src_net: Net::Legacy.wire(),
                    dst_net: Net::Cilium.wire(),
                };
                let index = key.cache_index();
                assert!(index < SLOT_CACHE_ENTRIES);
                *used.entry(index).or_insert(0u32) += 1;
            }
        }
    }
    // 4,000 keys into 4,096 entries: a uniform hash fills about 63%.
    assert!(used.len() > 2300, "{} entries used", used.len());
}

/// Userspace serialises the wire enums by name, and reads back only names
/// it knows.
#[test]
fn wire_enums_serialise_by_name() {
    for net in Net::ALL {
        let json = serde_json::to_string(net).unwrap();
        assert_eq!(json, format!("\"{}\"", net.label()));
        assert_eq!(serde_json::from_str::<Net>(&json).unwrap(), *net);
    }
    let err = serde_json::from_str::<Net>("\"all\"").unwrap_err();
    assert!(err.to_string().contains("unknown variant `all`"), "{err}");
    assert!(
        serde_json::from_str::<Net>("1").is_err(),
        "never by wire value"
    );
}

#[test]
fn wire_enums_round_trip_and_counters_fill_their_map() {
    for counter in Counter::ALL {
        assert_eq!(Counter::from_wire(counter.wire()), Some(*counter));
    }
    assert_eq!(Counter::ALL.len() as u32, COUNTER_SLOTS);
    // Slots are dense: every index below COUNTER_SLOTS names a counter.
    for slot in 0..COUNTER_SLOTS as u8 {
        assert!(
            Counter::from_wire(slot).is_some(),
            "slot {slot} has no counter"
        );
    }
    for net in Net::ALL {
        assert_eq!(Net::from_wire(net.wire()), Some(*net));
    }
    assert_eq!(Net::from_wire(200), None);
    assert_eq!(Net::Unknown.label(), "unknown");
    for net in SLOTTED_NETS {
        assert_ne!(net, Net::Unknown);
    }
    // Slots follow the keys in use: enough for a node of 1,000 peers on
    // two overlays, both ways, with two network pairs each.
    assert!(DEFAULT_PEER_SLOT_CAPACITY as usize >= 1000 * 2 * 2 * 2);
}
