//! From flows to connections. The datapath keys a flow by its 5-tuple, the
//! hook point and the direction, so one TCP connection is a dozen flows on
//! a node: both directions at the pod veth, `cilium_host`, the overlay
//! device and the underlay, and after SNAT under another source address
//! and port. This joins them back into one connection between the two
//! endpoints as the initiator addressed them, using this node's conntrack
//! NAT table for what SNAT rewrote.
use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use observer_ebpf::{Direction, Net, Overlay, Point, Snat};
use serde::Serialize;

use crate::{
    conntrack::{NatEntry, Tuple},
    datapath::FlowRecord,
};

const TCP: u8 = 6;

/// A SYN unanswered this long is a failed handshake (the kernel's first
/// SYN retransmission is at 1 s): the same grace the per-peer handshake
/// counters use.
pub const HANDSHAKE_GRACE_NS: u64 = observer_ebpf::HANDSHAKE_GRACE_NS;

/// How far a TCP connection's opening got, as this node saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Handshake {
    /// A SYN went one way and a SYN-ACK came back.
    Answered,
    /// SYNs and no answer for longer than the grace period.
    Unanswered,
    /// Refused with a reset.
    Reset,
    /// SYN seen within the grace period; too early to tell.
    Pending,
    /// The connection predates the flow table: no SYN seen.
    Unseen,
    NotTcp,
}

/// Where SNAT's rewrite of the client came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SnatSeen {
    None,
    /// This node translated it: its conntrack names the original client.
    Translated,
    /// It arrived with a peer node's overlay address as source: SNATed pod
    /// traffic, or that node's own traffic into the overlay. Only the
    /// peer's conntrack tells the two apart.
    Arrived,
}

/// One direction's counts at one hook.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sighting {
    pub point: Point,
    pub direction: Direction,
    /// Client to server (true) or back.
    pub forward: bool,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Connection {
    pub proto: u8,
    /// The initiator, as it addressed the server (before SNAT).
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    pub client_net: Net,
    pub server_net: Net,
    /// The client's address and port after SNAT.
    pub snat: Option<SocketAddrV4>,
    pub snat_seen: SnatSeen,
    /// The overlay carrying it between nodes (none if it never left).
    pub overlay: Overlay,
    pub peer: Option<Ipv4Addr>,
    /// Packets each way, at the hook that saw most of them.
    pub forward_packets: u64,
    pub reverse_packets: u64,
    pub syns: u64,
    pub syn_acks: u64,
    pub rsts: u64,
    pub segments: u64,
    pub retransmits: u64,
    pub handshake: Handshake,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub sightings: Vec<Sighting>,
}

/// (proto, client, server): a connection's name, as the initiator sent it.
pub type ConnKey = (u8, SocketAddrV4, SocketAddrV4);

/// A flow's place in a connection.
#[derive(Clone, Copy)]
struct Role {
    key: ConnKey,
    forward: bool,
    /// The NAT entry that placed it, if any.
    nat: Option<NatEntry>,
}

fn endpoints(t: &Tuple) -> (SocketAddrV4, SocketAddrV4) {
    (
        SocketAddrV4::new(t.src, t.src_port),
        SocketAddrV4::new(t.dst, t.dst_port),
    )
}

/// Every tuple a NAT entry's packets can carry, mapped to its role.
fn nat_index(nat: &[NatEntry]) -> HashMap<ConnKey, Role> {
    let mut index = HashMap::with_capacity(nat.len() * 4);
    for entry in nat {
        let (client, server) = endpoints(&entry.original);
        let (reply_src, reply_dst) = endpoints(&entry.reply);
        let key = (entry.proto, client, server);
        let role = |forward| Role {
            key,
            forward,
            nat: Some(*entry),
        };
        // Before NAT, both ways, and after NAT, both ways.
        index.insert((entry.proto, client, server), role(true));
        index.insert((entry.proto, server, client), role(false));
        index.insert((entry.proto, reply_src, reply_dst), role(false));
        index.insert((entry.proto, reply_dst, reply_src), role(true));
    }
    index
}

