//! Random and mutated packets through every program with
//! `BPF_PROG_TEST_RUN`, as an adversary on the wire would send them: every
//! one must come out unchanged with the pass-through verdict, and every map
//! must stay within its capacity, whatever the packets did to the tables.
//! `tests/fuzz.rs` runs a short form in CI; `cargo xtask fuzz` a long one
//! (`src/bin/fuzz.rs`).
//!
//! Packets are structure-aware: valid outer Ethernet (with or without a
//! VLAN tag), IPv4 with options and fragments, UDP to the tunnel ports
//! (VXLAN, Geneve with options), IP-in-IP, inner frames and IPv4 of the
//! shape's pod, node and outside addresses, TCP, UDP, ICMP and other
//! protocols; then bent: fields at a header's start set to edge values,
//! bits flipped, cut at and around header boundaries, bytes added. Some go
//! through unbent, some are pure noise. One seed decides everything: a
//! failure names it, and the same seed and packet count replay the run.
use std::fmt::Write as _;

use aya::programs::{TestRun, TestRunOptions};
use observer::{
    datapath::{Hook, LoadOptions, Observer},
    shape::{ClusterShape, Encapsulation},
};
use observer_ebpf::DEFAULT_FRAG_CAPACITY;

use crate::{
    harness::{NEXT, two_node_shape},
    packet::{self, L4, ip},
};

/// What a run is given.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub packets: u64,
    pub seed: u64,
    /// Map bounds and counters are checked (then the flow table emptied
    /// and the other shape configured) every this many packets.
    pub check_every: u64,
}

/// Small tables, so runs fill them and the refusals are exercised too.
pub fn load_options() -> LoadOptions {
    LoadOptions {
        flow_capacity: 1024,
        peer_capacity: 256,
        peer_slot_capacity: 64,
        handshake_capacity: 256,
        ..LoadOptions::default()
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub packets: u64,
    /// Program runs (every packet through every program).
    pub runs: u64,
    /// Runs the kernel refused before the program ran (a frame shorter
    /// than its headers: `BPF_PROG_TEST_RUN` checks that itself).
    pub refused_by_kernel: u64,
    /// The fullest the tables were at a check.
    pub most_flows: usize,
    pub most_peer_keys: usize,
    /// The most FRAG_NEEDED paths at a check.
    pub most_frag_paths: usize,
    pub pending_handshakes: u64,
    /// Non-zero skip and refusal counters at the end, by reason.
    pub reasons: Vec<(&'static str, u64)>,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} packets, {} program runs ({} refused by the kernel as too short); at most {} flows, \
             {} peer keys, {} fragmentation-needed paths, {} handshakes pending at the end",
            self.packets,
            self.runs,
            self.refused_by_kernel,
            self.most_flows,
            self.most_peer_keys,
            self.most_frag_paths,
            self.pending_handshakes
        );
        for (reason, n) in &self.reasons {
            let _ = write!(out, "\n  {reason}: {n}");
        }
        out
    }
}

/// Every program: (name, whether it starts at the IPv4 header).
fn programs() -> Vec<(&'static str, bool)> {
    Hook::ALL
        .into_iter()
        .flat_map(|hook| hook.all_programs())
        .map(|name| (name, name.contains("_l3_")))
        .collect()
}

