//! Reading the maps into plain values.
//!
//! A snapshot brackets its reads with the monotonic clock. Each entry is
//! copied whole by the kernel (FLOWS a few thousand entries per
//! `BPF_MAP_LOOKUP_BATCH` call), per-CPU values are summed, and entries
//! are never deleted while reading, so every counter in a snapshot is a
//! value the kernel really held between `started_ns` and `finished_ns`, and
//! two snapshots of the same entry never go backwards. Flows the ageing
//! sweep deleted are in `retired`.
use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap, MapData, PerCpuArray, PerCpuHashMap},
    util::nr_cpus,
};
use observer_ebpf::{
    Counter, Direction, FlowKey, FlowStats, Net, Overlay, PeerKey, PeerStats, Point, Snat, map,
};
use serde::{Deserialize, Serialize};

use super::{
    ageing::{Retired, RetiredReport},
    map_mut, map_ref, sys,
};
use crate::{
    Error, Result,
    shape::{addr_from_wire, wire_addr},
};

/// Every counter by reason, summed over CPUs.
pub type Counters = BTreeMap<&'static str, u64>;

#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// CLOCK_MONOTONIC before the first and after the last read.
    pub started_ns: u64,
    pub finished_ns: u64,
    pub flows: Vec<FlowRecord>,
    pub peers: Vec<PeerRecord>,
    pub counters: Counters,
    /// ICMP "fragmentation needed" about this node's packets, per path.
    pub frag_needed: Vec<super::FragRecord>,
    /// Totals of the flows ageing deleted since this process started: add
    /// them to sums over `flows` for totals that never go backwards.
    pub retired: RetiredReport,
}

/// One flow, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub point: Point,
    pub direction: Direction,
    pub overlay: Overlay,
    pub src_net: Net,
    pub dst_net: Net,
    pub snat: Snat,
    pub snat_addr: Option<Ipv4Addr>,
    pub peer: Option<Ipv4Addr>,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u8,
    pub syns: u64,
    pub syn_acks: u64,
    pub rsts: u64,
    pub segments: u64,
    pub retransmits: u64,
    pub echo_requests: u64,
    pub echo_replies: u64,
}

/// One node's underlay counters towards one peer, per overlay, direction
/// and network pair: packets for delivery, TCP events for the handshake
/// and retransmit signals. Cumulative since the maps were created (pinned
/// maps outlive agent restarts) and never reset by flow ageing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub peer: Ipv4Addr,
    pub overlay: Overlay,
    /// Egress is sent to the peer, ingress received from it.
    pub direction: Direction,
    /// Networks of the inner packets' ends (unknown: counted without a
    /// flow, its inner packet unparsable).
    pub src_net: Net,
    pub dst_net: Net,
    #[serde(flatten)]
    pub counts: PeerCounts,
}

impl PeerRecord {
    /// The kernel's key of these counters.
    pub fn key(&self) -> PeerKey {
        PeerKey {
            peer: wire_addr(self.peer),
            overlay: self.overlay.wire(),
            direction: self.direction.wire(),
            src_net: self.src_net.wire(),
            dst_net: self.dst_net.wire(),
        }
    }
}

/// The counters of a [`PeerRecord`], summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounts {
    pub packets: u64,
    pub bytes: u64,
    /// TCP segments with payload, SYN or FIN, and of those retransmitted.
    #[serde(default)]
    pub segments: u64,
    #[serde(default)]
    pub retransmits: u64,
    /// TCP packets with RST.
    #[serde(default)]
    pub rsts: u64,
    /// Handshakes this node's clients opened towards the peer (egress
    /// records only): answered within the grace, not answered in time
    /// (answered late, or never and expired), refused by RST.
    #[serde(default)]
    pub handshakes_answered: u64,
    #[serde(default)]
    pub handshakes_unanswered: u64,
    #[serde(default)]
    pub handshakes_reset: u64,
}

impl From<&PeerStats> for PeerCounts {
    /// One CPU's value: its late handshakes are unanswered ones.
    fn from(s: &PeerStats) -> Self {
        PeerCounts {
            packets: s.packets,
            bytes: s.bytes,
            segments: s.segments,
            retransmits: s.retransmits,
            rsts: s.rsts,
            handshakes_answered: s.handshakes_answered,
            handshakes_unanswered: s.handshakes_late,
            handshakes_reset: s.handshakes_reset,
        }
    }
}

