//! Turning one parsed packet into flow counters.
//!
//! The known-flow path is one hash lookup and a few atomic adds. The
//! classification (two LPM lookups) runs only when a flow is first seen and
//! is stored with it.
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key};
use observer_ebpf::{
    AddrInfo, AddrKind, Counter, Direction, FlowKey, FlowStats, NO_PEER_SLOT, Net, Overlay,
    PeerKey, Point, Snat, answering_block, tcp_flag,
};

use crate::{
    counters::{Tcp, count, count_peer, count_slot, count_unslotted, peer_slot},
    handshake,
    maps::{ADDR_BLOCKS, ADDRS, CLOCK, CONFIG, FLOWS},
    parse::{
        ipv4::Ipv4,
        l4::{Echo, IPPROTO_TCP, L4},
    },
};

const BPF_NOEXIST: u64 = 1;
/// How often (in packets) a flow without a peer slot looks for one.
const SLOT_RECHECK: u64 = 64;
const EEXIST: i32 = 17;

/// Where and how a packet was seen.
#[derive(Clone, Copy)]
pub struct Seen {
    pub point: Point,
    pub direction: Direction,
    pub overlay: Overlay,
    /// The other end of the tunnel for encapsulated packets, else 0.
    pub outer_peer: u32,
}

/// Counts `ip`/`l4` into its flow and, on the underlay, into its peer's
/// counters. On the underlay, plain traffic that is neither pod traffic nor
/// node to node is left out (and counted as such): the flow table is for the
/// cluster, not for every SSH session to a node. On `Err` the peer was not
/// counted, except for [`Counter::FlowMapFull`]: the packet was classified
/// and its peer counted with its networks, as its peer node counts it. The
/// caller counts the others for encapsulated packets.
#[inline(always)]
pub fn record(seen: Seen, ip: &Ipv4, l4: &L4, frame_len: u32) -> Result<(), Counter> {
    let key = FlowKey {
        src: ip.src,
        dst: ip.dst,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
        proto: ip.proto,
        point: seen.point.wire(),
        direction: seen.direction.wire(),
        _pad: 0,
    };
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        let now = userspace_clock();
        // SAFETY: values of a preallocated hash map stay valid for the
        // program's run; concurrent writers only race on fields that are
        // updated atomically or are idempotent.
        let (class, mut slot, tcp, packets) = unsafe {
            let tcp = update(stats, ip, l4, now);
            (
                Class::of(&*stats),
                (*stats).peer_slot,
                judged(seen, (*stats).control(), tcp),
                (*stats).packets,
            )
        };
        if slot == NO_PEER_SLOT && packets % SLOT_RECHECK == 0 {
            // Userspace hands out slots to the keys it finds counted in
            // PEERS (a sample after their first packet): a busy flow takes
            // its slot within a few dozen packets and stops paying for the
            // hash; one whose key never gets a slot (a peer outside the
            // shape) pays the extra lookup once in SLOT_RECHECK packets.
            if let Some(peer) = underlay_peer(seen, class) {
                let promoted = peer_slot(&peer);
                if promoted != 0 {
                    // SAFETY: as above; every writer stores the same slot.
                    unsafe { (*stats).peer_slot = promoted };
                    slot = promoted;
                }
            }
        }
        count_underlay(seen, class, slot, frame_len, tcp);
        track_handshake(seen, class, &key, tcp, None);
        return Ok(());
    }

    let now = kernel_clock();
    let mut fresh = classify(seen, ip, l4)?;
    fresh.first_seen_ns = now;
    fresh.last_seen_ns = now;
    let class = Class::of(&fresh);
    fresh.peer_slot = underlay_peer(seen, class).map_or(0, |key| match peer_slot(&key) {
        0 => NO_PEER_SLOT,
        slot => slot,
    });
    let slot = fresh.peer_slot;
    let control = fresh.control();
    let mut tcp = apply_first(&mut fresh, ip, l4);
    match FLOWS.insert(key, fresh, BPF_NOEXIST) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {
            // Another CPU created the flow first; join it.
            if let Some(stats) = FLOWS.get_ptr_mut(key) {
                // SAFETY: as above.
                tcp = unsafe { update(stats, ip, l4, now) };
            }
        }
        Err(_) => {
            // The peer node counts this packet with its networks (its own
            // table may have room): so does this one, the long way. With
            // no flow to remember them, its TCP events are taken as those
            // of a first packet.
            count_underlay(seen, class, 0, frame_len, judged(seen, control, tcp));
            return Err(Counter::FlowMapFull);
        }
    }
    let tcp = judged(seen, control, tcp);
    count_underlay(seen, class, slot, frame_len, tcp);
    // The flow's first_seen is the kernel clock: the handshake tracker
    // times its SYN with the same reading instead of a second helper call.
    track_handshake(seen, class, &key, tcp, Some(now));
    Ok(())
}