/// Runs `options.packets` packets through every program; `Err` names the
/// seed, the packet and what broke.
pub fn run(options: Options) -> Result<Report, String> {
    crate::require_root();
    let mut observer = Observer::load(load_options()).map_err(|e| e.to_string())?;
    let mut shapes = Shapes::new();
    observer
        .configure(shapes.current())
        .map_err(|e| e.to_string())?;
    let programs = programs();
    let mut packets = Gen::new(options.seed);
    let mut report = Report::default();
    let fail = |i: u64, what: String| {
        format!(
            "fuzz seed {} packet {i}: {what} (replay: CROSSOVER_FUZZ_SEED={} with at least {} packets)",
            options.seed,
            options.seed,
            i + 1
        )
    };
    for i in 0..options.packets {
        let frame = packets.packet();
        for (name, l3) in &programs {
            let packet = if *l3 {
                &frame[frame.len().min(14)..]
            } else {
                &frame[..]
            };
            let program = observer.program(name).map_err(|e| e.to_string())?;
            report.runs += 1;
            let mut out = vec![0u8; packet.len() + 256];
            let result = program.test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                ..Default::default()
            });
            let result = match result {
                Ok(r) => r,
                Err(e) if refused_as_short(&e) => {
                    report.refused_by_kernel += 1;
                    continue;
                }
                Err(e) => return Err(fail(i, format!("{name}: test run failed: {e}"))),
            };
            if result.return_value as i32 != NEXT {
                return Err(fail(
                    i,
                    format!(
                        "{name} returned {} on {}",
                        result.return_value as i32,
                        hex(packet)
                    ),
                ));
            }
            if result.data_size_out as usize != packet.len() || out[..packet.len()] != *packet {
                return Err(fail(
                    i,
                    format!(
                        "{name} changed {} into {}",
                        hex(packet),
                        hex(&out[..packet.len()])
                    ),
                ));
            }
        }
        report.packets = i + 1;
        if (i + 1) % options.check_every == 0 || i + 1 == options.packets {
            check(&observer, &mut report).map_err(|e| fail(i, e))?;
            // A new shape, and room for new flows: the insert paths run
            // again, not only the full table's.
            observer.clear_flows().map_err(|e| e.to_string())?;
            observer
                .configure(shapes.next())
                .map_err(|e| e.to_string())?;
        }
    }
    // Every handshake still pending, expired at once: how many there were.
    report.pending_handshakes = observer
        .expire_handshakes(u64::MAX)
        .map_err(|e| e.to_string())?;
    let capacity = u64::from(load_options().handshake_capacity);
    if report.pending_handshakes > capacity {
        return Err(fail(
            report.packets,
            format!(
                "{} handshakes pending in a table of {capacity}",
                report.pending_handshakes
            ),
        ));
    }
    let counters = observer.counters().map_err(|e| e.to_string())?;
    report.reasons = counters
        .iter()
        .filter(|(name, n)| **n != 0 && !name.starts_with("seen_"))
        .map(|(name, n)| (*name, *n))
        .collect();
    Ok(report)
}

/// The kernel's own refusal of a test run: EINVAL before the program runs.
fn refused_as_short(e: &aya::programs::ProgramError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error() == Some(libc::EINVAL);
        }
        source = err.source();
    }
    false
}

