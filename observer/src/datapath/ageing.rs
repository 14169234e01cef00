//! Flow ageing: FLOWS is a bounded hash the kernel only inserts into, so
//! without a sweep it fills up and new flows go uncounted (counted as
//! `flow_map_full`). The sweep deletes connections idle for longer than
//! their protocol and state allow, and folds what their flows counted into
//! [`Retired`], so totals the metrics derive by summing flows never go
//! backwards.
//!
//! A connection is aged as a whole (every flow of it, at every hook and
//! both directions, joined across SNAT with the NAT table the caller
//! passes), so its live and retired parts are never both counted.
//!
//! Race with the datapath: an entry is removed with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which returns its value at removal.
//! If that value's `last_seen_ns` differs from the one the decision was
//! made on, a packet arrived in between: the connection's removed flows
//! are put back (`BPF_NOEXIST`) and it stays. A flow a new packet
//! re-created in that instant cannot be put back; its removed counts are
//! retired on their own ([`AgedSummary::raced`]).
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd,
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHash, IterableMap, MapData},
};
use observer_ebpf::{FlowKey, FlowStats, Net, Snat, map, tcp_flag};
use serde::Serialize;

use super::{FlowRecord, map_mut, snapshot::for_each_flow, sys};
use crate::duration::parse_duration_or_zero;
use crate::{
    Error, Result,
    connections::{self, Connection},
    conntrack::NatEntry,
    shape::{addr_from_wire, wire_addr},
};

const TCP: u8 = 6;
const BPF_NOEXIST: u64 = 1;

/// How long a connection may stay silent before it is aged.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct AgeingPolicy {
    /// How long an established TCP connection's flows may stay idle before
    /// they are aged (10m, 600, 1h).
    #[arg(long = "flow-idle-tcp", value_parser = parse_duration_or_zero, default_value = "10m")]
    pub tcp_established: Duration,
    /// The same for TCP once a FIN or RST was seen.
    #[arg(long = "flow-idle-closed", value_parser = parse_duration_or_zero, default_value = "30s")]
    pub tcp_closed: Duration,
    /// The same for UDP, ICMP and anything else.
    #[arg(long = "flow-idle-other", value_parser = parse_duration_or_zero, default_value = "2m")]
    pub other: Duration,
    /// Time between sweeps; 0 never ages flows. A full flow table (new
    /// flows refused) brings the next sweep forward, to at most one every
    /// 5 s.
    #[arg(long = "flow-sweep-interval", value_parser = parse_duration_or_zero, default_value = "30s")]
    pub interval: Duration,
}

impl Default for AgeingPolicy {
    fn default() -> Self {
        AgeingPolicy {
            tcp_established: Duration::from_secs(600),
            tcp_closed: Duration::from_secs(30),
            other: Duration::from_secs(120),
            interval: Duration::from_secs(30),
        }
    }
}

impl AgeingPolicy {
    fn idle_limit(&self, proto: u8, closed: bool) -> Duration {
        match (proto, closed) {
            (TCP, true) => self.tcp_closed,
            (TCP, false) => self.tcp_established,
            _ => self.other,
        }
    }

    /// The shortest idle limit: a flow seen more recently than this
    /// belongs to no connection a sweep could age.
    fn shortest(&self) -> Duration {
        self.tcp_closed.min(self.tcp_established).min(self.other)
    }
}

/// The flow table counted by class at the last sweep: what `/metrics`
/// shows of it without reading it again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowCensus {
    /// CLOCK_MONOTONIC of the sweep's read.
    pub taken_ns: u64,
    pub total: u64,
    /// Flows by source network, destination network and SNAT mark.
    pub flows: BTreeMap<(Net, Net, Snat), u64>,
}

impl FlowCensus {
    fn new(taken_ns: u64) -> Self {
        FlowCensus {
            taken_ns,
            ..FlowCensus::default()
        }
    }

    fn add(&mut self, v: &FlowStats) {
        let class = (
            Net::from_wire(v.src_net).unwrap_or(Net::Unknown),
            Net::from_wire(v.dst_net).unwrap_or(Net::Unknown),
            Snat::from_wire(v.snat()).unwrap_or(Snat::None),
        );
        *self.flows.entry(class).or_default() += 1;
        self.total += 1;
    }
}

