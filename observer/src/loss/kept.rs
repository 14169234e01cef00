//! The ring's ticks kept across an agent restart, so a window that began
//! before a crash still starts at its own tick: the counters survive in
//! their pinned maps, and these are their reads at each tick.
//!
//! Every tick the sampler takes is written to slot `k % slots` of a pinned
//! map beside the counters ([`PinnedPages`]), one slot per tick the ring
//! keeps. A restarted agent reads every slot back and puts into its ring
//! the ticks it can trust. A slot is refused, never half-used, when it is
//! * foreign: not this format (magic) or another version of it;
//! * corrupt: its checksum, length, order or a value does not hold (a
//!   process killed while writing it leaves its checksum wrong);
//! * of another tick: another `--sample-interval` or `--reading-guard`;
//! * of other counters: the per-peer maps are not the ones it read (they
//!   were recreated since, their counts started over).
//!
//! A tick outside the ring's span now (the agent was down longer than its
//! window) is expired, not refused. What was adopted, expired and refused,
//! and whether the window restarted, is in `/api/v1/status` (`kept`) and
//! the `crossover_window_kept_*` metrics.
//!
//! Layout, little-endian: a [`HEADER`]-byte header, then the early reads
//! ([`EARLY`] bytes each: key, then the eight counts of `PeerCounts`), then
//! the late reads ([`LATE`] bytes each: key, packets), then the handshakes
//! the agent had expired unanswered by then ([`LATE`] bytes each: the
//! kernel's `PeerKey`, count), which live in the process and so are kept
//! too. A key is the peer's address (network order) and the wire values of
//! overlay, direction and the two networks.
use std::net::Ipv4Addr;

use observer_ebpf::{Direction, Net, Overlay, PeerKey};
use serde::Serialize;

use super::ring::{Key, Tick, key_of};
use crate::{
    Result,
    datapath::{KeptFound, KeptSlot, PeerCounts, PeerRecord, PinnedPages},
};

/// The pinned map's name under the pin directory's `maps/`.
pub const MAP: &str = "KEPT_TICKS";
const MAGIC: [u8; 8] = *b"xo-ticks";
/// Bumped on any change of the layout or of what a field means.
pub const FORMAT: u32 = 1;
pub const HEADER: usize = 80;
pub const EARLY: usize = 8 + 8 * 8;
pub const LATE: usize = 8 + 8;
/// Where the checksum sits in the header (zero while it is computed).
const CRC_AT: usize = 72;

/// What a kept tick must have been read under to be used now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Basis {
    pub interval_ms: u64,
    pub guard_ms: u64,
    /// The kernel's ids of the per-peer counter maps (PEERS, PEER_STATS).
    pub counters: [u32; 2],
}

/// Why a kept tick was not used, as the metric's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Foreign,
    Corrupt,
    Tick,
    Counters,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Foreign,
        Reason::Corrupt,
        Reason::Tick,
        Reason::Counters,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Foreign => "foreign",
            Reason::Corrupt => "corrupt",
            Reason::Tick => "tick",
            Reason::Counters => "counters",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

fn refuse<T>(reason: Reason, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        reason,
        detail: detail.into(),
    })
}

/// Bytes of a tick of `early` and `late` reads and `expired` handshake
/// counts.
pub fn encoded_len(early: usize, late: usize, expired: usize) -> usize {
    HEADER + early * EARLY + (late + expired) * LATE
}

/// Handshakes expired unanswered, per the kernel's key.
pub type Expired = Vec<(PeerKey, u64)>;

fn put_key(out: &mut Vec<u8>, (peer, overlay, direction, src, dst): Key) {
    out.extend_from_slice(&peer.octets());
    out.extend_from_slice(&[overlay.wire(), direction.wire(), src.wire(), dst.wire()]);
}

fn counts(c: &PeerCounts) -> [u64; 8] {
    [
        c.packets,
        c.bytes,
        c.segments,
        c.retransmits,
        c.rsts,
        c.handshakes_answered,
        c.handshakes_unanswered,
        c.handshakes_reset,
    ]
}

