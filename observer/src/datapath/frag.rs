//! ICMP "fragmentation needed" about this node's packets towards its
//! peers, as the programs counted them (`observer-ebpf/src/frag.rs`): one
//! entry per peer node, overlay and hop that was told a packet did not
//! fit, O(nodes).
use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use observer_ebpf::{FragKey, FragNeeded, MtuHop, Overlay, map};
use serde::{Deserialize, Serialize};

use super::map_ref;
use crate::{Error, Result, shape::addr_from_wire};

/// One path's messages since FRAG_NEEDED was created (pinned, it outlives
/// agent restarts), and what the latest said.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FragRecord {
    pub peer: Ipv4Addr,
    pub overlay: Overlay,
    /// Where the packet did not fit: on the wire past this node, or on
    /// this node (its kernel told one of its pods).
    pub hop: MtuHop,
    pub messages: u64,
    /// The latest message's next-hop MTU, as sent (0: a router older
    /// than RFC 1191 said none).
    pub next_hop_mtu: u32,
    /// Bytes the tunnel adds to an inner packet (0 outside a tunnel and
    /// for the node's own messages, which are in inner sizes already).
    pub overhead: u32,
    /// The size of the packet the latest message refused.
    pub refused_len: u32,
}

impl FragRecord {
    /// The largest inner packet the path takes, by the latest message:
    /// its next-hop MTU less the tunnel's headers. None when it gave no
    /// MTU (or one smaller than the headers).
    pub fn fits(&self) -> Option<u32> {
        self.next_hop_mtu
            .checked_sub(self.overhead)
            .filter(|&fits| fits > 0)
    }

    /// The record's identity within one node's map.
    pub fn key(&self) -> (Ipv4Addr, Overlay, MtuHop) {
        (self.peer, self.overlay, self.hop)
    }
}

/// Every entry, sorted by [`FragRecord::key`]; entries of values this
/// build does not know are left out.
pub(crate) fn read(ebpf: &Ebpf) -> Result<Vec<FragRecord>> {
    let entries: HashMap<&MapData, FragKey, FragNeeded> = map_ref(ebpf, map::FRAG_NEEDED)?;
    let mut out = Vec::new();
    for entry in entries.iter() {
        let (key, value) = entry.map_err(Error::map(map::FRAG_NEEDED))?;
        let (Some(overlay), Some(hop)) =
            (Overlay::from_wire(key.overlay), MtuHop::from_wire(key.hop))
        else {
            continue;
        };
        out.push(FragRecord {
            peer: addr_from_wire(key.peer),
            overlay,
            hop,
            messages: value.messages,
            next_hop_mtu: u32::from(value.next_hop_mtu),
            overhead: u32::from(value.overhead),
            refused_len: u32::from(value.refused_len),
        });
    }
    out.sort_by_key(FragRecord::key);
    Ok(out)
}

/// Empties the map (tests start clean).
#[cfg(feature = "test-api")]
pub(crate) fn clear(ebpf: &mut Ebpf) -> Result<()> {
    let mut entries: HashMap<&mut MapData, FragKey, FragNeeded> =
        super::map_mut(ebpf, map::FRAG_NEEDED)?;
    let keys: Vec<FragKey> = entries.keys().filter_map(|k| k.ok()).collect();
    for key in keys {
        entries.remove(&key).map_err(Error::map(map::FRAG_NEEDED))?;
    }
    Ok(())
}