/// The tables within their capacities, every packet the kernel ran
/// counted as seen once, and everything readable back.
fn check(observer: &Observer, report: &mut Report) -> Result<(), String> {
    let options = load_options();
    let flows = observer.read_flows_raw(true).map_err(|e| e.to_string())?;
    if flows > options.flow_capacity as usize {
        return Err(format!(
            "{flows} flows in a table of {}",
            options.flow_capacity
        ));
    }
    let snapshot = observer.snapshot().map_err(|e| e.to_string())?;
    let keys = snapshot.peers.len();
    let key_capacity = (options.peer_capacity + options.peer_slot_capacity) as usize;
    if keys > key_capacity {
        return Err(format!("{keys} peer keys in tables of {key_capacity}"));
    }
    let seen: u64 = snapshot
        .counters
        .iter()
        .filter(|(name, _)| name.starts_with("seen_"))
        .map(|(_, n)| *n)
        .sum();
    let ran = report.runs - report.refused_by_kernel;
    if seen != ran {
        return Err(format!("{ran} program runs, {seen} counted as seen"));
    }
    let paths = snapshot.frag_needed.len();
    if paths > DEFAULT_FRAG_CAPACITY as usize {
        return Err(format!(
            "{paths} fragmentation-needed paths in a table of {DEFAULT_FRAG_CAPACITY}"
        ));
    }
    report.most_frag_paths = report.most_frag_paths.max(paths);
    report.most_flows = report.most_flows.max(flows);
    report.most_peer_keys = report.most_peer_keys.max(keys);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The shapes a run alternates between: VXLAN and Geneve overlays, and
/// Calico's IP-in-IP as the legacy one.
struct Shapes {
    shapes: [ClusterShape; 2],
    at: usize,
}

impl Shapes {
    fn new() -> Self {
        let vxlan = two_node_shape();
        let mut ipip = two_node_shape();
        ipip.networks[0].encapsulation = Encapsulation::Ipip;
        Shapes {
            shapes: [vxlan, ipip],
            at: 0,
        }
    }

    fn current(&self) -> &ClusterShape {
        &self.shapes[self.at]
    }

    fn next(&mut self) -> &ClusterShape {
        self.at = (self.at + 1) % self.shapes.len();
        self.current()
    }
}

/// The packet generator: one seeded generator, so a seed is a run.
pub struct Gen {
    rng: fastrand::Rng,
}

/// Ports crossover reads as tunnels, and a few it does not.
const PORTS: [u16; 8] = [8472, 8473, 4789, 6081, 0, 53, 80, 65535];
/// Protocols of a raw IPv4 payload.
const PROTOS: [u8; 8] = [packet::IPIP, 6, 17, 1, 47, 50, 132, 255];
/// Values a bent field takes: the edges parsers get wrong.
const EDGES: [u8; 10] = [0, 1, 4, 5, 0x0f, 0x40, 0x45, 0x4f, 0x80, 0xff];

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// An address of the shape's pods, nodes and overlays, or not.
    fn addr(&mut self) -> [u8; 4] {
        let i = self.rng.u8(0..3);
        match self.rng.u8(0..8) {
            0 => [192, 168, 50, i + 1],
            1 => [10, 244, i, self.rng.u8(..)],
            2 => [10, 245, i, self.rng.u8(..)],
            3 => [10, 244, i, 0],
            4 => [10, 245, i, 1],
            5 => [0, 0, 0, 0],
            _ => self.rng.u32(..).to_be_bytes(),
        }
    }

    fn port(&mut self) -> u16 {
        if self.rng.bool() {
            PORTS[self.rng.usize(..PORTS.len())]
        } else {
            self.rng.u16(..)
        }
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.rng.usize(0..=max);
        (0..len).map(|_| self.rng.u8(..)).collect()
    }

    fn l4(&mut self) -> L4 {
        match self.rng.u8(0..5) {
            0 => L4::Tcp {
                src: self.port(),
                dst: self.port(),
                seq: self.rng.u32(..),
                flags: self.rng.u8(..),
                payload: self.rng.usize(0..64),
            },
            1 => L4::Udp {
                src: self.port(),
                dst: self.port(),
                payload: self.bytes(64),
            },
            2 => L4::IcmpEcho {
                request: self.rng.bool(),
                id: self.rng.u16(..),
                seq: self.rng.u16(..),
            },
            3 => L4::Icmp {
                kind: self.rng.u8(..),
                code: self.rng.u8(..),
            },
            _ => L4::Raw {
                proto: PROTOS[self.rng.usize(..PROTOS.len())],
                payload: self.bytes(64),
            },
        }
    }

    fn ipv4(&mut self) -> packet::Ipv4 {
        let mut p = ip(self.addr(), self.addr(), self.l4());
        if self.rng.u8(0..4) == 0 {
            p = p.with_options(&self.bytes(40));
        }
        if self.rng.u8(0..6) == 0 {
            p = p.fragment(self.rng.u16(0..0x2000), self.rng.bool());
        }
        p
    }

    /// A well-formed frame of one of the shapes crossover meets.
    fn frame(&mut self) -> Vec<u8> {
        let inner = self.ipv4();
        let (src, dst) = (self.addr(), self.addr());
        match self.rng.u8(0..11) {
            0 | 1 => inner.frame(),
            9 => self.frag_needed(inner, src, dst),
            2 => inner.vlan_frame(self.rng.u16(0..4096)),
            3 | 4 => inner.vxlan(src, dst, PORTS[self.rng.usize(..4)]),
            5 => inner.geneve(src, dst, self.rng.u8(0..8)),
            6 => {
                let mut outer = inner.ipip(src, dst);
                if self.rng.bool() {
                    outer = outer.with_options(&self.bytes(12));
                }
                outer.frame()
            }
            7 => packet::ipv6_frame(),
            8 => packet::ethernet(self.rng.u16(..), &self.bytes(128)),
            _ => self.bytes(200),
        }
    }

    /// An ICMP "fragmentation needed" quoting `inner` tunnelled from
    /// `src` to `dst` (or `inner` itself), cut as senders cut it or
    /// anywhere; half the time from node A to node B (the shapes' local
    /// node and its peer) and sent to the quoted source, so the quote's
    /// checks run to the end.
    fn frag_needed(&mut self, inner: packet::Ipv4, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let (src, dst) = if self.rng.bool() {
            ([192, 168, 50, 1], [192, 168, 50, 2])
        } else {
            (src, dst)
        };
        let refused = match self.rng.u8(0..4) {
            0 => inner.vxlan(src, dst, PORTS[self.rng.usize(..4)])[14..].to_vec(),
            1 => inner.geneve(src, dst, self.rng.u8(0..8))[14..].to_vec(),
            2 => inner.ipip(src, dst).bytes(),
            _ => inner.bytes(),
        };
        let quote = match self.rng.u8(0..3) {
            0 => 28,
            1 => packet::LINUX_QUOTE,
            _ => self.rng.usize(0..=refused.len()),
        };
        let quoted_src = [refused[12], refused[13], refused[14], refused[15]];
        let to = if self.rng.bool() {
            quoted_src
        } else {
            self.addr()
        };
        let message = packet::frag_needed(self.rng.u16(..), &refused, quote);
        ip(self.addr(), to, message).frame()
    }

    /// A frame, bent 0 to 3 times.
    pub fn packet(&mut self) -> Vec<u8> {
        let mut p = self.frame();
        for _ in 0..self.rng.usize(0..4) {
            let marks = marks(&p);
            let mark = marks[self.rng.usize(..marks.len())];
            let near = |rng: &mut fastrand::Rng, len: usize| {
                (mark + rng.usize(0..24)).min(len.saturating_sub(1))
            };
            match self.rng.u8(0..6) {
                _ if p.is_empty() => p = self.bytes(64),
                0 => {
                    let at = near(&mut self.rng, p.len());
                    p[at] = EDGES[self.rng.usize(..EDGES.len())];
                }
                1 => {
                    let at = self.rng.usize(..p.len());
                    p[at] ^= 1 << self.rng.u8(0..8);
                }
                2 => {
                    let at = near(&mut self.rng, p.len());
                    p[at] = self.rng.u8(..);
                }
                3 => {
                    // Cut at a header's start, or a few bytes either side.
                    let cut = (mark + self.rng.usize(0..4)).saturating_sub(self.rng.usize(0..4));
                    p.truncate(cut.min(p.len()));
                }
                4 => {
                    let extra = self.bytes(64);
                    p.extend(extra);
                }
                _ => {
                    // A tunnel port or length where a u16 was.
                    let len = p.len();
                    let at = near(&mut self.rng, len).min(len.saturating_sub(2));
                    let n = (len - at).min(2);
                    p[at..at + n].copy_from_slice(&self.port().to_be_bytes()[..n]);
                }
            }
        }
        p
    }
}