impl std::ops::AddAssign for PeerCounts {
    fn add_assign(&mut self, o: PeerCounts) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.segments += o.segments;
        self.retransmits += o.retransmits;
        self.rsts += o.rsts;
        self.handshakes_answered += o.handshakes_answered;
        self.handshakes_unanswered += o.handshakes_unanswered;
        self.handshakes_reset += o.handshakes_reset;
    }
}

impl PeerCounts {
    /// Handshakes this node's clients opened towards the peer that ended:
    /// answered, unanswered or reset.
    pub fn handshakes(&self) -> u64 {
        self.handshakes_answered + self.handshakes_unanswered + self.handshakes_reset
    }

    fn add(&mut self, s: &PeerStats) {
        *self += PeerCounts::from(s);
    }

    /// What happened between an earlier reading and this one; a counter
    /// that went back (maps recreated) counts from zero.
    pub fn since(&self, earlier: &PeerCounts) -> PeerCounts {
        let d = |now: u64, then: u64| now - then.min(now);
        PeerCounts {
            packets: d(self.packets, earlier.packets),
            bytes: d(self.bytes, earlier.bytes),
            segments: d(self.segments, earlier.segments),
            retransmits: d(self.retransmits, earlier.retransmits),
            rsts: d(self.rsts, earlier.rsts),
            handshakes_answered: d(self.handshakes_answered, earlier.handshakes_answered),
            handshakes_unanswered: d(self.handshakes_unanswered, earlier.handshakes_unanswered),
            handshakes_reset: d(self.handshakes_reset, earlier.handshakes_reset),
        }
    }
}

fn nonzero(addr: u32) -> Option<Ipv4Addr> {
    (addr != 0).then(|| addr_from_wire(addr))
}

impl FlowRecord {
    /// Decodes one FLOWS entry; `None` for a wire value this build does
    /// not know (the kernel side is the same build, so never in practice).
    pub fn from_raw(key: &FlowKey, stats: &FlowStats) -> Option<Self> {
        Some(FlowRecord {
            src: addr_from_wire(key.src),
            dst: addr_from_wire(key.dst),
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
            point: Point::from_wire(key.point)?,
            direction: Direction::from_wire(key.direction)?,
            overlay: Overlay::from_wire(stats.overlay)?,
            src_net: Net::from_wire(stats.src_net)?,
            dst_net: Net::from_wire(stats.dst_net)?,
            snat: Snat::from_wire(stats.snat())?,
            snat_addr: nonzero(stats.snat_addr(key)),
            peer: nonzero(stats.peer),
            packets: stats.packets,
            bytes: stats.bytes,
            first_seen_ns: stats.first_seen_ns,
            last_seen_ns: stats.last_seen_ns,
            tcp_flags: stats.tcp_flags,
            syns: stats.syns.into(),
            syn_acks: stats.syn_acks.into(),
            rsts: stats.rsts.into(),
            segments: stats.segments(key),
            retransmits: stats.retransmits.into(),
            echo_requests: stats.echo_requests(key),
            echo_replies: stats.echo_replies(key),
        })
    }

