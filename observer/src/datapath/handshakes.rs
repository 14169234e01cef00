//! Handshakes nobody answered. The kernel opens an entry in HANDSHAKES for
//! every first SYN a client on this node sends over the underlay, and the
//! answer (SYN-ACK or RST) closes it and counts its outcome. A SYN never
//! answered leaves its entry behind: this expires entries older than the
//! grace as unanswered, once per sample, and keeps the tally per peer key
//! (the kernel's counters for the others). Reading the map costs what is
//! in flight, a handful of entries in a healthy cluster, never the flow
//! table.
//!
//! Whoever removes an entry counts it: an answer racing the expiry is
//! either counted by the kernel (late, since it came after the grace) or
//! finds the entry gone; both say "unanswered in time", never twice.
use std::{collections::BTreeMap, os::fd::AsFd};

use aya::{
    Ebpf,
    maps::{HashMap, IterableMap, MapData},
};
use observer_ebpf::{FlowKey, HANDSHAKE_GRACE_NS, PeerKey, PendingHandshake, map};

use super::{map_ref, sys};
use crate::{Error, Result};

/// Entries per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 1024;

/// Removes pending handshakes opened more than the grace before `now_ns`
/// (CLOCK_MONOTONIC, the kernel's coarse clock's domain) and adds them to
/// `expired`; returns how many it removed.
pub(crate) fn expire(
    ebpf: &Ebpf,
    now_ns: u64,
    expired: &mut BTreeMap<PeerKey, u64>,
) -> Result<u64> {
    let taken = remove_where(ebpf, |h| {
        now_ns.saturating_sub(h.opened_ns) > HANDSHAKE_GRACE_NS
    })?;
    for handshake in &taken {
        *expired.entry(handshake.peer).or_default() += 1;
    }
    Ok(taken.len() as u64)
}

/// Empties HANDSHAKES (tests start clean).
#[cfg(feature = "test-api")]
pub(crate) fn clear(ebpf: &Ebpf) -> Result<()> {
    remove_where(ebpf, |_| true).map(|_| ())
}

/// Removes the entries `old` picks and returns what they held as they
/// were removed; one an answer removed meanwhile is not returned.
fn remove_where(
    ebpf: &Ebpf,
    old: impl Fn(&PendingHandshake) -> bool,
) -> Result<Vec<PendingHandshake>> {
    let pending: HashMap<&MapData, FlowKey, PendingHandshake> = map_ref(ebpf, map::HANDSHAKES)?;
    let fd = pending.map().fd().as_fd();
    let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {}", map::HANDSHAKES), e);
    let mut keys = Vec::new();
    sys::lookup_batch(fd, BATCH, |k: &FlowKey, v: &PendingHandshake| {
        if old(v) {
            keys.push(*k);
        }
    })
    .map_err(|e| io("reading", e))?;
    let mut taken = Vec::with_capacity(keys.len());
    for key in keys {
        let value: Option<PendingHandshake> =
            sys::lookup_and_delete(fd, &key).map_err(|e| io("removing an entry of", e))?;
        taken.extend(value);
    }
    Ok(taken)
}
