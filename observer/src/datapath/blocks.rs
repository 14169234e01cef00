//! ADDR_BLOCKS: the ADDRS trie's answers for the cluster's pod ranges,
//! laid out so the kernel finds a pod address's entry by arithmetic.
//!
//! A new flow's two address lookups were most of its cost beyond the
//! flow table's insert, and an LPM trie's lookup grows with the prefixes it
//! holds: about 40 ns at 2 nodes, 100 ns at 1,000 (3,000 prefixes). A pod
//! range of the cluster (`10.244.0.0/16`) is cut into blocks of its nodes'
//! share length (/24), one array entry each, holding what the trie
//! answers for every address of the block, and for the one /32 a block may
//! hold (the node's overlay address). The kernel computes the index from
//! the address and reads the entry: the same cost at any cluster size.
//!
//! Exactness comes first: an entry answers only when the trie's answer is
//! the same for every address of the block but at most one; any block
//! holding more of the trie (two /32s, a longer share) is marked
//! [`BLOCK_ASK`] and the kernel asks the trie, as it does for every
//! address outside the ranges (node addresses, the world).
use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use observer_ebpf::{
    AddrBlock, AddrInfo, AddrKind, BLOCK_ANSWERS, BLOCK_ASK, BlockRange, MAX_BLOCK_RANGES, Net,
    answering_block,
};
use serde::Serialize;

/// Prefix lengths of a range worth cutting into blocks: a /0 to /7 is no
/// pod range, and a /31 or /32 holds no block.
const RANGE_LENGTHS: std::ops::RangeInclusive<u8> = 8..=30;

/// ADDR_BLOCKS's contents and the ranges CONFIG points into it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockPlan {
    pub ranges: [BlockRange; MAX_BLOCK_RANGES],
    /// Entries `0..entries.len()`; the rest of the array is unused.
    pub entries: Vec<AddrBlock>,
    pub summary: BlockSummary,
}

/// What the plan covers, for the agent's status and start-up line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlockSummary {
    /// Ranges classified by block: "10.244.0.0/16 in /24 blocks".
    pub ranges: Vec<String>,
    /// Entries in use, of `capacity`.
    pub entries: usize,
    pub capacity: u32,
    /// Blocks left to the trie (more than one address of it inside).
    pub asking: usize,
    /// Pod ranges left to the trie, and why.
    pub left_out: Vec<String>,
}

impl BlockSummary {
    /// One line: what new flows are classified by block, what is not.
    pub fn describe(&self) -> String {
        let mut out = match self.ranges.is_empty() {
            true => "new flows' addresses classified by the address trie alone".to_string(),
            false => format!(
                "new flows' pod addresses classified by block: {} ({} of {} entries, {} left to the trie)",
                self.ranges.join(", "),
                self.entries,
                self.capacity,
                self.asking
            ),
        };
        if !self.left_out.is_empty() {
            out.push_str(&format!(
                "; left to the trie: {} (--addr-block-capacity)",
                self.left_out.join("; ")
            ));
        }
        out
    }
}

/// What the trie answers when it holds nothing for an address: the
/// kernel's default.
const NOTHING: AddrInfo = AddrInfo {
    net: Net::External as u8,
    kind: u8::MAX,
    _pad: [0; 2],
    node: 0,
};