/// What one sweep did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgedSummary {
    /// Flows deleted from FLOWS.
    pub flows: u64,
    pub connections: u64,
    /// Connections found active while being deleted, and put back.
    pub woke: u64,
    /// Flows re-created by a packet between delete and put-back; their
    /// removed counts were retired on their own.
    pub raced: u64,
    pub took_ns: u64,
}

/// Totals of aged connections, grouped the way the metrics group live
/// ones: protocol, peer node, client and server network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RetiredTotals {
    pub connections: u64,
    pub forward_packets: u64,
    pub reverse_packets: u64,
    pub syns: u64,
    pub syn_acks: u64,
    pub rsts: u64,
    pub segments: u64,
    pub retransmits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetiredGroup {
    pub proto: u8,
    pub peer: Option<Ipv4Addr>,
    pub client_net: Net,
    pub server_net: Net,
    #[serde(flatten)]
    pub totals: RetiredTotals,
}

type GroupKey = (u8, Option<Ipv4Addr>, Net, Net);

/// Everything aged since this process started. Live totals plus these
/// are monotonic across sweeps (not across restarts: this lives in the
/// process, docs/restarts.md).
#[derive(Clone, Debug, Default)]
pub struct Retired {
    pub flows: u64,
    pub sweeps: u64,
    groups: BTreeMap<GroupKey, RetiredTotals>,
}

impl Retired {
    fn add(&mut self, c: &Connection) {
        let t = self
            .groups
            .entry((c.proto, c.peer, c.client_net, c.server_net))
            .or_default();
        t.connections += 1;
        t.forward_packets += c.forward_packets;
        t.reverse_packets += c.reverse_packets;
        t.syns += c.syns;
        t.syn_acks += c.syn_acks;
        t.rsts += c.rsts;
        t.segments += c.segments;
        t.retransmits += c.retransmits;
    }

    /// The retired totals of one group; zero if none.
    pub fn get(
        &self,
        proto: u8,
        peer: Option<Ipv4Addr>,
        client_net: Net,
        server_net: Net,
    ) -> RetiredTotals {
        self.groups
            .get(&(proto, peer, client_net, server_net))
            .copied()
            .unwrap_or_default()
    }

    pub fn groups(&self) -> Vec<RetiredGroup> {
        self.groups
            .iter()
            .map(
                |((proto, peer, client_net, server_net), totals)| RetiredGroup {
                    proto: *proto,
                    peer: *peer,
                    client_net: *client_net,
                    server_net: *server_net,
                    totals: *totals,
                },
            )
            .collect()
    }
}

/// Retired totals as a snapshot carries them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RetiredReport {
    pub flows: u64,
    pub sweeps: u64,
    pub groups: Vec<RetiredGroup>,
}

impl From<&Retired> for RetiredReport {
    fn from(r: &Retired) -> Self {
        RetiredReport {
            flows: r.flows,
            sweeps: r.sweeps,
            groups: r.groups(),
        }
    }
}

/// The FLOWS key of one sighting of a connection.
fn key_of(proto: u8, s: &connections::Sighting) -> FlowKey {
    FlowKey {
        src: wire_addr(*s.src.ip()),
        dst: wire_addr(*s.dst.ip()),
        src_port: s.src.port(),
        dst_port: s.dst.port(),
        proto,
        point: s.point.wire(),
        direction: s.direction.wire(),
        _pad: 0,
    }
}

