//! An agent's own counters, read on wall-clock ticks aligned across the
//! cluster, kept for a window and a little more.
//!
//! Every agent reads its counters twice per tick `k` (wall-clock time
//! `k * interval`): *early*, at the tick, and *late*, a guard after it. A
//! window from tick `k0` to `k1` counts
//! * on the sender, packets sent from `k0`'s late read to `k1`'s early read;
//! * on the receiver, packets received from `k0`'s early read to `k1`'s late
//!   read.
//!
//! The receiver's interval contains the sender's, widened by the guard at
//! both ends, so a packet in flight for less than the guard (less the
//! clocks' skew) is never counted as lost: no phantom loss at a window's
//! edges. The price is bounded and one-sided: packets sent within a guard
//! of either edge may count as received without being counted as sent,
//! which hides at most that many lost packets (2 x guard / window of the
//! traffic: 0.4% of a 10 s window at the default 20 ms).
use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use observer_ebpf::{Direction, MtuHop, Net, Overlay};

use crate::datapath::{DropRecord, FragRecord, PeerCounts, PeerRecord};

/// A counter's identity within one node's maps.
pub type Key = (Ipv4Addr, Overlay, Direction, Net, Net);

pub fn key_of(r: &PeerRecord) -> Key {
    (r.peer, r.overlay, r.direction, r.src_net, r.dst_net)
}

/// Milliseconds since the Unix epoch, the clock ticks are aligned on.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One tick's two reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub k: u64,
    /// When the early read ended (Unix ms); a tick whose read came late
    /// (or took long) says so in every answer that uses it.
    pub early_ms: u64,
    pub late_ms: u64,
    /// Every counter at the early read, sorted by [`Key`].
    pub early: Vec<PeerRecord>,
    /// Packets of every counter at the late read, sorted by [`Key`].
    pub late: Vec<(Key, u64)>,
    /// The kernel's drops of cluster traffic at the early read, sorted by
    /// [`DropKey`] (none when drop reasons are off). Local events, so one
    /// read a tick serves: no peer's read is compared with them. Not kept
    /// across restarts, as the kernel's drop counts are not either.
    pub drops: Vec<DropRecord>,
    /// The kernel's ICMP "fragmentation needed" about this node's paths
    /// at the early read, sorted by [`FragRecord::key`]; local like the
    /// drops, and like them not kept across restarts (a window from a
    /// kept tick counts every message since the pinned map was made).
    pub frag_needed: Vec<FragRecord>,
}

/// A drop counter's identity within one node's maps.
pub type DropKey<'a> = (Option<Ipv4Addr>, Direction, Overlay, Net, Net, &'a str);

pub fn drop_key_of(d: &DropRecord) -> DropKey<'_> {
    (
        d.peer,
        d.direction,
        d.overlay,
        d.src_net,
        d.dst_net,
        d.reason.as_str(),
    )
}

impl Tick {
    /// From two reads of a node's counters, in any order.
    pub fn new(
        k: u64,
        (early_ms, mut early): (u64, Vec<PeerRecord>),
        (late_ms, late): (u64, Vec<PeerRecord>),
    ) -> Self {
        early.sort_unstable_by_key(key_of);
        let mut late: Vec<(Key, u64)> =
            late.iter().map(|r| (key_of(r), r.counts.packets)).collect();
        late.sort_unstable_by_key(|(k, _)| *k);
        Tick {
            k,
            early_ms,
            late_ms,
            early,
            late,
            drops: Vec::new(),
            frag_needed: Vec::new(),
        }
    }

    /// With the fragmentation-needed paths read at the early read.
    pub fn with_frag_needed(mut self, mut paths: Vec<FragRecord>) -> Self {
        paths.sort_unstable_by_key(FragRecord::key);
        self.frag_needed = paths;
        self
    }

    /// A path's messages by the early read (0: none yet).
    pub fn frag_messages(&self, key: &(Ipv4Addr, Overlay, MtuHop)) -> u64 {
        self.frag_needed
            .binary_search_by_key(key, FragRecord::key)
            .map_or(0, |i| self.frag_needed[i].messages)
    }

    /// With the drops read at the early read.
    pub fn with_drops(mut self, mut drops: Vec<DropRecord>) -> Self {
        drops.sort_unstable_by(|a, b| drop_key_of(a).cmp(&drop_key_of(b)));
        self.drops = drops;
        self
    }

    /// Packets dropped under `key` by the early read (0: none yet).
    pub fn dropped(&self, key: &DropKey<'_>) -> u64 {
        self.drops
            .binary_search_by(|d| drop_key_of(d).cmp(key))
            .map_or(0, |i| self.drops[i].packets)
    }

    pub fn early(&self, key: &Key) -> Option<&PeerCounts> {
        self.early
            .binary_search_by_key(key, key_of)
            .ok()
            .map(|i| &self.early[i].counts)
    }

    pub fn late_packets(&self, key: &Key) -> u64 {
        self.late
            .binary_search_by_key(key, |(k, _)| *k)
            .map_or(0, |i| self.late[i].1)
    }

    /// How far the reads strayed from the tick's time (ms): the early
    /// read from the tick, the late read from the tick plus the guard.
    pub fn lateness_ms(&self, interval: Duration, guard: Duration) -> u64 {
        let at = self.k * interval.as_millis() as u64;
        let early = self.early_ms.abs_diff(at);
        let late = self.late_ms.abs_diff(at + guard.as_millis() as u64);
        early.max(late)
    }
}

