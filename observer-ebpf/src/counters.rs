//! Per-CPU counters: what was seen, and every reason something was not
//! turned into a flow. Counting is the only side effect of the hot path.
use observer_ebpf::{Counter, PEER_SLOT_RETIRED, PeerKey, PeerStats, Point};

use crate::maps::{COUNTERS, PEER_SLOTS, PEER_STATS, PEERS};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

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
/// or its peer left the shape (retired).
#[inline(always)]
pub fn peer_slot(key: &PeerKey) -> u32 {
    // SAFETY: a u32 value, read once.
    match unsafe { PEER_SLOTS.get(key) } {
        Some(slot) if slot & PEER_SLOT_RETIRED == 0 => slot + 1,
        _ => 0,
    }
}

/// Adds one underlay packet to slot `slot_plus_one` (non-zero).
#[inline(always)]
pub fn count_slot(slot_plus_one: u32, bytes: u32) {
    if let Some(stats) = PEER_STATS.get_ptr_mut(slot_plus_one - 1) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes as u64;
        }
    }
}

/// Adds one underlay packet to the (peer, overlay, direction) counters,
/// through its slot if it has one, else the PEERS hash.
#[inline(always)]
pub fn count_peer(key: &PeerKey, bytes: u32) {
    match peer_slot(key) {
        0 => count_unslotted(key, bytes),
        slot => count_slot(slot, bytes),
    }
}

/// Adds one underlay packet of a peer without a slot to the PEERS hash.
#[inline(always)]
pub fn count_unslotted(key: &PeerKey, bytes: u32) {
    if add_peer(key, bytes) {
        return;
    }
    let fresh = PeerStats {
        packets: 1,
        bytes: bytes as u64,
    };
    match PEERS.insert(key, fresh, BPF_NOEXIST) {
        Ok(()) => {}
        // Another CPU created it between our lookup and insert.
        Err(e) if e == -EEXIST => {
            add_peer(key, bytes);
        }
        Err(_) => count(Counter::PeerMapFull),
    }
}

#[inline(always)]
fn add_peer(key: &PeerKey, bytes: u32) -> bool {
    match PEERS.get_ptr_mut(key) {
        Some(stats) => {
            // SAFETY: per-CPU value, only this CPU writes it.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += bytes as u64;
            }
            true
        }
        None => false,
    }
}