/// The TCP events the peer counters take from a packet: none for
/// crossover's own control traffic (counted as [`Counter::Control`] where
/// they would have been, on the underlay), so the gate never judges the
/// connections its own readings make.
#[inline(always)]
fn judged(seen: Seen, control: bool, tcp: Tcp) -> Tcp {
    if !control {
        return tcp;
    }
    if seen.point == Point::Underlay {
        count(Counter::Control);
    }
    Tcp::default()
}

#[inline(always)]
pub(crate) fn kernel_clock() -> u64 {
    // SAFETY: the coarse clock helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The time userspace last wrote into CLOCK (at most a sample interval
/// old), for a known flow's last sighting; the kernel clock while
/// userspace has written none.
#[inline(always)]
fn userspace_clock() -> u64 {
    match CLOCK.get(0) {
        Some(&now) if now != 0 => now,
        _ => kernel_clock(),
    }
}

/// On the underlay, where a handshake's SYN leaves and its answer comes
/// back: a first SYN out opens a pending handshake under its flow's key;
/// a SYN-ACK or RST in closes the one its reverse flow opened, and counts
/// its outcome towards the client's peer. Only handshake packets pay, and
/// they pay a call: the tracker is a global function ([`handshake`]),
/// which the verifier checks once. `kernel_now` is the kernel clock when
/// the caller has read it already.
#[inline(always)]
fn track_handshake(seen: Seen, class: Class, key: &FlowKey, tcp: Tcp, kernel_now: Option<u64>) {
    let events = tcp.0;
    if events & (Tcp::SYN | Tcp::SYN_ACK | Tcp::RST) == 0 || seen.point != Point::Underlay {
        return;
    }
    let peer = if seen.direction == Direction::Egress {
        if events & Tcp::SYN == 0 || events & Tcp::SYN_RETRANSMIT != 0 {
            return;
        }
        let Some(peer) = underlay_peer(seen, class) else {
            return;
        };
        peer
    } else {
        if events & (Tcp::SYN_ACK | Tcp::RST) == 0 {
            return;
        }
        PeerKey::default()
    };
    let [addrs, rest] = handshake::key_words(key);
    handshake::crossover_track_handshake(
        addrs,
        rest,
        handshake::peer_word(&peer),
        kernel_now.unwrap_or(0),
        (events & Tcp::SYN_ACK != 0) as u64,
    );
}

/// What of a flow's classification its peer counters are keyed by.
#[derive(Clone, Copy)]
struct Class {
    peer: u32,
    overlay: u8,
    src_net: u8,
    dst_net: u8,
}

impl Class {
    #[inline(always)]
    fn of(stats: &FlowStats) -> Self {
        Class {
            peer: stats.peer,
            overlay: stats.overlay,
            src_net: stats.src_net,
            dst_net: stats.dst_net,
        }
    }
}

/// Whom an underlay packet of a flow of this class is sent to or received
/// from: the tunnel's other end, or for unencapsulated pod traffic the node
/// owning the remote range.
#[inline(always)]
fn underlay_peer(seen: Seen, class: Class) -> Option<PeerKey> {
    let peer = if seen.point != Point::Underlay {
        return None;
    } else if seen.outer_peer != 0 {
        seen.outer_peer
    } else if class.overlay == Overlay::Native.wire() && class.peer != 0 {
        class.peer
    } else {
        return None;
    };
    Some(PeerKey {
        peer,
        overlay: if seen.outer_peer != 0 {
            seen.overlay.wire()
        } else {
            class.overlay
        },
        direction: seen.direction.wire(),
        src_net: class.src_net,
        dst_net: class.dst_net,
    })
}

/// Counts an underlay packet towards its peer: through the slot the flow
/// remembered when this packet's peer is the flow's, the long way otherwise.
#[inline(always)]
fn count_underlay(seen: Seen, class: Class, slot: u32, frame_len: u32, tcp: Tcp) {
    let Some(key) = underlay_peer(seen, class) else {
        return;
    };
    if slot == 0 || key.peer != class.peer || key.overlay != class.overlay {
        count_peer(&key, frame_len, tcp);
    } else if slot == NO_PEER_SLOT {
        count_unslotted(&key, frame_len, tcp);
    } else {
        count_slot(slot, frame_len, tcp);
    }
}

/// What the cluster knows of `addr`; all zeroes (external, no node, not
/// an overlay address) when nothing. A plain value rather than an
/// `Option`: the `None` of an `Option<AddrInfo>` leaves its payload
/// undefined, and LLVM may spill that undefined register, which the
/// verifier refuses (`!read_ok`).
///
/// Pod addresses are answered from ADDR_BLOCKS (arithmetic and an array
/// read the verifier inlines); the LPM trie, whose cost grows with the
/// cluster (about 100 ns a lookup at 1,000 nodes), answers the rest.
#[inline(always)]
pub(crate) fn lookup(addr: u32) -> AddrInfo {
    let mut info = AddrInfo {
        net: Net::External.wire(),
        kind: u8::MAX,
        _pad: [0; 2],
        node: 0,
    };
    if block_answer(addr, &mut info) {
        return info;
    }
    ADDRS.get(Key::new(32, addr)).copied().unwrap_or(info)
}

/// ADDR_BLOCKS's answer for `addr` into `out`; false when `addr` is in no
/// block range or its block leaves it to ADDRS.
#[inline(always)]
fn block_answer(addr: u32, out: &mut AddrInfo) -> bool {
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    let host = u32::from_be(addr);
    match answering_block(&config.block_ranges, host, |index| ADDR_BLOCKS.get(index)) {
        Some(block) => {
            *out = block.info_for(host);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn is_node_overlay(info: &AddrInfo) -> bool {
    info.kind == AddrKind::NodeOverlay.wire()
}

#[inline(always)]
pub(crate) fn node_of(info: &AddrInfo, local: u32) -> u32 {
    match info.node {
        node if node != local => node,
        _ => 0,
    }
}

/// A new flow's classification: networks, overlay, peer node and SNAT.
#[inline(always)]
fn classify(seen: Seen, ip: &Ipv4, l4: &L4) -> Result<FlowStats, Counter> {
    let src = lookup(ip.src);
    let dst = lookup(ip.dst);
    let (src_net, dst_net) = (src.net, dst.net);
    let mut overlay = seen.overlay;
    if seen.point == Point::Underlay && seen.outer_peer == 0 {
        let pod = |net: u8| net == Net::Legacy.wire() || net == Net::Cilium.wire();
        let host = Net::Host.wire();
        if !pod(src_net) && !pod(dst_net) {
            // Node to node traffic is the cluster's but on no overlay; a
            // node talking to the outside world is not ours to track.
            if src_net != host || dst_net != host {
                return Err(Counter::NotCluster);
            }
            overlay = Overlay::None;
        }
    }
    let (local, control_port) = CONFIG
        .get(0)
        .map_or((0, 0), |config| (config.local_node, config.control_port));
    let control = control_port != 0
        && ip.proto == IPPROTO_TCP
        && (l4.src_port == control_port || l4.dst_port == control_port);
    let peer = match seen.outer_peer {
        0 => match node_of(&dst, local) {
            0 => node_of(&src, local),
            node => node,
        },
        outer => outer,
    };
    // The SNAT address is the key's end this names (FlowStats::snat_addr).
    let snat = if is_node_overlay(&src) {
        Snat::Source
    } else if is_node_overlay(&dst) {
        Snat::Destination
    } else {
        Snat::None
    };
    Ok(FlowStats {
        peer,
        src_net,
        dst_net,
        overlay: overlay.wire(),
        marks: FlowStats::marks_of(snat, control),
        ..FlowStats::default()
    })
}

/// Counts the first packet into a flow nobody else can see yet; returns its
/// TCP events for the peer counters.
#[inline(always)]
fn apply_first(stats: &mut FlowStats, ip: &Ipv4, l4: &L4) -> Tcp {
    let mut tcp = Tcp::of_flags(l4.tcp_flags);
    stats.packets = 1;
    stats.bytes = ip.total_len as u64;
    stats.tcp_flags = l4.tcp_flags;
    stats.syns = is_syn(l4) as u8;
    stats.syn_acks = is_syn_ack(l4) as u8;
    stats.rsts = (l4.tcp_flags & tcp_flag::RST != 0) as u8;
    // An echo flow's replies go where a TCP flow's segments do; its
    // requests are the rest of its packets (FlowStats::echo_requests).
    stats.segments = (l4.echo == Echo::Reply) as u64;
    if l4.seq_len != 0 {
        stats.segments = 1;
        stats.seq_next = l4.seq.wrapping_add(l4.seq_len);
        tcp.0 |= Tcp::SEGMENT;
    }
    tcp
}

/// Counts a packet into an existing flow; returns its TCP events for the
/// peer counters.
///
/// # Safety
/// `stats` must point into the FLOWS map.
#[inline(always)]
unsafe fn update(stats: *mut FlowStats, ip: &Ipv4, l4: &L4, now: u64) -> Tcp {
    let mut tcp = Tcp::default();
    // SAFETY: `stats` points into FLOWS (the caller's contract): a live
    // value the kernel keeps while the program runs; counters are added
    // atomically, the rest written as one packet's last sighting.
    unsafe {
        add64(&raw mut (*stats).packets, 1);
        add64(&raw mut (*stats).bytes, ip.total_len as u64);
        // Forward only: a known flow's clock (userspace's, a sample
        // interval coarse) may lag the kernel clock its first packet took.
        if now > (*stats).last_seen_ns {
            (*stats).last_seen_ns = now;
        }
        let flags = l4.tcp_flags;
        if flags != 0 {
            if (*stats).tcp_flags & flags != flags {
                (*stats).tcp_flags |= flags;
            }
            tcp = Tcp::of_flags(flags);
            if is_syn(l4) {
                if (*stats).syns != 0 {
                    tcp.0 |= Tcp::SYN_RETRANSMIT;
                }
                bump(&raw mut (*stats).syns);
            } else if is_syn_ack(l4) {
                bump(&raw mut (*stats).syn_acks);
            }
            if flags & tcp_flag::RST != 0 {
                bump(&raw mut (*stats).rsts);
            }
        }
        if l4.seq_len != 0 {
            let end = l4.seq.wrapping_add(l4.seq_len);
            let segments = (*stats).segments;
            // A segment that does not reach past the highest end seen carries
            // nothing new: a retransmission (or reordering, which loss makes
            // just as visible to the application).
            if segments != 0 && (end.wrapping_sub((*stats).seq_next) as i32) <= 0 {
                add32(&raw mut (*stats).retransmits, 1);
                tcp.0 |= Tcp::RETRANSMIT;
            } else {
                (*stats).seq_next = end;
            }
            add1(&raw mut (*stats).segments);
            tcp.0 |= Tcp::SEGMENT;
        }
        if l4.echo == Echo::Reply {
            add1(&raw mut (*stats).segments);
        }
    }
    tcp
}

#[inline(always)]
fn is_syn(l4: &L4) -> bool {
    l4.tcp_flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN
}

#[inline(always)]
fn is_syn_ack(l4: &L4) -> bool {
    l4.tcp_flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN | tcp_flag::ACK
}

#[inline(always)]
pub(crate) unsafe fn add64(field: *mut u64, value: u64) {
    // The BPF target has no `AtomicU64::fetch_add` in core (it declares
    // only atomic load/store), but the ISA has a 64-bit atomic add, which
    // this intrinsic lowers to (`lock *(u64 *)(r + off) += r`).
    // SAFETY: caller passes a field of a map value, which is 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) };
}

#[inline(always)]
unsafe fn add32(field: *mut u32, value: u32) {
    // SAFETY: as for add64, on a 4-byte aligned field (BPF_W atomic add).
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(field, value) };
}

/// Adds one to a handshake byte, saturating at 255. Not atomic (BPF has
/// no byte-wide atomics): these count a connection's few SYN, SYN-ACK and
/// RST segments, and losing one takes two CPUs counting the same flow's
/// in the same instant.
///
/// # Safety
/// `field` must point into a map value.
#[inline(always)]
unsafe fn bump(field: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe {
        let value = *field;
        *field = value + (value != u8::MAX) as u8;
    }
}

#[inline(always)]
unsafe fn add1(field: *mut u64) {
    // SAFETY: as for add64.
    unsafe { add64(field, 1) };
}