/// The plan for the trie `addrs` in an array of `capacity` entries.
pub fn plan(addrs: &BTreeMap<Ipv4Net, AddrInfo>, capacity: u32) -> BlockPlan {
    let mut plan = BlockPlan {
        summary: BlockSummary {
            capacity,
            ..BlockSummary::default()
        },
        ..BlockPlan::default()
    };
    let mut chosen: Vec<Ipv4Net> = Vec::new();
    let candidates = addrs.iter().filter(|(net, info)| {
        info.kind == AddrKind::PodNetwork.wire()
            && info.node == 0
            && RANGE_LENGTHS.contains(&net.prefix_len())
    });
    for (range, _) in candidates {
        // Ranges must not overlap: the kernel takes the first that holds
        // an address, and each block's answer is computed for one range.
        if let Some(other) = chosen
            .iter()
            .find(|c| c.contains(range) || range.contains(*c))
        {
            plan.summary
                .left_out
                .push(format!("{range}: overlaps {other}"));
            continue;
        }
        if chosen.len() == MAX_BLOCK_RANGES {
            plan.summary.left_out.push(format!(
                "{range}: only {MAX_BLOCK_RANGES} ranges are classified by block"
            ));
            continue;
        }
        let block_len = block_length(addrs, range);
        let blocks = 1usize << (block_len - range.prefix_len());
        let free = (capacity as usize).saturating_sub(plan.entries.len());
        if blocks > free {
            plan.summary.left_out.push(format!(
                "{range}: {blocks} /{block_len} blocks, {free} entries left of {capacity}"
            ));
            continue;
        }
        let offset = plan.entries.len();
        plan.ranges[chosen.len()] = BlockRange {
            base: u32::from(range.network()),
            mask: u32::from(range.netmask()),
            offset: offset as u32,
            shift: 32 - block_len,
            _pad: [0; 3],
        };
        plan.entries.extend(entries(addrs, range, block_len));
        plan.summary
            .ranges
            .push(format!("{range} in /{block_len} blocks"));
        chosen.push(*range);
    }
    plan.summary.entries = plan.entries.len();
    plan.summary.asking = plan.entries.iter().filter(|e| e.state == BLOCK_ASK).count();
    plan
}

/// The block length of `range`: the commonest length of the shorter-than
/// /32 prefixes inside it (its nodes' shares), the longer on a tie; the
/// range itself when it holds none.
fn block_length(addrs: &BTreeMap<Ipv4Net, AddrInfo>, range: &Ipv4Net) -> u8 {
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for net in addrs.keys() {
        if net.prefix_len() > range.prefix_len() && net.prefix_len() < 32 && range.contains(net) {
            *counts.entry(net.prefix_len()).or_default() += 1;
        }
    }
    counts
        .iter()
        .max_by_key(|(len, count)| (**count, **len))
        .map_or(range.prefix_len(), |(len, _)| {
            (*len).min(*RANGE_LENGTHS.end())
        })
}

/// One entry per /`block_len` block of `range`, each what the trie answers
/// for its addresses, or [`BLOCK_ASK`].
fn entries(addrs: &BTreeMap<Ipv4Net, AddrInfo>, range: &Ipv4Net, block_len: u8) -> Vec<AddrBlock> {
    let blocks = 1usize << (block_len - range.prefix_len());
    let base = u32::from(range.network());
    let index = |addr: u32| ((addr - base) >> (32 - block_len)) as usize;
    // The longest prefix covering each whole block, and what lies inside.
    let mut cover: Vec<Option<(u8, AddrInfo)>> = vec![None; blocks];
    let mut inner: Vec<(usize, Option<(u32, AddrInfo)>)> = vec![(0, None); blocks];
    for (net, info) in addrs {
        let len = net.prefix_len();
        let start = u32::from(net.network());
        let span = if net.contains(range) {
            0..blocks
        } else if range.contains(net) && len <= block_len {
            let first = index(start);
            first..first + (1usize << (block_len - len))
        } else if range.contains(net) {
            let slot = &mut inner[index(start)];
            slot.0 += 1;
            if len == 32 {
                slot.1 = Some((start, *info));
            }
            continue;
        } else {
            continue;
        };
        for block in &mut cover[span] {
            if block.is_none_or(|(longest, _)| len > longest) {
                *block = Some((len, *info));
            }
        }
    }
    cover
        .into_iter()
        .zip(inner)
        .map(|(cover, inner)| {
            let info = cover.map_or(NOTHING, |(_, info)| info);
            match inner {
                (0, _) => AddrBlock {
                    info,
                    state: BLOCK_ANSWERS,
                    ..AddrBlock::default()
                },
                (1, Some((exact, exact_info))) => AddrBlock {
                    info,
                    exact_info,
                    exact,
                    state: BLOCK_ANSWERS,
                    _pad: [0; 3],
                },
                _ => AddrBlock::default(),
            }
        })
        .collect()
}

