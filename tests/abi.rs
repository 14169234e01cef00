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
    assert_eq!((size_of::<FlowStats>(), align_of::<FlowStats>()), (112, 8));
    assert_eq!(offset_of!(FlowStats, packets), 0);
    assert_eq!(offset_of!(FlowStats, last_seen_ns), 24);
    assert_eq!(offset_of!(FlowStats, echo_replies), 80);
    assert_eq!(offset_of!(FlowStats, seq_next), 88);
    assert_eq!(offset_of!(FlowStats, peer), 92);
    assert_eq!(offset_of!(FlowStats, snat_addr), 96);
    assert_eq!(offset_of!(FlowStats, src_net), 100);
    assert_eq!(offset_of!(FlowStats, tcp_flags), 104);
    assert_eq!(offset_of!(FlowStats, _pad), 105);
    assert_eq!(offset_of!(FlowStats, peer_slot), 108);
}

#[test]
fn small_struct_layouts() {
    assert_eq!(size_of::<PeerKey>(), 8);
    assert_eq!(
        (offset_of!(PeerKey, overlay), offset_of!(PeerKey, direction)),
        (4, 5)
    );
    assert_eq!(size_of::<PeerStats>(), 16);
    assert_eq!(size_of::<AddrInfo>(), 8);
    assert_eq!(offset_of!(AddrInfo, node), 4);
    assert_eq!(size_of::<EncapPort>(), 4);
    assert_eq!(size_of::<Config>(), 4 * MAX_ENCAP_PORTS + 8);
    assert_eq!(offset_of!(Config, local_node), 32);
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
}