/// One sweep; see the module doc. `now_ns` is CLOCK_MONOTONIC, the clock
/// of `last_seen_ns`.
pub(crate) fn sweep(
    ebpf: &mut Ebpf,
    retired: &mut Retired,
    now_ns: u64,
    policy: &AgeingPolicy,
    nat: impl FnOnce() -> Vec<NatEntry>,
) -> Result<(AgedSummary, FlowCensus)> {
    let started = super::monotonic_ns();
    // First pass, streamed: the census, and the flows idle for at least
    // the shortest limit. Only those can belong to a connection old enough
    // to age (every flow of an aged connection is idle past its limit).
    let shortest = policy.shortest().as_nanos() as u64;
    let mut census = FlowCensus::new(started);
    let mut idle = Vec::new();
    for_each_flow(ebpf, |k, v| {
        census.add(v);
        if now_ns.saturating_sub(v.last_seen_ns) >= shortest {
            idle.push(*k);
        }
    })?;
    // The common sweep finds nothing idle: no decoding, no join, no NAT
    // table, nothing the size of the table kept.
    if idle.is_empty() {
        retired.sweeps += 1;
        let summary = AgedSummary {
            took_ns: super::monotonic_ns() - started,
            ..AgedSummary::default()
        };
        return Ok((summary, census));
    }
    // Second pass: every flow of the connections those idle flows belong
    // to, and nothing else, so the join sees whole connections.
    let nat = nat();
    let nat = nat.as_slice();
    let grouping = connections::Grouping::new(nat);
    let group_of = |k: &FlowKey| {
        let src = SocketAddrV4::new(addr_from_wire(k.src), k.src_port);
        let dst = SocketAddrV4::new(addr_from_wire(k.dst), k.dst_port);
        grouping.key(k.proto, src, dst)
    };
    let wanted: HashSet<connections::ConnKey> = idle.iter().map(group_of).collect();
    let mut raw = Vec::new();
    for_each_flow(ebpf, |k, v| {
        if wanted.contains(&group_of(k)) {
            raw.push((*k, *v));
        }
    })?;
    let read: HashMap<FlowKey, FlowStats> = raw.iter().copied().collect();
    let records: Vec<FlowRecord> = raw
        .iter()
        .filter_map(|(k, v)| FlowRecord::from_raw(k, v))
        .collect();
    let conns = connections::join(&records, nat, now_ns, connections::HANDSHAKE_GRACE_NS);
    let mut flows: BpfHash<&mut MapData, FlowKey, FlowStats> = map_mut(ebpf, map::FLOWS)?;
    let mut summary = AgedSummary::default();
    for c in conns {
        let keys: Vec<FlowKey> = c.sightings.iter().map(|s| key_of(c.proto, s)).collect();
        let members: Vec<(FlowKey, FlowStats)> = keys
            .iter()
            .filter_map(|k| read.get(k).map(|v| (*k, *v)))
            .collect();
        let closed = members
            .iter()
            .any(|(_, v)| v.tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0);
        let last = members
            .iter()
            .map(|(_, v)| v.last_seen_ns)
            .max()
            .unwrap_or(0);
        let limit = policy.idle_limit(c.proto, closed).as_nanos() as u64;
        if now_ns.saturating_sub(last) < limit {
            continue;
        }
        let mut removed = Vec::with_capacity(members.len());
        let mut woke = false;
        for (key, seen) in &members {
            let fd = flows.map().fd().as_fd();
            let value: Option<FlowStats> =
                sys::lookup_and_delete(fd, key).map_err(|e| flows_io("deleting a flow", e))?;
            let Some(value) = value else { continue };
            removed.push((*key, value));
            if value.last_seen_ns != seen.last_seen_ns {
                woke = true;
                break;
            }
        }
        if woke {
            summary.woke += 1;
            for (key, value) in removed {
                if flows.insert(key, value, BPF_NOEXIST).is_err() {
                    // A packet re-created it meanwhile: its counts so far
                    // must not vanish.
                    summary.raced += 1;
                    retired.flows += 1;
                    let one: Vec<FlowRecord> =
                        FlowRecord::from_raw(&key, &value).into_iter().collect();
                    for c in connections::join(&one, nat, now_ns, 0) {
                        retired.add(&c);
                    }
                }
            }
            continue;
        }
        summary.flows += removed.len() as u64;
        summary.connections += 1;
        retired.flows += removed.len() as u64;
        retired.add(&c);
    }
    retired.sweeps += 1;
    summary.took_ns = super::monotonic_ns() - started;
    Ok((summary, census))
}

fn flows_io(what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} of {}", map::FLOWS), e)
}