impl BlockPlan {
    /// What the kernel answers from the plan for `addr`: `None` when it
    /// asks the trie. The model the tests hold against the trie.
    pub fn answer(&self, addr: std::net::Ipv4Addr) -> Option<AddrInfo> {
        let host = u32::from(addr);
        answering_block(&self.ranges, host, |index| self.entries.get(index as usize))
            .map(|block| block.info_for(host))
    }

    /// The writes that take the kernel's array from `self` to `next`, in
    /// order: an entry stops answering before it changes, and answers
    /// again only once whole. (index, value) pairs.
    pub fn writes_to(&self, next: &BlockPlan) -> Vec<(u32, AddrBlock)> {
        let mut out = Vec::new();
        for (i, new) in next.entries.iter().enumerate() {
            let old = self.entries.get(i).copied().unwrap_or_default();
            if old == *new {
                continue;
            }
            let asking = |block: AddrBlock| AddrBlock {
                state: BLOCK_ASK,
                ..block
            };
            if old.state == BLOCK_ANSWERS {
                out.push((i as u32, asking(old)));
            }
            if asking(old) != asking(*new) {
                out.push((i as u32, asking(*new)));
            }
            if new.state == BLOCK_ANSWERS {
                out.push((i as u32, *new));
            }
        }
        out
    }
}

