//! Per-CPU counters: what was seen, and every reason something was not
//! turned into a flow. Counting is the only side effect of the hot path.
use observer_ebpf::{Counter, PeerKey, PeerStats};

use crate::maps::{COUNTERS, PEERS};

const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter.wire() as u32) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe { *slot += 1 };
    }
}

/// Adds one underlay packet to the (peer, overlay, direction) counters.
#[inline(always)]
pub fn count_peer(peer: u32, overlay: u8, direction: u8, bytes: u32) {
    let key = PeerKey {
        peer,
        overlay,
        direction,
        _pad: [0; 2],
    };
    if add_peer(&key, bytes) {
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
            add_peer(&key, bytes);
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
