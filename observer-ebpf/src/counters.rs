//! Per-CPU counters: what was seen, and every reason something was not
//! turned into a flow. Counting is the only side effect of the hot path.
use core::{mem::MaybeUninit, ptr::write_volatile};

use observer_ebpf::{Counter, PEER_SLOT_RETIRED, PeerKey, PeerStats, Point, tcp_flag};

use crate::maps::{COUNTERS, PEER_SLOTS, PEER_STATS, PEERS, SLOT_CACHE};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;
const ENOMEM: i32 = 12;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.wire() as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *slot += 1 };
    }
}

/// Counts a packet seen at `point`, whatever becomes of it.
#[inline(always)]
pub fn count_seen(point: Point) {
    count(match point {
        Point::Underlay => Counter::SeenUnderlay,
        Point::Overlay => Counter::SeenOverlay,
        Point::Host => Counter::SeenHost,
        Point::Pod => Counter::SeenPod,
    });
}

/// PEER_STATS slot + 1 userspace assigned to `key`; 0 when it has none
/// or its peer left the shape (retired). Through this CPU's SLOT_CACHE:
/// a key keeps its slot for good once given one (slots are never
/// reused), so a cached answer stays right; a peer retired since goes on
/// counting into its own slot, as its flows do.
#[inline(always)]
pub fn peer_slot(key: &PeerKey) -> u32 {
    let Some(entry) = SLOT_CACHE.get_ptr_mut(key.cache_index()) else {
        return slot_of(key);
    };
    // SAFETY: per-CPU value, only this CPU writes it.
    let entry = unsafe { &mut *entry };
    if entry.slot != 0 && entry.key == *key {
        return entry.slot;
    }
    let slot = slot_of(key);
    if slot != 0 {
        entry.key = *key;
        entry.slot = slot;
    }
    slot
}

/// PEER_SLOTS's answer for `key`, as [`peer_slot`] gives it.
#[inline(always)]
fn slot_of(key: &PeerKey) -> u32 {
    // SAFETY: a u32 value, read once.
    match unsafe { PEER_SLOTS.get(key) } {
        Some(slot) if slot & PEER_SLOT_RETIRED == 0 => slot + 1,
        _ => 0,
    }
}

/// The TCP events of one packet, as its flow judged them: what the peer
/// counters add besides packets and bytes.
#[derive(Clone, Copy, Default)]
pub struct Tcp(pub u8);

impl Tcp {
    pub const SEGMENT: u8 = 1 << 0;
    pub const RETRANSMIT: u8 = 1 << 1;
    pub const SYN: u8 = 1 << 2;
    pub const SYN_RETRANSMIT: u8 = 1 << 3;
    pub const SYN_ACK: u8 = 1 << 4;
    pub const RST: u8 = 1 << 5;

    /// SYN, SYN-ACK and RST from the flag byte; segments and retransmits
    /// need the flow's sequence state and are added by the caller.
    #[inline(always)]
    pub fn of_flags(flags: u8) -> Self {
        let handshake = flags & (tcp_flag::SYN | tcp_flag::ACK);
        let mut events = 0;
        if handshake == tcp_flag::SYN {
            events |= Tcp::SYN;
        } else if handshake == tcp_flag::SYN | tcp_flag::ACK {
            events |= Tcp::SYN_ACK;
        }
        if flags & tcp_flag::RST != 0 {
            events |= Tcp::RST;
        }
        Tcp(events)
    }
}

/// Adds one packet to a peer's counters. The common packet (no TCP event
/// beyond a first transmission) costs two adds.
#[inline(always)]
fn add(stats: &mut PeerStats, bytes: u32, tcp: Tcp) {
    stats.packets += 1;
    stats.bytes += bytes as u64;
    let events = tcp.0;
    if events == 0 {
        return;
    }
    stats.segments += (events & Tcp::SEGMENT != 0) as u64;
    stats.retransmits += (events & Tcp::RETRANSMIT != 0) as u64;
    stats.rsts += (events & Tcp::RST != 0) as u64;
}