pub fn encode(tick: &Tick, expired: &[(PeerKey, u64)], basis: &Basis) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(
        tick.early.len(),
        tick.late.len(),
        expired.len(),
    ));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(tick.early.len() as u32).to_le_bytes());
    out.extend_from_slice(&(tick.late.len() as u32).to_le_bytes());
    for id in basis.counters {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out.extend_from_slice(&(expired.len() as u32).to_le_bytes());
    for v in [
        basis.interval_ms,
        basis.guard_ms,
        tick.k,
        tick.early_ms,
        tick.late_ms,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&[0; 8]);
    debug_assert_eq!(out.len(), HEADER);
    for r in &tick.early {
        put_key(&mut out, key_of(r));
        for v in counts(&r.counts) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for (key, packets) in &tick.late {
        put_key(&mut out, *key);
        out.extend_from_slice(&packets.to_le_bytes());
    }
    for (key, n) in expired {
        out.extend_from_slice(&key.peer.to_le_bytes());
        out.extend_from_slice(&[key.overlay, key.direction, key.src_net, key.dst_net]);
        out.extend_from_slice(&n.to_le_bytes());
    }
    let crc = crc32fast::hash(&out);
    out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Reads little-endian fields off a byte slice.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("N bytes")
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn key(&mut self) -> Result<Key, Refusal> {
        let peer = Ipv4Addr::from(self.take::<4>());
        let [o, d, s, t] = self.take::<4>();
        let bad = |what: &str, v: u8| Refusal {
            reason: Reason::Corrupt,
            detail: format!("{what} value {v} is not one this build knows"),
        };
        Ok((
            peer,
            Overlay::from_wire(o).ok_or_else(|| bad("overlay", o))?,
            Direction::from_wire(d).ok_or_else(|| bad("direction", d))?,
            Net::from_wire(s).ok_or_else(|| bad("network", s))?,
            Net::from_wire(t).ok_or_else(|| bad("network", t))?,
        ))
    }
}

/// A kept tick and the handshakes expired by then, checked against what
/// it must have been read under.
pub fn decode(bytes: &[u8], basis: &Basis) -> Result<(Tick, Expired), Refusal> {
    if bytes.len() < HEADER || bytes[..8] != MAGIC {
        return refuse(Reason::Foreign, "not a kept tick (no header)");
    }
    let mut f = Fields(&bytes[8..HEADER]);
    let format = f.u32();
    if format != FORMAT {
        return refuse(
            Reason::Foreign,
            format!("format {format}, this build reads {FORMAT}"),
        );
    }
    let mut zeroed = bytes.to_vec();
    zeroed[CRC_AT..CRC_AT + 4].fill(0);
    let crc = u32::from_le_bytes(bytes[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&zeroed) != crc {
        return refuse(
            Reason::Corrupt,
            "checksum differs (written partly, or overwritten)",
        );
    }
    let (early_n, late_n) = (f.u32() as usize, f.u32() as usize);
    let counters = [f.u32(), f.u32()];
    let expired_n = f.u32() as usize;
    let (interval_ms, guard_ms) = (f.u64(), f.u64());
    let (k, early_ms, late_ms) = (f.u64(), f.u64(), f.u64());
    if (interval_ms, guard_ms) != (basis.interval_ms, basis.guard_ms) {
        return refuse(
            Reason::Tick,
            format!(
                "read every {interval_ms} ms with a {guard_ms} ms guard; now {} ms and {} ms",
                basis.interval_ms, basis.guard_ms
            ),
        );
    }
    if counters != basis.counters {
        return refuse(
            Reason::Counters,
            format!(
                "read from counter maps {counters:?}, now {:?} (recreated since)",
                basis.counters
            ),
        );
    }
    let body = early_n.checked_mul(EARLY).zip(
        late_n
            .checked_add(expired_n)
            .and_then(|n| n.checked_mul(LATE)),
    );
    if body.and_then(|(e, l)| e.checked_add(l)?.checked_add(HEADER)) != Some(bytes.len()) {
        return refuse(
            Reason::Corrupt,
            format!(
                "{} bytes for {early_n} early and {late_n} late reads and {expired_n} expired \
                 handshake counts",
                bytes.len()
            ),
        );
    }
    let mut f = Fields(&bytes[HEADER..]);
    let mut early = Vec::with_capacity(early_n);
    for _ in 0..early_n {
        let (peer, overlay, direction, src_net, dst_net) = f.key()?;
        let [
            packets,
            bytes,
            segments,
            retransmits,
            rsts,
            answered,
            unanswered,
            reset,
        ] = std::array::from_fn(|_| f.u64());
        early.push(PeerRecord {
            peer,
            overlay,
            direction,
            src_net,
            dst_net,
            counts: PeerCounts {
                packets,
                bytes,
                segments,
                retransmits,
                rsts,
                handshakes_answered: answered,
                handshakes_unanswered: unanswered,
                handshakes_reset: reset,
            },
        });
    }
    let mut late = Vec::with_capacity(late_n);
    for _ in 0..late_n {
        late.push((f.key()?, f.u64()));
    }
    let mut expired = Vec::with_capacity(expired_n);
    for _ in 0..expired_n {
        // The same checks as a read's key, kept in the kernel's form.
        let peer = u32::from_le_bytes(f.0[..4].try_into().expect("4 bytes"));
        let (_, overlay, direction, src, dst) = f.key()?;
        let key = PeerKey {
            peer,
            overlay: overlay.wire(),
            direction: direction.wire(),
            src_net: src.wire(),
            dst_net: dst.wire(),
        };
        expired.push((key, f.u64()));
    }
    // The ring finds reads by binary search.
    if !early.is_sorted_by_key(key_of) || !late.is_sorted_by_key(|(key, _)| *key) {
        return refuse(Reason::Corrupt, "reads out of order");
    }
    Ok((
        Tick {
            k,
            early_ms,
            late_ms,
            early,
            late,
            drops: Vec::new(),
            frag_needed: Vec::new(),
        },
        expired,
    ))
}

/// What a restarted agent found of its predecessor's ticks.
#[derive(Clone, Debug, Serialize)]
pub struct KeptReport {
    #[serde(flatten)]
    pub found: KeptFound,
    pub slots: u32,
    /// Ticks put back into the ring, and the oldest and newest of them
    /// (Unix ms; 0 when none).
    pub adopted: usize,
    pub oldest_ms: u64,
    pub newest_ms: u64,
    /// Ticks older than the ring's span (or after now).
    pub expired: usize,
    /// Slots whose tick could not be trusted.
    pub refused: Vec<RefusedSlot>,
    /// Why windows start over at this agent's start, when they do though
    /// ticks were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RefusedSlot {
    pub slot: u32,
    #[serde(flatten)]
    pub refusal: Refusal,
}

impl KeptReport {
    /// When the pinned map cannot be had: windows start at every start,
    /// and the report says why.
    pub fn unavailable(why: String) -> Self {
        KeptReport {
            found: KeptFound::Unavailable,
            slots: 0,
            adopted: 0,
            oldest_ms: 0,
            newest_ms: 0,
            expired: 0,
            refused: Vec::new(),
            restarted: Some(format!("ticks cannot be kept across restarts: {why}")),
        }
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "kept ticks ({} slots, map {}): {} adopted, {} expired, {} refused",
            self.slots,
            match self.found {
                KeptFound::Reused => "reused",
                KeptFound::Created => "created",
                KeptFound::Recreated { .. } => "recreated",
                KeptFound::Unavailable => "unavailable",
            },
            self.adopted,
            self.expired,
            self.refused.len()
        );
        if let Some(first) = self.refused.first() {
            out += &format!(" (slot {}: {})", first.slot, first.refusal.detail);
        }
        if let Some(why) = &self.restarted {
            out += &format!("; windows restart here: {why}");
        }
        out
    }

    pub fn refused_by(&self, reason: Reason) -> usize {
        self.refused
            .iter()
            .filter(|r| r.refusal.reason == reason)
            .count()
    }
}

/// The ticks this agent keeps, and reads back after a restart.
pub struct Keeper {
    pages: PinnedPages,
    basis: Basis,
}

impl Keeper {
    pub fn new(pages: PinnedPages, basis: Basis) -> Self {
        Keeper { pages, basis }
    }

    /// Bytes a slot needs for a tick of `keys` counters at most.
    pub fn max_bytes(keys: usize) -> usize {
        encoded_len(keys, keys, keys)
    }

    /// Keeps `tick`, with the handshakes expired unanswered by now.
    pub fn keep(&mut self, tick: &Tick, expired: &[(PeerKey, u64)]) -> Result<()> {
        let slot = (tick.k % u64::from(self.pages.slots())) as u32;
        self.pages.write(slot, &encode(tick, expired, &self.basis))
    }

    /// Every kept tick of the ring's span ending at tick `now` (`span`
    /// ticks), oldest first; the handshakes expired by the newest tick that
    /// could be read (adopted or too old), to carry on from; and what
    /// became of the others.
    pub fn adopt(
        &self,
        found: KeptFound,
        now: u64,
        span: u64,
    ) -> Result<(Vec<Tick>, Expired, KeptReport)> {
        let slots = self.pages.slots();
        let mut ticks = Vec::new();
        let mut newest: Option<(u64, Expired)> = None;
        let mut report = KeptReport {
            found: found.clone(),
            slots,
            adopted: 0,
            oldest_ms: 0,
            newest_ms: 0,
            expired: 0,
            refused: Vec::new(),
            restarted: None,
        };
        for slot in 0..slots {
            let refused = |refusal| RefusedSlot { slot, refusal };
            let bytes = match self.pages.read(slot)? {
                KeptSlot::Empty => continue,
                KeptSlot::Broken(detail) => {
                    report.refused.push(refused(Refusal {
                        reason: Reason::Corrupt,
                        detail,
                    }));
                    continue;
                }
                KeptSlot::Bytes(bytes) => bytes,
            };
            let (tick, expired) = match decode(&bytes, &self.basis) {
                Err(refusal) => {
                    report.refused.push(refused(refusal));
                    continue;
                }
                Ok(kept) => kept,
            };
            match tick {
                tick if tick.k % u64::from(slots) != u64::from(slot) => {
                    report.refused.push(refused(Refusal {
                        reason: Reason::Corrupt,
                        detail: format!("tick {} found in slot {slot}", tick.k),
                    }));
                }
                tick if tick.k > now => report.expired += 1,
                tick => {
                    if newest.as_ref().is_none_or(|(k, _)| *k < tick.k) {
                        newest = Some((tick.k, expired));
                    }
                    if tick.k.saturating_add(span) <= now {
                        report.expired += 1;
                    } else {
                        ticks.push(tick);
                    }
                }
            }
        }
        ticks.sort_by_key(|t| t.k);
        let ms = |t: Option<&Tick>| t.map_or(0, |t| t.k.saturating_mul(self.basis.interval_ms));
        report.adopted = ticks.len();
        report.oldest_ms = ms(ticks.first());
        report.newest_ms = ms(ticks.last());
        report.restarted = match &found {
            KeptFound::Recreated { .. } => Some(
                "the kept ticks' map was of another geometry (window, tick or capacity changed): \
                 replaced unread"
                    .into(),
            ),
            _ if ticks.is_empty() && !report.refused.is_empty() => Some(format!(
                "every kept tick was refused ({} slots)",
                report.refused.len()
            )),
            _ => None,
        };
        Ok((ticks, newest.map(|(_, e)| e).unwrap_or_default(), report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASIS: Basis = Basis {
        interval_ms: 500,
        guard_ms: 20,
        counters: [7, 9],
    };

    fn tick() -> Tick {
        let record = |peer: u8, direction, packets| PeerRecord {
            peer: Ipv4Addr::new(10, 0, 0, peer),
            overlay: Overlay::Cilium,
            direction,
            src_net: Net::Host,
            dst_net: Net::Legacy,
            counts: PeerCounts {
                packets,
                bytes: packets.wrapping_mul(100),
                segments: 3,
                retransmits: 1,
                rsts: 2,
                handshakes_answered: 4,
                handshakes_unanswered: 5,
                handshakes_reset: 6,
            },
        };
        let early = vec![
            record(2, Direction::Egress, 10),
            record(1, Direction::Ingress, 20),
            record(3, Direction::Egress, u64::MAX),
        ];
        let late = early
            .iter()
            .map(|r| PeerRecord {
                counts: PeerCounts {
                    packets: r.counts.packets.saturating_add(1),
                    ..r.counts
                },
                ..*r
            })
            .collect();
        Tick::new(3_456_789, (1_728_394_500, early), (1_728_394_521, late))
    }

    #[test]
    fn a_kept_tick_reads_back_as_it_was() {
        let t = tick();
        let expired = vec![(
            PeerKey {
                peer: 0x0200_000a,
                overlay: Overlay::Legacy.wire(),
                direction: Direction::Egress.wire(),
                src_net: Net::Legacy.wire(),
                dst_net: Net::Cilium.wire(),
            },
            7,
        )];
        let bytes = encode(&t, &expired, &BASIS);
        assert_eq!(bytes.len(), encoded_len(3, 3, 1));
        assert_eq!(decode(&bytes, &BASIS), Ok((t, expired)));
        let empty = Tick::new(1, (500, Vec::new()), (520, Vec::new()));
        assert_eq!(
            decode(&encode(&empty, &[], &BASIS), &BASIS),
            Ok((empty, Vec::new()))
        );
    }

    fn reason(bytes: &[u8], basis: &Basis) -> Reason {
        decode(bytes, basis).unwrap_err().reason
    }

    #[test]
    fn foreign_corrupt_and_other_ticks_are_refused() {
        let bytes = encode(&tick(), &[], &BASIS);
        // Every single flipped bit and every truncation is refused.
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(decode(&b, &BASIS).is_err(), "byte {i} bit {bit}");
            }
            assert!(decode(&bytes[..i], &BASIS).is_err(), "cut at {i}");
        }
        assert_eq!(reason(b"", &BASIS), Reason::Foreign);
        assert_eq!(reason(&[0xab; 300], &BASIS), Reason::Foreign);
        let mut other = bytes.clone();
        other[8] = 2;
        assert_eq!(reason(&other, &BASIS), Reason::Foreign);
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        assert_eq!(reason(&flipped, &BASIS), Reason::Corrupt);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; LATE]);
        assert_eq!(reason(&longer, &BASIS), Reason::Corrupt);
        let slower = Basis {
            interval_ms: 1000,
            ..BASIS
        };
        assert_eq!(reason(&bytes, &slower), Reason::Tick);
        let recreated = Basis {
            counters: [7, 10],
            ..BASIS
        };
        let refusal = decode(&bytes, &recreated).unwrap_err();
        assert_eq!(refusal.reason, Reason::Counters);
        assert!(refusal.detail.contains("[7, 9]"), "{}", refusal.detail);
    }

    #[test]
    fn a_map_that_cannot_be_had_says_windows_restart() {
        let report = KeptReport::unavailable("map KEPT_TICKS: out of memory".into());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["map"], "unavailable");
        assert!(
            json["restarted"]
                .as_str()
                .unwrap()
                .contains("ticks cannot be kept across restarts: map KEPT_TICKS"),
            "{json}"
        );
    }

    #[test]
    fn a_consistent_tick_with_an_unknown_value_is_refused_not_guessed() {
        let mut t = tick();
        t.early.truncate(1);
        let mut bytes = encode(&t, &[], &BASIS);
        // Overlay byte of the first early read, checksum made right.
        bytes[HEADER + 4] = 77;
        bytes[CRC_AT..CRC_AT + 4].fill(0);
        let crc = crc32fast::hash(&bytes);
        bytes[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        let refusal = decode(&bytes, &BASIS).unwrap_err();
        assert_eq!(refusal.reason, Reason::Corrupt);
        assert!(refusal.detail.contains("overlay value 77"), "{refusal:?}");
    }
}