    pub fn proto_name(&self) -> String {
        match self.proto {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            other => other.to_string(),
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Snapshot {
    pub(crate) fn read(
        ebpf: &Ebpf,
        peer_slots: &BTreeMap<PeerKey, u32>,
        expired: &BTreeMap<PeerKey, u64>,
        retired: &Retired,
    ) -> Result<Self> {
        let started_ns = monotonic_ns();
        let mut flow_records: Vec<FlowRecord> = read_flows(ebpf)?
            .iter()
            .filter_map(|(key, stats)| FlowRecord::from_raw(key, stats))
            .collect();
        let peer_records = read_peers(ebpf, peer_slots, expired)?;
        let counters = read_counters(ebpf)?;
        let frag_needed = super::frag::read(ebpf)?;
        flow_records.sort_by(|a, b| {
            (a.src, a.dst, a.src_port, a.dst_port, a.point, a.direction).cmp(&(
                b.src,
                b.dst,
                b.src_port,
                b.dst_port,
                b.point,
                b.direction,
            ))
        });
        Ok(Snapshot {
            started_ns,
            finished_ns: monotonic_ns(),
            flows: flow_records,
            peers: peer_records,
            counters,
            frag_needed,
            retired: retired.into(),
        })
    }

    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters.get(counter.label()).copied().unwrap_or(0)
    }
}

/// Every counter of COUNTERS, summed over CPUs: a few dozen lookups.
pub(crate) fn read_counters(ebpf: &Ebpf) -> Result<Counters> {
    let array: PerCpuArray<&MapData, u64> = map_ref(ebpf, map::COUNTERS)?;
    let mut counters = Counters::new();
    for counter in Counter::ALL {
        let values = array
            .get(&(counter.wire() as u32), 0)
            .map_err(Error::map(map::COUNTERS))?;
        counters.insert(counter.label(), values.iter().sum());
    }
    Ok(counters)
}

/// Entries of FLOWS per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 4096;

/// Every entry of FLOWS: batched where the kernel can (5.6+), key by key
/// otherwise.
pub(crate) fn read_flows(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowStats)>> {
    let mut out = Vec::new();
    for_each_flow(ebpf, |k, v| out.push((*k, *v)))?;
    Ok(out)
}

/// Every entry of FLOWS handed to `each` as it is read, a chunk at a time:
/// nothing the size of the table is allocated.
pub(crate) fn for_each_flow(ebpf: &Ebpf, mut each: impl FnMut(&FlowKey, &FlowStats)) -> Result<()> {
    let flows: HashMap<&MapData, FlowKey, FlowStats> = map_ref(ebpf, map::FLOWS)?;
    // The kernel refuses an unsupported batch before copying anything, so
    // falling back never hands an entry twice.
    let batched = sys::lookup_batch(flows.map().fd().as_fd(), BATCH, &mut each);
    match batched {
        Ok(()) => return Ok(()),
        Err(e) if sys::batch_unsupported(&e) => {}
        Err(e) => return Err(Error::io(format!("batch lookup of {}", map::FLOWS), e)),
    }
    for entry in flows.iter() {
        let (k, v) = entry.map_err(Error::map(map::FLOWS))?;
        each(&k, &v);
    }
    Ok(())
}

/// Every entry of FLOWS, two syscalls per entry (next key, lookup).
#[cfg(feature = "test-api")]
pub(crate) fn read_flows_by_key(ebpf: &Ebpf) -> Result<Vec<(FlowKey, FlowStats)>> {
    let flows: HashMap<&MapData, FlowKey, FlowStats> = map_ref(ebpf, map::FLOWS)?;
    flows
        .iter()
        .map(|entry| entry.map_err(Error::map(map::FLOWS)))
        .collect()
}

/// Slots of PEER_STATS per `BPF_MAP_LOOKUP_BATCH` call.
const SLOT_BATCH: u32 = 4096;

/// Every PEER_STATS slot summed over CPUs, by slot: a few batched calls
/// for the whole array (a thousand nodes' 36,000 slots in 9), one lookup
/// per slot where the kernel has no batch operations (before 5.6).
fn read_slots(ebpf: &Ebpf, used: usize) -> Result<Vec<PeerCounts>> {
    let slot_stats: PerCpuArray<&MapData, PeerStats> = map_ref(ebpf, map::PEER_STATS)?;
    let cpus = nr_cpus().map_err(|(what, source)| Error::io(what, source))?;
    let used = used.min(slot_stats.len() as usize);
    let mut slots = vec![PeerCounts::default(); used];
    if used == 0 {
        return Ok(slots);
    }
    let batched = sys::lookup_batch_per_cpu(
        slot_stats.map().fd().as_fd(),
        SLOT_BATCH.min(used as u32),
        cpus,
        |slot: &u32, values: &[PeerStats]| match slots.get_mut(*slot as usize) {
            Some(sum) => {
                values.iter().for_each(|v| sum.add(v));
                (*slot as usize) + 1 < used
            }
            None => false,
        },
    );
    match batched {
        Ok(()) => return Ok(slots),
        Err(e) if sys::batch_unsupported(&e) => {}
        Err(e) => return Err(Error::io(format!("batch lookup of {}", map::PEER_STATS), e)),
    }
    for (slot, sum) in slots.iter_mut().enumerate() {
        *sum = PeerCounts::default();
        let values = slot_stats
            .get(&(slot as u32), 0)
            .map_err(Error::map(map::PEER_STATS))?;
        values.iter().for_each(|v| sum.add(v));
    }
    Ok(slots)
}

/// Per-peer counters alone: a few lookups, so reading every node's in a
/// row keeps the skew between one node's "sent" and its peer's "received"
/// (packets in flight while reading) to microseconds.
pub(crate) fn read_peers(
    ebpf: &Ebpf,
    peer_slots: &BTreeMap<PeerKey, u32>,
    expired: &BTreeMap<PeerKey, u64>,
) -> Result<Vec<PeerRecord>> {
    // Known peers count in their slot, others (and known peers' packets
    // that reached no flow before their slot existed) in the hash:
    // one peer's figure is the sum of both.
    let mut per_peer: BTreeMap<PeerKey, PeerCounts> = BTreeMap::new();
    // Slots are handed out from 0 and never reused: the array is read up
    // to the highest one, not to its capacity.
    let used = peer_slots.values().max().map_or(0, |s| *s as usize + 1);
    let slots = read_slots(ebpf, used)?;
    for (key, slot) in peer_slots {
        let Some(counts) = slots.get(*slot as usize) else {
            continue;
        };
        if counts.packets != 0 {
            per_peer.insert(*key, *counts);
        }
    }
    // Every key counts here until it has a slot, and keeps what it
    // counted before: read in batches, not two syscalls a key.
    let hashed: PerCpuHashMap<&MapData, PeerKey, PeerStats> = map_ref(ebpf, map::PEERS)?;
    let cpus = nr_cpus().map_err(|(what, source)| Error::io(what, source))?;
    let batched = sys::lookup_batch_per_cpu(
        hashed.map().fd().as_fd(),
        SLOT_BATCH,
        cpus,
        |key: &PeerKey, values: &[PeerStats]| {
            let sum = per_peer.entry(*key).or_default();
            values.iter().for_each(|v| sum.add(v));
            true
        },
    );
    match batched {
        Ok(()) => {}
        Err(e) if sys::batch_unsupported(&e) => {
            for entry in hashed.iter() {
                let (key, values) = entry.map_err(Error::map(map::PEERS))?;
                let sum = per_peer.entry(key).or_default();
                values.iter().for_each(|v| sum.add(v));
            }
        }
        Err(e) => return Err(Error::io(format!("batch lookup of {}", map::PEERS), e)),
    }
    // Handshakes never answered, which userspace expired.
    for (key, n) in expired {
        per_peer.entry(*key).or_default().handshakes_unanswered += n;
    }
    // Keys this build cannot decode (none: the key's ABI version is
    // checked when pins are opened) are left out rather than guessed.
    let mut records: Vec<PeerRecord> = per_peer
        .into_iter()
        .filter(|(_, counts)| counts.packets != 0)
        .filter_map(|(key, counts)| {
            Some(PeerRecord {
                peer: addr_from_wire(key.peer),
                overlay: Overlay::from_wire(key.overlay)?,
                direction: Direction::from_wire(key.direction)?,
                src_net: Net::from_wire(key.src_net)?,
                dst_net: Net::from_wire(key.dst_net)?,
                counts,
            })
        })
        .collect();
    records.sort_by_key(|r| (r.peer, r.overlay, r.direction, r.src_net, r.dst_net));
    Ok(records)
}

pub(crate) fn clear_flows(ebpf: &mut Ebpf) -> Result<()> {
    let mut flows: HashMap<&mut MapData, FlowKey, FlowStats> = map_mut(ebpf, map::FLOWS)?;
    let keys: Vec<FlowKey> = flows.keys().filter_map(|k| k.ok()).collect();
    for key in keys {
        flows.remove(&key).map_err(Error::map(map::FLOWS))?;
    }
    Ok(())
}

#[cfg(feature = "test-api")]
pub(crate) fn reset(ebpf: &mut Ebpf, peer_slots: u32) -> Result<()> {
    use aya::maps::PerCpuValues;
    clear_flows(ebpf)?;
    {
        let mut peers: PerCpuHashMap<&mut MapData, PeerKey, PeerStats> = map_mut(ebpf, map::PEERS)?;
        let keys: Vec<PeerKey> = peers.keys().filter_map(|k| k.ok()).collect();
        for key in keys {
            peers.remove(&key).map_err(Error::map(map::PEERS))?;
        }
    }
    let cpus = nr_cpus().map_err(|(what, source)| Error::io(what, source))?;
    {
        let mut slots: PerCpuArray<&mut MapData, PeerStats> = map_mut(ebpf, map::PEER_STATS)?;
        for slot in 0..peer_slots {
            let zeros = PerCpuValues::try_from(vec![PeerStats::default(); cpus])
                .map_err(|e| Error::io("per-CPU values", e))?;
            slots
                .set(slot, zeros, 0)
                .map_err(Error::map(map::PEER_STATS))?;
        }
    }
    let mut array: PerCpuArray<&mut MapData, u64> = map_mut(ebpf, map::COUNTERS)?;
    for counter in Counter::ALL {
        let zeros =
            PerCpuValues::try_from(vec![0u64; cpus]).map_err(|e| Error::io("per-CPU values", e))?;
        array
            .set(counter.wire() as u32, zeros, 0)
            .map_err(Error::map(map::COUNTERS))?;
    }
    Ok(())
}