/// Where the headers of a frame start, as far as they can be walked:
/// Ethernet, a VLAN tag, IPv4, UDP or IP-in-IP, VXLAN or Geneve, the inner
/// frame and its IPv4 and L4. Always holds 0.
pub fn marks(p: &[u8]) -> Vec<usize> {
    let mut marks = vec![0];
    let u16_at = |at: usize| p.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut at = 12;
    // Ethernet (and one tag) down to IPv4, twice: outer, then inner.
    for _ in 0..2 {
        let mut ethertype = u16_at(at);
        if ethertype == Some(0x8100) {
            marks.push(at);
            at += 4;
            ethertype = u16_at(at);
        }
        at += 2;
        if ethertype != Some(0x0800) {
            return marks;
        }
        let Some(ip) = ipv4_marks(p, at, &mut marks) else {
            return marks;
        };
        at = match ip {
            (packet::IPIP, l4) => match ipv4_marks(p, l4, &mut marks) {
                Some((_, inner_l4)) => {
                    marks.push(inner_l4);
                    return marks;
                }
                None => return marks,
            },
            (17, udp) => {
                marks.push(udp);
                let tunnel = udp + 8;
                marks.push(tunnel);
                match u16_at(udp + 2) {
                    Some(6081) => {
                        let words = p.get(tunnel).map_or(0, |b| usize::from(b & 0x3f));
                        tunnel + 8 + 4 * words + 12
                    }
                    Some(_) => tunnel + 8 + 12,
                    None => return marks,
                }
            }
            // ICMP: its header, and a quoted packet's headers.
            (1, icmp) => {
                marks.push(icmp);
                if let Some((_, quoted_l4)) = ipv4_marks(p, icmp + 8, &mut marks) {
                    marks.push(quoted_l4);
                    marks.push(quoted_l4 + 8);
                }
                return marks;
            }
            (_, l4) => {
                marks.push(l4);
                return marks;
            }
        };
        marks.push(at - 12);
    }
    marks
}

/// Marks an IPv4 header at `at`: its protocol and where its payload starts.
fn ipv4_marks(p: &[u8], at: usize, marks: &mut Vec<usize>) -> Option<(u8, usize)> {
    marks.push(at);
    let ihl = usize::from(p.get(at)? & 0x0f) * 4;
    let proto = *p.get(at + 9)?;
    (ihl >= 20).then_some((proto, at + ihl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_find_every_header_of_a_vxlan_frame() {
        let inner = ip([10, 244, 0, 7], [10, 244, 1, 5], packet::tcp(1, 2, 3, 0, 0));
        let frame = inner.vxlan([192, 168, 50, 1], [192, 168, 50, 2], 8472);
        // Outer IPv4, UDP, VXLAN, inner Ethernet, inner IPv4, TCP.
        assert_eq!(marks(&frame), [0, 14, 34, 42, 50, 64, 84]);
    }

    #[test]
    fn a_seed_is_a_run() {
        let run = |seed| {
            let mut g = Gen::new(seed);
            (0..200).map(|_| g.packet()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