/// How a handshake this node's client opened ended, as the kernel saw it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    /// Answered after [`observer_ebpf::HANDSHAKE_GRACE_NS`].
    Late,
    Reset,
}

/// Counts a handshake's outcome towards the client's peer counters: one
/// lookup more, once per connection.
#[inline(always)]
pub fn count_outcome(key: &PeerKey, outcome: Outcome) {
    let add = |stats: &mut PeerStats| match outcome {
        Outcome::Answered => stats.handshakes_answered += 1,
        Outcome::Late => stats.handshakes_late += 1,
        Outcome::Reset => stats.handshakes_reset += 1,
    };
    match peer_slot(key) {
        0 => with_unslotted(key, add),
        slot => with_slot(slot, add),
    }
}

/// Adds one underlay packet to slot `slot_plus_one` (non-zero).
#[inline(always)]
pub fn count_slot(slot_plus_one: u32, bytes: u32, tcp: Tcp) {
    with_slot(slot_plus_one, |stats| add(stats, bytes, tcp));
}

/// Adds one underlay packet to the (peer, overlay, direction) counters,
/// through its slot if it has one, else the PEERS hash.
#[inline(always)]
pub fn count_peer(key: &PeerKey, bytes: u32, tcp: Tcp) {
    match peer_slot(key) {
        0 => count_unslotted(key, bytes, tcp),
        slot => count_slot(slot, bytes, tcp),
    }
}

/// Adds one underlay packet of a peer without a slot to the PEERS hash.
#[inline(always)]
pub fn count_unslotted(key: &PeerKey, bytes: u32, tcp: Tcp) {
    with_unslotted(key, |stats| add(stats, bytes, tcp));
}

/// Applies `f` to this CPU's value of slot `slot_plus_one` (non-zero).
#[inline(always)]
fn with_slot(slot_plus_one: u32, f: impl Fn(&mut PeerStats)) {
    if let Some(stats) = PEER_STATS.get_ptr_mut(slot_plus_one - 1) {
        // SAFETY: per-CPU value, only this CPU writes it.
        f(unsafe { &mut *stats });
    }
}

/// Applies `f` to this CPU's value of `key` in the PEERS hash, creating
/// the entry if it has none (counted when the hash is full).
#[inline(always)]
fn with_unslotted(key: &PeerKey, f: impl Fn(&mut PeerStats)) {
    if let Some(stats) = PEERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        f(unsafe { &mut *stats });
        return;
    }
    // Zeroed by eight word stores in place: from `PeerStats::default()`
    // LLVM zeroes what `f` leaves with a call to `memset`, a byte loop
    // the verifier walks 24 times over on every path reaching one of the
    // 17 places this is inlined into. Volatile stores cannot be merged
    // into that call, and the value is never moved (a move of known
    // zeroes becomes a memset again).
    let mut fresh = MaybeUninit::<PeerStats>::uninit();
    let words = fresh.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<PeerStats>() / 8 {
        // SAFETY: PeerStats is u64 counters only (its size asserted in
        // the ABI), so each word written is inside `fresh`.
        unsafe { write_volatile(words.add(i), 0) };
    }
    // SAFETY: every byte written above; all zeroes is a valid PeerStats.
    let fresh = unsafe { fresh.assume_init_mut() };
    f(fresh);
    // Inserted by reference: a copy of it may be zeroed by memset again.
    let fresh: &PeerStats = fresh;
    match PEERS.insert(key, fresh, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created it between our lookup and insert.
        Err(e) if e == -EEXIST => {
            if let Some(stats) = PEERS.get_ptr_mut(key) {
                // SAFETY: as above.
                f(unsafe { &mut *stats });
            }
        }
        Err(e) if e == -ENOMEM => count(Counter::PeerAllocFailed),
        Err(_) => count(Counter::PeerMapFull),
    }
}