/// The trie's answer for `addr` over `addrs`: longest prefix wins.
#[cfg(test)]
fn trie_answer(addrs: &BTreeMap<Ipv4Net, AddrInfo>, addr: std::net::Ipv4Addr) -> AddrInfo {
    addrs
        .iter()
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(NOTHING, |(_, info)| *info)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn info(net: Net, kind: AddrKind, node: u32) -> AddrInfo {
        AddrInfo {
            net: net.wire(),
            kind: kind.wire(),
            _pad: [0; 2],
            node,
        }
    }

    /// Flannel and Cilium ranges, `nodes` nodes with a /24 share of each,
    /// an overlay /32 in each share and an underlay /32 outside.
    fn cluster(nodes: u32) -> BTreeMap<Ipv4Net, AddrInfo> {
        let mut addrs = BTreeMap::new();
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        addrs.insert(
            net("10.244.0.0/16"),
            info(Net::Legacy, AddrKind::PodNetwork, 0),
        );
        addrs.insert(
            net("10.245.0.0/16"),
            info(Net::Cilium, AddrKind::PodNetwork, 0),
        );
        for n in 0..nodes {
            let node = 0xc0a8_3200 + n + 1;
            let lo = n as u8;
            addrs.insert(
                net(&format!("10.244.{lo}.0/24")),
                info(Net::Legacy, AddrKind::PodNetwork, node),
            );
            addrs.insert(
                net(&format!("10.245.{lo}.0/24")),
                info(Net::Cilium, AddrKind::PodNetwork, node),
            );
            addrs.insert(
                net(&format!("10.244.{lo}.0/32")),
                info(Net::Host, AddrKind::NodeOverlay, node),
            );
            addrs.insert(
                net(&format!("10.245.{lo}.17/32")),
                info(Net::Host, AddrKind::NodeOverlay, node),
            );
            addrs.insert(
                Ipv4Net::new(Ipv4Addr::from(node), 32).unwrap(),
                info(Net::Host, AddrKind::NodeUnderlay, node),
            );
        }
        addrs
    }

    /// Every address of the ranges and around them answers as the trie
    /// does, or is left to it.
    fn agrees(addrs: &BTreeMap<Ipv4Net, AddrInfo>, plan: &BlockPlan, probes: &[Ipv4Addr]) {
        for addr in probes {
            if let Some(answer) = plan.answer(*addr) {
                assert_eq!(answer, trie_answer(addrs, *addr), "{addr}");
            }
        }
    }

    fn sweep() -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        for third in [0u8, 1, 2, 3, 7, 100, 200, 254, 255] {
            for last in [0u8, 1, 16, 17, 18, 128, 255] {
                for second in [243u8, 244, 245, 246] {
                    out.push(Ipv4Addr::new(10, second, third, last));
                }
            }
        }
        out.push(Ipv4Addr::new(192, 168, 50, 1));
        out.push(Ipv4Addr::new(8, 8, 8, 8));
        out
    }

    #[test]
    fn pod_ranges_are_cut_into_their_shares_and_answer_like_the_trie() {
        let addrs = cluster(3);
        let plan = plan(&addrs, 65_536);
        assert_eq!(
            plan.summary.ranges,
            ["10.244.0.0/16 in /24 blocks", "10.245.0.0/16 in /24 blocks"]
        );
        assert_eq!(plan.entries.len(), 512);
        assert_eq!(plan.summary.asking, 0);
        agrees(&addrs, &plan, &sweep());
        // Pod addresses are answered; node underlays left to the trie.
        let pod = plan.answer(Ipv4Addr::new(10, 244, 1, 5)).unwrap();
        assert_eq!((pod.net, pod.node), (Net::Legacy.wire(), 0xc0a8_3202));
        let overlay = plan.answer(Ipv4Addr::new(10, 245, 2, 17)).unwrap();
        assert_eq!(overlay.kind, AddrKind::NodeOverlay.wire());
        let unassigned = plan.answer(Ipv4Addr::new(10, 244, 200, 1)).unwrap();
        assert_eq!((unassigned.net, unassigned.node), (Net::Legacy.wire(), 0));
        assert_eq!(plan.answer(Ipv4Addr::new(192, 168, 50, 1)), None);
    }

    #[test]
    fn a_block_holding_more_than_one_address_asks_the_trie() {
        let mut addrs = cluster(2);
        let second = "10.244.1.9/32".parse().unwrap();
        addrs.insert(second, info(Net::Host, AddrKind::NodeOverlay, 9));
        let plan = plan(&addrs, 65_536);
        assert_eq!(plan.summary.asking, 1);
        assert_eq!(plan.answer(Ipv4Addr::new(10, 244, 1, 9)), None);
        assert_eq!(plan.answer(Ipv4Addr::new(10, 244, 1, 5)), None);
        agrees(&addrs, &plan, &sweep());
    }

    #[test]
    fn ranges_beyond_the_capacity_or_overlapping_are_left_to_the_trie() {
        let addrs = cluster(2);
        let small = plan(&addrs, 300);
        assert_eq!(small.summary.ranges, ["10.244.0.0/16 in /24 blocks"]);
        assert_eq!(
            small.summary.left_out,
            ["10.245.0.0/16: 256 /24 blocks, 44 entries left of 300"]
        );
        agrees(&addrs, &small, &sweep());
        assert_eq!(plan(&addrs, 0).entries.len(), 0);

        let mut nested = addrs.clone();
        nested.insert(
            "10.244.0.0/15".parse().unwrap(),
            info(Net::Legacy, AddrKind::PodNetwork, 0),
        );
        let nested_plan = plan(&nested, 65_536);
        assert_eq!(nested_plan.summary.ranges.len(), 1);
        assert_eq!(nested_plan.summary.left_out.len(), 2);
        agrees(&nested, &nested_plan, &sweep());
    }

    #[test]
    fn every_share_of_a_full_range_answers_and_agrees() {
        let addrs = cluster(256);
        let plan = plan(&addrs, 65_536);
        assert_eq!(plan.summary.asking, 0);
        agrees(&addrs, &plan, &sweep());
    }

    #[test]
    fn rewrites_never_leave_a_half_written_answer() {
        let before = plan(&cluster(2), 65_536);
        let mut grown = cluster(3);
        grown.insert(
            "10.244.1.9/32".parse().unwrap(),
            info(Net::Host, AddrKind::NodeOverlay, 9),
        );
        let after = plan(&grown, 65_536);
        let writes = before.writes_to(&after);
        let mut array = before.entries.clone();
        array.resize(after.entries.len(), AddrBlock::default());
        for (i, value) in &writes {
            let old = array[*i as usize];
            // An answer is never changed in place: it stops answering
            // first, and starts again only as the final value.
            if old.state == BLOCK_ANSWERS {
                assert_eq!(value.state, BLOCK_ASK, "entry {i} changed while answering");
            }
            if value.state == BLOCK_ANSWERS {
                assert_eq!(*value, after.entries[*i as usize]);
            }
            array[*i as usize] = *value;
        }
        assert_eq!(array, after.entries);
        assert!(before.writes_to(&before).is_empty());
    }
}
