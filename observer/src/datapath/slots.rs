//! PEER_STATS slots: which (peer, overlay, direction, network pair) keys
//! get one, and when. A slot lets a known flow count its peer without a
//! hash lookup; handing them out as keys appear (rather than nodes x 36
//! up front) makes reading them cost the pairs that carry traffic.
use aya::maps::{HashMap, MapData};
use observer_ebpf::{
    Direction, PEER_ABI_KEY, PEER_ABI_VERSION, PEER_SLOT_RETIRED, PeerKey, SLOTTED_NETS, map,
};

use super::{Observer, PeerRecord, map_mut};
use crate::{
    Error, Result,
    shape::{ClusterShape, wire_addr},
};

/// The keys of the shape's other nodes on its overlays, between networks
/// of [`SLOTTED_NETS`]: those a PEER_STATS slot is handed out to.
#[derive(Default)]
pub(super) struct SlotRule {
    peers: std::collections::HashSet<u32>,
    overlays: Vec<u8>,
}

impl SlotRule {
    pub(super) fn admits(&self, key: &PeerKey) -> bool {
        let slotted = |net: u8| SLOTTED_NETS.iter().any(|n| n.wire() == net);
        *key != PEER_ABI_KEY
            && self.peers.contains(&key.peer)
            && self.overlays.contains(&key.overlay)
            && Direction::from_wire(key.direction).is_some()
            && slotted(key.src_net)
            && slotted(key.dst_net)
    }
}

impl Observer {
    /// Which (peer, overlay, direction, network pair) keys may hold a
    /// PEER_STATS slot: those of the shape's other nodes, on its overlays,
    /// between networks of [`SLOTTED_NETS`]. Slots are handed out lazily
    /// ([`Observer::promote_peer_slots`]): a key first counts in the PEERS
    /// hash, and gets a slot at the next sample, so reading the slots costs
    /// what is in use, not nodes x 36. Keys of nodes that left the shape
    /// keep their slot (its counts stay readable) but are marked retired,
    /// so new traffic to them is counted in the PEERS hash; a node that
    /// comes back gets the same slots again.
    pub(super) fn assign_peer_slots(&mut self, shape: &ClusterShape) -> Result<()> {
        let local = shape.local().map(|n| n.underlay);
        self.slottable = SlotRule {
            peers: shape
                .nodes
                .iter()
                .filter(|n| Some(n.underlay) != local)
                .map(|n| wire_addr(n.underlay))
                .collect(),
            overlays: shape.peer_overlays()?.iter().map(|o| o.wire()).collect(),
        };
        {
            let mut slots: HashMap<&mut MapData, PeerKey, u32> =
                map_mut(&mut self.ebpf, map::PEER_SLOTS)?;
            // Which meaning the keys have, for a restarted agent of another
            // build (docs/restarts.md).
            slots
                .insert(PEER_ABI_KEY, PEER_SLOT_RETIRED | PEER_ABI_VERSION, 0)
                .map_err(Error::map(map::PEER_SLOTS))?;
            for (key, slot) in &self.peer_slots {
                let value = match self.slottable.admits(key) {
                    true => *slot,
                    false => slot | PEER_SLOT_RETIRED,
                };
                slots
                    .insert(*key, value, 0)
                    .map_err(Error::map(map::PEER_SLOTS))?;
            }
        }
        self.promote_peer_slots().map(|_| ())
    }

    /// Gives a slot to every key the kernel counted in PEERS that may
    /// hold one and has none, while PEER_STATS has room. Its flows take
    /// the slot within 64 packets; what was counted in PEERS stays there
    /// (a figure is the sum of both). Returns how many keys got a slot.
    pub fn promote_peer_slots(&mut self) -> Result<usize> {
        let seen = self.peers()?;
        self.promote_seen_peers(&seen)
    }

    /// [`Observer::promote_peer_slots`] from a reading just taken with
    /// [`Observer::peers`]: what the agent's sampler calls, so PEERS is
    /// read once a sample, not twice.
    pub fn promote_seen_peers(&mut self, seen: &[PeerRecord]) -> Result<usize> {
        let capacity = self.options.peer_slot_capacity;
        // Slots are never reused: the next is past every one handed out.
        let mut next = self.peer_slots.values().map(|s| s + 1).max().unwrap_or(0);
        let mut slots: HashMap<&mut MapData, PeerKey, u32> =
            map_mut(&mut self.ebpf, map::PEER_SLOTS)?;
        let mut promoted = 0;
        self.slotless = 0;
        let waiting = seen
            .iter()
            .map(PeerRecord::key)
            .filter(|k| !self.peer_slots.contains_key(k) && self.slottable.admits(k));
        for key in waiting.collect::<Vec<_>>() {
            if next >= capacity {
                self.slotless += 1;
                continue;
            }
            slots
                .insert(key, next, 0)
                .map_err(Error::map(map::PEER_SLOTS))?;
            self.peer_slots.insert(key, next);
            next += 1;
            promoted += 1;
        }
        Ok(promoted)
    }

    /// (peer, overlay, direction, network pair) keys of the shape's nodes
    /// that found PEER_STATS full at the last promotion: counted in the
    /// PEERS hash, a lookup more per packet. Zero unless the cluster's
    /// active pairs outgrew `peer_slot_capacity`.
    pub fn slotless(&self) -> usize {
        self.slotless
    }
}
