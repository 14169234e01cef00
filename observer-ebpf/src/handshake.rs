//! The handshake tracker. A SYN out opens a pending handshake under its
//! flow's key; a SYN-ACK or RST in closes the one its reverse flow opened,
//! and counts its outcome towards the client's peer.
//!
//! A global function (exported, so its BTF linkage is global), called for
//! SYN, SYN-ACK and RST packets on the underlay only. The verifier checks
//! a global function once, on its own, for any arguments, instead of once
//! for every state its callers reach it in; and the underlay programs
//! reach it down every combination of tunnel, flow and peer-counting
//! paths. Inline, it was two thirds of what the verifier walked to load
//! `crossover_underlay_ingress`: 652,556 of the 1,000,000 instructions the
//! kernel allows, 197,875 with it left out.
use observer_ebpf::{
    Counter, Direction, FlowKey, HANDSHAKE_GRACE_NS, PeerKey, PendingHandshake, Point,
};

use crate::{
    counters::{Outcome, count, count_outcome},
    flow::kernel_clock,
    maps::HANDSHAKES,
};

/// A global function takes scalars only: a [`FlowKey`] as two words.
#[inline(always)]
pub fn key_words(key: &FlowKey) -> [u64; 2] {
    // SAFETY: FlowKey is 16 plain bytes (asserted in the ABI crate).
    unsafe { core::mem::transmute::<FlowKey, [u64; 2]>(*key) }
}

/// A [`PeerKey`] as one word.
#[inline(always)]
pub fn peer_word(peer: &PeerKey) -> u64 {
    // SAFETY: PeerKey is 8 plain bytes (asserted in the ABI crate).
    unsafe { core::mem::transmute::<PeerKey, u64>(*peer) }
}

/// One handshake packet on the underlay, its flow's key in `addrs` and
/// `rest` ([`key_words`]): a SYN out (the key's direction says so) with
/// the client's peer counters in `peer`, or an answer in, `syn_ack` 1 for
/// a SYN-ACK and 0 for an RST. `kernel_now` is the kernel clock if the
/// packet read it already, else 0. Returns 0 (a global function returns a
/// scalar).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn crossover_track_handshake(
    addrs: u64,
    rest: u64,
    peer: u64,
    kernel_now: u64,
    syn_ack: u64,
) -> i32 {
    // SAFETY: the inverse of key_words and peer_word; every bit pattern is
    // a valid FlowKey and PeerKey.
    let (key, peer) = unsafe {
        (
            core::mem::transmute::<[u64; 2], FlowKey>([addrs, rest]),
            core::mem::transmute::<u64, PeerKey>(peer),
        )
    };
    // Handshakes are timed against a grace under a second: the kernel
    // clock, read here unless the packet (a new flow's) read it already.
    let now = match kernel_now {
        0 => kernel_clock(),
        now => now,
    };
    if key.direction == Direction::Egress.wire() {
        let pending = PendingHandshake {
            opened_ns: now,
            peer,
        };
        if HANDSHAKES.insert(key, pending, 0).is_err() {
            count(Counter::HandshakeMapFull);
        }
        return 0;
    }
    let opened_by = FlowKey {
        src: key.dst,
        dst: key.src,
        src_port: key.dst_port,
        dst_port: key.src_port,
        proto: key.proto,
        point: Point::Underlay.wire(),
        direction: Direction::Egress.wire(),
        _pad: 0,
    };
    // SAFETY: a plain value, copied out before the entry is removed.
    let Some(pending) = (unsafe { HANDSHAKES.get(opened_by) }).copied() else {
        return 0;
    };
    // Whoever removes the entry counts it: this answer, or userspace
    // expiring it (then it was late, and counted as unanswered there).
    if HANDSHAKES.remove(opened_by).is_err() {
        return 0;
    }
    let outcome = if syn_ack == 0 {
        Outcome::Reset
    } else if now.wrapping_sub(pending.opened_ns) > HANDSHAKE_GRACE_NS {
        Outcome::Late
    } else {
        Outcome::Answered
    };
    count_outcome(&pending.peer, outcome);
    0
}