fn flow_ends(f: &FlowRecord) -> (SocketAddrV4, SocketAddrV4) {
    (
        SocketAddrV4::new(f.src, f.src_port),
        SocketAddrV4::new(f.dst, f.dst_port),
    )
}

/// [`join`] as of now, with the default handshake grace: what the agent
/// and the tests' fleet both show.
pub fn join_now(flows: &[FlowRecord], nat: &[NatEntry]) -> Vec<Connection> {
    join(
        flows,
        nat,
        crate::datapath::monotonic_ns(),
        HANDSHAKE_GRACE_NS,
    )
}

/// Which connection a flow's tuple belongs to, by one node's NAT table:
/// what [`join`] groups flows by, without decoding them (the ageing sweep
/// gathers just the connections it may age).
pub struct Grouping {
    index: HashMap<ConnKey, Role>,
}

impl Grouping {
    pub fn new(nat: &[NatEntry]) -> Self {
        Grouping {
            index: nat_index(nat),
        }
    }

    /// The connection of a flow from `src` to `dst`: its NAT entry's, or
    /// without one the unordered endpoint pair.
    pub fn key(&self, proto: u8, src: SocketAddrV4, dst: SocketAddrV4) -> ConnKey {
        match self.index.get(&(proto, src, dst)) {
            Some(role) => role.key,
            None if src <= dst => (proto, src, dst),
            None => (proto, dst, src),
        }
    }
}

/// Joins `flows` (one node's snapshot) into connections, with `nat` from
/// the same node. A SYN-only connection older than `grace_ns` at `now_ns`
/// is unanswered.
pub fn join(flows: &[FlowRecord], nat: &[NatEntry], now_ns: u64, grace_ns: u64) -> Vec<Connection> {
    let index = nat_index(nat);
    // Without NAT, a connection's flows share an unordered endpoint pair;
    // which end is the client is decided once all its flows are in.
    let mut groups: BTreeMap<ConnKey, Vec<(usize, Option<Role>)>> = BTreeMap::new();
    for (i, flow) in flows.iter().enumerate() {
        let (src, dst) = flow_ends(flow);
        match index.get(&(flow.proto, src, dst)) {
            Some(role) => groups.entry(role.key).or_default().push((i, Some(*role))),
            None => {
                let pair = if src <= dst { (src, dst) } else { (dst, src) };
                groups
                    .entry((flow.proto, pair.0, pair.1))
                    .or_default()
                    .push((i, None));
            }
        }
    }
    groups
        .into_values()
        .map(|members| build(flows, &members, now_ns, grace_ns))
        .collect()
}

/// The client of a connection nobody translated: the sender of a bare SYN,
/// else of the earliest packet.
fn orient(flows: &[FlowRecord], members: &[(usize, Option<Role>)]) -> (SocketAddrV4, SocketAddrV4) {
    let first = members
        .iter()
        .map(|(i, _)| &flows[*i])
        .min_by_key(|f| {
            let bare_syn = f.syns > 0 && f.syn_acks == 0;
            (!bare_syn, f.first_seen_ns)
        })
        .expect("a group has members");
    flow_ends(first)
}