/// Why a window cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unservable {
    /// Fewer than two ticks at or before the window's end: the agent has
    /// just started, or this node's clock is behind the reader's.
    TooFew {
        oldest: Option<u64>,
        newest: Option<u64>,
        kept: usize,
    },
}

/// The last ticks, oldest first.
pub struct Ring {
    pub interval: Duration,
    pub guard: Duration,
    capacity: usize,
    ticks: VecDeque<Tick>,
}

impl Ring {
    /// Keeps `capacity` ticks (at least 2).
    pub fn new(interval: Duration, guard: Duration, capacity: usize) -> Self {
        Ring {
            interval,
            guard,
            capacity: capacity.max(2),
            ticks: VecDeque::new(),
        }
    }

    /// Ticks kept for a window of `window` at `interval`: the window, the
    /// tick a reader may still be asking for, and one in hand.
    pub fn capacity_for(window: Duration, interval: Duration) -> usize {
        (window.as_millis() / interval.as_millis().max(1)) as usize + 3
    }

    /// A tick not after the newest (the wall clock was stepped back)
    /// replaces everything from it on: ticks stay increasing.
    pub fn push(&mut self, tick: Tick) {
        while self.ticks.back().is_some_and(|t| t.k >= tick.k) {
            self.ticks.pop_back();
        }
        self.ticks.push_back(tick);
        while self.ticks.len() > self.capacity {
            self.ticks.pop_front();
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn newest(&self) -> Option<&Tick> {
        self.ticks.back()
    }

    pub fn oldest(&self) -> Option<&Tick> {
        self.ticks.front()
    }

    /// The ticks a window from `from` to `to` uses: the newest tick at or
    /// before `to` and the oldest at or after `from` (a tick may be missing:
    /// the agent had just started, or stalled past a tick). The caller
    /// reports the ticks it used; a reader aligns every agent on the same.
    pub fn window(&self, from: u64, to: u64) -> Result<(&Tick, &Tick), Unservable> {
        let too_few = || Unservable::TooFew {
            oldest: self.oldest().map(|t| t.k),
            newest: self.newest().map(|t| t.k),
            kept: self.ticks.len(),
        };
        let end = self
            .ticks
            .iter()
            .rev()
            .find(|t| t.k <= to)
            .ok_or_else(too_few)?;
        let start = self
            .ticks
            .iter()
            .find(|t| t.k >= from.min(end.k))
            .ok_or_else(too_few)?;
        if start.k >= end.k {
            return Err(too_few());
        }
        Ok((start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peer: u8, direction: Direction, packets: u64) -> PeerRecord {
        PeerRecord {
            peer: Ipv4Addr::new(10, 0, 0, peer),
            overlay: Overlay::Cilium,
            direction,
            src_net: Net::Cilium,
            dst_net: Net::Legacy,
            counts: PeerCounts {
                packets,
                ..PeerCounts::default()
            },
        }
    }

    fn tick(k: u64) -> Tick {
        let records = vec![
            record(2, Direction::Ingress, k * 10 + 5),
            record(1, Direction::Egress, k * 10),
        ];
        let late = records
            .iter()
            .map(|r| PeerRecord {
                counts: PeerCounts {
                    packets: r.counts.packets + 1,
                    ..r.counts
                },
                ..*r
            })
            .collect();
        Tick::new(k, (k * 1000, records), (k * 1000 + 20, late))
    }

    #[test]
    fn ticks_are_found_by_index_and_kept_bounded() {
        let mut ring = Ring::new(Duration::from_secs(1), Duration::from_millis(20), 4);
        for k in 10..20 {
            ring.push(tick(k));
        }
        assert_eq!(ring.oldest().unwrap().k, 16);
        let (a, b) = ring.window(17, 19).unwrap();
        assert_eq!((a.k, b.k), (17, 19));
        // Not read yet: ends at the newest.
        assert_eq!(ring.window(17, 20).unwrap().1.k, 19);
        // A window older than the ring starts at its oldest tick.
        assert_eq!(ring.window(3, 19).unwrap().0.k, 16);
        assert_eq!(
            ring.window(3, 16),
            Err(Unservable::TooFew {
                oldest: Some(16),
                newest: Some(19),
                kept: 4
            })
        );
        let t = ring.window(17, 18).unwrap().1;
        assert_eq!(t.k, 18);
        let key = key_of(&record(2, Direction::Ingress, 0));
        assert_eq!(t.early(&key).unwrap().packets, 185);
        assert_eq!(t.late_packets(&key), 186);
        assert_eq!(t.lateness_ms(ring.interval, ring.guard), 0);
    }

    #[test]
    fn a_clock_stepped_back_replaces_the_ticks_after_it() {
        let mut ring = Ring::new(Duration::from_secs(1), Duration::from_millis(20), 8);
        for k in [1, 2, 3, 4] {
            ring.push(tick(k));
        }
        ring.push(tick(2));
        let ks: Vec<u64> = ring.ticks.iter().map(|t| t.k).collect();
        assert_eq!(ks, [1, 2]);
        // Around a skipped tick: the next one starts, the one before ends.
        ring.push(tick(5));
        ring.push(tick(7));
        let ks = |w: (&Tick, &Tick)| (w.0.k, w.1.k);
        assert_eq!(ks(ring.window(3, 7).unwrap()), (5, 7));
        assert_eq!(ks(ring.window(1, 6).unwrap()), (1, 5));
    }
}