fn build(
    flows: &[FlowRecord],
    members: &[(usize, Option<Role>)],
    now_ns: u64,
    grace_ns: u64,
) -> Connection {
    let nat = members
        .iter()
        .find_map(|(_, role)| role.and_then(|r| r.nat));
    let (client, server) = match members.iter().find_map(|(_, role)| *role) {
        Some(role) => (role.key.1, role.key.2),
        None => orient(flows, members),
    };
    let mut c = Connection {
        proto: flows[members[0].0].proto,
        client,
        server,
        client_net: Net::Unknown,
        server_net: Net::Unknown,
        snat: None,
        snat_seen: SnatSeen::None,
        overlay: Overlay::None,
        peer: None,
        forward_packets: 0,
        reverse_packets: 0,
        syns: 0,
        syn_acks: 0,
        rsts: 0,
        segments: 0,
        retransmits: 0,
        handshake: Handshake::NotTcp,
        first_seen_ns: u64::MAX,
        last_seen_ns: 0,
        sightings: Vec::with_capacity(members.len()),
    };
    if let Some(entry) = nat.filter(|e| e.src_nat) {
        let (addr, port) = entry.translated_source();
        c.snat = Some(SocketAddrV4::new(addr, port));
        c.snat_seen = SnatSeen::Translated;
    }
    for (i, role) in members {
        let f = &flows[*i];
        let (src, dst) = flow_ends(f);
        let forward = match role {
            Some(role) => role.forward,
            None => src == client,
        };
        // Names of the ends come from flows that carry them untranslated.
        if forward && src == client {
            c.client_net = f.src_net;
            c.server_net = f.dst_net;
        } else if !forward && dst == client {
            c.client_net = f.dst_net;
            c.server_net = f.src_net;
        }
        if f.overlay != Overlay::None {
            c.overlay = f.overlay;
        }
        c.peer = c.peer.or(f.peer);
        if forward {
            c.forward_packets = c.forward_packets.max(f.packets);
            c.syns = c.syns.max(f.syns);
            c.segments = c.segments.max(f.segments);
            c.retransmits = c.retransmits.max(f.retransmits);
        } else {
            c.reverse_packets = c.reverse_packets.max(f.packets);
            c.syn_acks = c.syn_acks.max(f.syn_acks);
        }
        c.rsts = c.rsts.max(f.rsts);
        c.first_seen_ns = c.first_seen_ns.min(f.first_seen_ns);
        c.last_seen_ns = c.last_seen_ns.max(f.last_seen_ns);
        c.sightings.push(Sighting {
            point: f.point,
            direction: f.direction,
            forward,
            src,
            dst,
            packets: f.packets,
            bytes: f.bytes,
        });
    }
    // The node's own traffic translated before any hook saw it (AWS VPC
    // CNI's SNAT of host traffic leaving the VPC): no flow carries the
    // client untranslated, and the translated source, a node address of
    // this node, names its network as well.
    if c.client_net == Net::Unknown
        && let Some(snat) = c.snat
        && let Some(f) = members
            .iter()
            .map(|(i, _)| &flows[*i])
            .find(|f| flow_ends(f).0 == snat && f.src_net == Net::Host)
    {
        c.client_net = f.src_net;
        c.server_net = f.dst_net;
    }
    // Arrived from another node with a node overlay address as source:
    // translated there. (Sent from here with that source, it is this
    // node's own host traffic, which no conntrack entry rewrote.)
    let arrived = members.iter().map(|(i, _)| &flows[*i]).find(|f| {
        f.snat == Snat::Source
            && f.src == *client.ip()
            && f.direction == Direction::Ingress
            && matches!(f.point, Point::Underlay | Point::Overlay)
    });
    if let (SnatSeen::None, Some(f)) = (c.snat_seen, arrived) {
        c.snat = Some(client);
        c.snat_seen = SnatSeen::Arrived;
        c.client_net = f.src_net;
    }
    c.handshake = handshake(&c, now_ns, grace_ns);
    c.sightings
        .sort_by_key(|s| (!s.forward, s.point, s.direction));
    c
}

fn handshake(c: &Connection, now_ns: u64, grace_ns: u64) -> Handshake {
    if c.proto != TCP {
        Handshake::NotTcp
    } else if c.syn_acks > 0 {
        Handshake::Answered
    } else if c.syns == 0 {
        Handshake::Unseen
    } else if c.rsts > 0 {
        Handshake::Reset
    } else if now_ns.saturating_sub(c.first_seen_ns) < grace_ns {
        Handshake::Pending
    } else {
        Handshake::Unanswered
    }
}
