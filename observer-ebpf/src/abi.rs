//! Boundary structs, enumerations and map names.
//!
//! Every struct is `#[repr(C)]` with explicit padding and no `bool`, and its
//! size is asserted at compile time: the kernel and userspace read the same
//! bytes, and a field added on one side only must fail the build.

/// Map names, shared so a rename cannot break the loader silently.
pub mod map {
    /// `Array<Config>`, one entry: encapsulation ports and this node.
    pub const CONFIG: &str = "CONFIG";
    /// `LpmTrie<u32, AddrInfo>`: every address range the cluster knows.
    pub const ADDRS: &str = "ADDRS";
    /// `Array<AddrBlock>`, written by userspace: ADDRS's answers for the
    /// cluster's pod ranges, one entry per block of a range
    /// ([`Config::block_ranges`]), so a new flow's addresses are classified
    /// by arithmetic and an array read whatever the cluster's size. What
    /// an entry cannot answer exactly is left to ADDRS.
    pub const ADDR_BLOCKS: &str = "ADDR_BLOCKS";
    /// `HashMap<FlowKey, FlowStats>`: one entry per flow per observation point.
    pub const FLOWS: &str = "FLOWS";
    /// `HashMap<PeerKey, u32>`, written by userspace: the PEER_STATS slot of
    /// each known (peer node, overlay, direction), with
    /// [`PEER_SLOT_RETIRED`](super::PEER_SLOT_RETIRED) set for peers that
    /// left the shape.
    pub const PEER_SLOTS: &str = "PEER_SLOTS";
    /// `PerCpuArray<PeerStats>`: underlay traffic of known peers, by slot.
    /// Flows remember their slot, so a known flow counts its peer without
    /// a hash lookup.
    pub const PEER_STATS: &str = "PEER_STATS";
    /// `PerCpuHashMap<PeerKey, PeerStats>`: underlay traffic of peers that
    /// have no slot (not in the cluster shape, or not yet).
    pub const PEERS: &str = "PEERS";
    /// `PerCpuArray<SlotCacheEntry>`: PEER_SLOTS's answers this CPU met
    /// lately, direct-mapped by a hash of the key, so a new flow towards a
    /// peer finds its slot without a hash-map lookup. The process's own,
    /// never pinned: a restarted agent starts it empty.
    pub const SLOT_CACHE: &str = "SLOT_CACHE";
    /// `PerCpuArray<u64>` indexed by [`Counter`](super::Counter).
    pub const COUNTERS: &str = "COUNTERS";
    /// `Array<DropConfig>`, one entry, written by userspace: where the
    /// `skb:kfree_skb` record and `struct sk_buff` keep what the drop
    /// program reads (from tracefs and BTF, as this kernel lays them out).
    pub const DROP_CONFIG: &str = "DROP_CONFIG";
    /// `PerCpuHashMap<DropKey, u64>`: packets of the cluster the kernel
    /// dropped, by reason, peer node, overlay and network pair.
    pub const DROPS: &str = "DROPS";
    /// `Array<u64>`, one entry: CLOCK_MONOTONIC as userspace last wrote it
    /// (every sample, before every sweep). A known flow's `last_seen_ns`
    /// is this, not the kernel clock: the clock helper costs more than the
    /// rest of the known-flow path's counting, and ageing needs seconds.
    /// 0 (never written) makes the programs read the kernel clock.
    pub const CLOCK: &str = "CLOCK";
    /// `HashMap<FlowKey, PendingHandshake>`: TCP handshakes this node's
    /// clients opened over the underlay that no answer has reached yet,
    /// keyed by the SYN's underlay egress flow. The answer (SYN-ACK or
    /// RST on the reverse flow) removes the entry and counts the outcome
    /// towards the client's peer; userspace removes entries older than
    /// [`HANDSHAKE_GRACE_NS`](super::HANDSHAKE_GRACE_NS) as unanswered.
    pub const HANDSHAKES: &str = "HANDSHAKES";
    /// `HashMap<FragKey, FragNeeded>`: ICMP "fragmentation needed"
    /// messages about this node's packets towards a peer node, per
    /// overlay and [`MtuHop`](super::MtuHop), with the latest one's
    /// next-hop MTU. Not per CPU: the latest MTU is one value, and these
    /// messages are rare (every sender rate-limits them).
    pub const FRAG_NEEDED: &str = "FRAG_NEEDED";
}

/// Default capacities; userspace overrides them at load time.
/// [`FRAG_NEEDED`](map::FRAG_NEEDED) entries: peers x overlays x hops
/// that were told a packet did not fit (a node of 2,000 peers on both
/// overlays, both hops: 8,000). Not preallocated: a healthy node holds
/// none. Beyond it, counted as [`Counter::FragMapFull`].
pub const DEFAULT_FRAG_CAPACITY: u32 = 8_192;
pub const DEFAULT_FLOW_CAPACITY: u32 = 131_072;
/// Per-peer keys counted in the PEERS hash: every key until it gets a slot
/// (a sample after its first packet; what it counted before stays here),
/// pairs with an external or unknown end, peers not in the shape, keys
/// beyond the slots. Not preallocated.
pub const DEFAULT_PEER_CAPACITY: u32 = 65_536;
/// Slots for the (peer, overlay, direction, network pair) keys in use:
/// handed out as keys appear, so this is the pairs that carry traffic, not
/// the shape's size (a node of 1,000 peers using both overlays both ways
/// with two network pairs each: 8,000). PEER_STATS is per CPU and
/// preallocated: 64 B x slots per CPU (512 KiB; 32 MiB on 64 CPUs). Keys
/// beyond it are counted in the PEERS hash.
pub const DEFAULT_PEER_SLOT_CAPACITY: u32 = 8_192;
/// [`SLOT_CACHE`](map::SLOT_CACHE) entries per CPU (16 B each, 64 KiB):
/// a power of two, indexed by the top bits of a hash of the key.
pub const SLOT_CACHE_ENTRIES: u32 = 4096;
/// Networks whose pairs get a PEER_STATS slot: what pods and nodes of the
/// cluster send over an overlay.
pub const SLOTTED_NETS: [Net; 3] = [Net::Legacy, Net::Cilium, Net::Host];
pub const DEFAULT_ADDR_CAPACITY: u32 = 16_384;
/// ADDR_BLOCKS entries (24 B each, 1.5 MiB): a /16 of /24 blocks takes
/// 256, a /12 of /26 blocks 16,384. A range that does not fit is left to
/// the ADDRS trie, and said so.
pub const DEFAULT_ADDR_BLOCK_CAPACITY: u32 = 65_536;
/// Pod ranges classified through ADDR_BLOCKS at most.
pub const MAX_BLOCK_RANGES: usize = 4;
/// Handshakes in flight at once: at 1,000 new connections a second and
/// the grace below, a few thousand at most, even when none is answered.
pub const DEFAULT_HANDSHAKE_CAPACITY: u32 = 16_384;

/// A handshake answered later than this after its first SYN was not
/// answered in time: Linux retries a SYN after 1 s, so a later answer
/// means the first SYN, or its answer, was lost. Userspace expires
/// pending handshakes older than this as unanswered, with the same value.
pub const HANDSHAKE_GRACE_NS: u64 = 800_000_000;

/// Number of encapsulation port slots in [`Config`].
pub const MAX_ENCAP_PORTS: usize = 8;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr => $label:literal,)+ }) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value as it crosses the kernel boundary.
            #[inline(always)]
            pub const fn wire(self) -> u8 {
                self as u8
            }

            /// Decodes a wire value; `None` for a value this build does not know.
            pub const fn from_wire(value: u8) -> Option<Self> {
                match value {
                    $(v if v == $value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// Lower-case name, as used in metric labels and JSON.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Decodes a [`label`](Self::label).
            pub fn from_label(label: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.label() == label)
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.pad(self.label())
            }
        }

        // Serialised by name at the edges (JSON), never by wire value.
        #[cfg(feature = "user")]
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.label())
            }
        }

        #[cfg(feature = "user")]
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $name;
                    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " name"))
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::from_label(v).ok_or_else(|| {
                            E::unknown_variant(v, &[$($label,)+])
                        })
                    }
                }
                d.deserialize_str(Visitor)
            }
        }
    };
}

wire_enum! {
    /// What an address belongs to.
    Net {
        /// Not in any range the cluster told us about.
        External = 0 => "external",
        Legacy = 1 => "legacy",
        Cilium = 2 => "cilium",
        /// A node's own address, underlay or overlay.
        Host = 3 => "host",
        /// Only in [`PeerKey`]: a packet counted towards its peer without
        /// a flow (its inner packet could not be parsed), so without
        /// networks. Both ends parse the same bytes, so both count it here.
        Unknown = 4 => "unknown",
    }
}

wire_enum! {
    /// The overlay a packet travelled (or will travel) on.
    Overlay {
        /// Seen where the wire is not known yet: pod veths, `cilium_host`.
        None = 0 => "none",
        Legacy = 1 => "legacy",
        Cilium = 2 => "cilium",
        /// Pod traffic on the underlay without encapsulation (routed CNIs).
        Native = 3 => "native",
    }
}

wire_enum! {
    /// Where on the node a hook sits.
    Point {
        Underlay = 0 => "underlay",
        Overlay = 1 => "overlay",
        Host = 2 => "host",
        Pod = 3 => "pod",
    }
}

wire_enum! {
    /// TC hook direction, from the interface's point of view.
    Direction {
        Ingress = 0 => "ingress",
        Egress = 1 => "egress",
    }
}

wire_enum! {
    /// Kind of an [`ADDRS`](map::ADDRS) entry.
    AddrKind {
        /// A pod CIDR, cluster-wide or one node's share.
        PodNetwork = 0 => "pod_network",
        /// A node's underlay (InternalIP) address.
        NodeUnderlay = 1 => "node_underlay",
        /// A node's address on an overlay (`flannel.1`, `cilium_host`):
        /// what SNAT rewrites cross-overlay sources to.
        NodeOverlay = 2 => "node_overlay",
    }
}

wire_enum! {
    /// How an overlay carries its packets between nodes: a UDP port's
    /// framing, or IP-in-IP (IPv4 protocol 4, Calico's `tunl0`).
    Encap {
        None = 0 => "none",
        Vxlan = 1 => "vxlan",
        Geneve = 2 => "geneve",
        Ipip = 3 => "ipip",
    }
}

wire_enum! {
    /// Where a packet of this node's did not fit, as an ICMP
    /// "fragmentation needed" said ([`FragKey::hop`]).
    MtuHop {
        /// On the underlay, past this node: a router (or the peer) sent
        /// it back about a tunnel packet, or a routed pod's packet, that
        /// this node sent. Its next-hop MTU is the wire's (outer) size.
        Wire = 0 => "wire",
        /// On this node: its own kernel refused a pod's packet (the
        /// overlay device's, or the route's, MTU is smaller than the
        /// pod's) and told the pod so, on the pod's veth. Its next-hop MTU
        /// is an inner packet's size.
        Node = 1 => "node",
        /// Past the tunnel, on the peer: its kernel refused a pod's packet
        /// of this node's once out of the tunnel (the peer's pod veth, or
        /// its route, smaller than the packet: two CNIs' MTUs meeting)
        /// and told the pod, through the tunnel; counted on the pod's
        /// veth as the message reaches it. Its next-hop MTU is an inner
        /// packet's size.
        Peer = 2 => "peer",
    }
}

wire_enum! {
    /// Which endpoint of a flow is a node overlay address.
    Snat {
        None = 0 => "none",
        /// Source is a node overlay address: the flow left a node SNATed.
        Source = 1 => "source",
        /// Destination is a node overlay address: replies to a SNATed flow.
        Destination = 2 => "destination",
    }
}

wire_enum! {
    /// Index into [`COUNTERS`](map::COUNTERS): packets seen, and every reason
    /// a packet was not (fully) turned into a flow.
    Counter {
        SeenUnderlay = 0 => "seen_underlay",
        SeenOverlay = 1 => "seen_overlay",
        SeenHost = 2 => "seen_host",
        SeenPod = 3 => "seen_pod",
        /// Ethertype is neither IPv4, IPv6 nor 802.1Q.
        NonIp = 4 => "non_ip",
        Ipv6 = 5 => "ipv6",
        /// More than one VLAN tag.
        StackedVlan = 6 => "stacked_vlan",
        /// A non-first IPv4 fragment: no L4 header to key a flow on.
        Fragment = 7 => "fragment",
        TruncatedEth = 8 => "truncated_eth",
        TruncatedVlan = 9 => "truncated_vlan",
        TruncatedIpv4 = 10 => "truncated_ipv4",
        TruncatedIpv4Options = 11 => "truncated_ipv4_options",
        /// IPv4 version not 4, IHL under 5 or total length under the header.
        BadIpv4 = 12 => "bad_ipv4",
        TruncatedUdp = 13 => "truncated_udp",
        TruncatedVxlan = 14 => "truncated_vxlan",
        /// VXLAN header without the I (valid VNI) flag.
        BadVxlan = 15 => "bad_vxlan",
        TruncatedGeneve = 16 => "truncated_geneve",
        TruncatedGeneveOptions = 17 => "truncated_geneve_options",
        /// Geneve version not 0 or protocol not Ethernet (0x6558).
        BadGeneve = 18 => "bad_geneve",
        InnerNonIp = 19 => "inner_non_ip",
        InnerIpv6 = 20 => "inner_ipv6",
        InnerFragment = 21 => "inner_fragment",
        TruncatedInnerEth = 22 => "truncated_inner_eth",
        TruncatedInnerIpv4 = 23 => "truncated_inner_ipv4",
        /// TCP, UDP or ICMP header cut short (outer plain or inner).
        TruncatedL4 = 24 => "truncated_l4",
        /// Plain underlay packet that is neither pod traffic nor node to node.
        NotCluster = 25 => "not_cluster",
        /// A new flow was refused by the full FLOWS map.
        FlowMapFull = 26 => "flow_map_full",
        /// A new peer entry was refused by the full PEERS map.
        PeerMapFull = 27 => "peer_map_full",
        /// A handshake was not tracked: the HANDSHAKES map was full.
        HandshakeMapFull = 28 => "handshake_map_full",
        /// An underlay packet of crossover's own control traffic
        /// ([`Config::control_port`]) whose TCP events were left out of
        /// the peer counters (the packet itself counts towards delivery).
        Control = 29 => "control",
        /// A kernel drop of cluster traffic was not counted: the DROPS
        /// map was full.
        DropMapFull = 30 => "drop_map_full",
        /// A new PEERS entry was refused for want of memory, not room:
        /// PEERS is not preallocated, and a burst of new keys can empty
        /// the kernel's allocation cache before it refills. The key is
        /// counted from a later packet; keys in PEER_STATS slots never
        /// allocate.
        PeerAllocFailed = 31 => "peer_alloc_failed",
        /// An ICMP "fragmentation needed" that quoted no packet of this
        /// node's towards a peer node (another host's packet, an address
        /// no node owns, a protocol that is no overlay's, a quote cut
        /// before what tells): not counted per path.
        FragNeededForeign = 32 => "frag_needed_foreign",
        /// A path's first "fragmentation needed" was not counted: the
        /// FRAG_NEEDED map was full.
        FragMapFull = 33 => "frag_map_full",
    }
}

/// Number of [`Counter`] slots; the COUNTERS map has exactly this many.
pub const COUNTER_SLOTS: u32 = 34;

/// Entries of [`DROPS`](map::DROPS): reasons x peers x overlays x network
/// pairs that actually drop, a few dozen on a sick node.
pub const DEFAULT_DROP_CAPACITY: u32 = 4096;

/// The single entry of [`DROP_CONFIG`](map::DROP_CONFIG): byte offsets,
/// as this kernel lays them out, of what the drop program reads. All zero
/// (never written) disables it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct DropConfig {
    /// In the tracepoint's record: `skbaddr`, `protocol`, `reason`.
    pub record_skb: u32,
    pub record_protocol: u32,
    pub record_reason: u32,
    /// In `struct sk_buff`: `head` (pointer) and `network_header` (u16,
    /// from `head`), `dev` and `sk` (pointers, either may be null).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    /// `net_device.nd_net` and `sock_common.skc_net` (a `struct net *`),
    /// and where `struct net` keeps its namespace's inode number.
    pub dev_net: u32,
    pub sk_net: u32,
    pub net_inum: u32,
    /// Only drops in the network namespace of this inode number are
    /// counted (the node's: several lab nodes share one kernel); 0: every
    /// namespace. A drop whose namespace cannot be told (no device, no
    /// socket) is counted.
    pub netns_inum: u32,
    pub _pad: u32,
}

/// Key of [`DROPS`](map::DROPS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct DropKey {
    /// `enum skb_drop_reason` value; its name comes from the kernel
    /// (tracefs), not from this crate: the enum grows every release.
    pub reason: u32,
    /// The other node of the packet: the tunnel's other end, else the node
    /// owning the remote address; 0 for none (local, or not a node's).
    pub peer: u32,
    /// [`Overlay`] wire value.
    pub overlay: u8,
    /// [`Net`] wire values of the (inner) source and destination.
    pub src_net: u8,
    pub dst_net: u8,
    /// [`Direction`] wire value: egress towards `peer` (or leaving for no
    /// node), ingress from it.
    pub direction: u8,
}

/// One encapsulation port: which overlay uses it and how it is framed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct EncapPort {
    /// UDP destination port, host byte order; 0 marks an unused slot.
    pub port: u16,
    /// [`Encap`] wire value.
    pub encap: u8,
    /// [`Overlay`] wire value.
    pub overlay: u8,
}

/// The single entry of [`CONFIG`](map::CONFIG).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Config {
    pub encap_ports: [EncapPort; MAX_ENCAP_PORTS],
    /// This node's underlay address: flows towards any other node's ranges
    /// get that node as their peer.
    pub local_node: u32,
    /// [`Overlay`] wire value of the overlay that travels as IP-in-IP
    /// (IPv4 protocol 4); [`Overlay::None`] when none does, and protocol 4
    /// is then left out like any other non-cluster protocol.
    pub ipip_overlay: u8,
    pub _pad: u8,
    /// TCP port of crossover's own control connections (the agents' API,
    /// host byte order; 0: none). A flow with it at either end is marked
    /// [`FlowStats::control`] when first seen: its packets count towards
    /// delivery, its TCP events (handshakes, segments, retransmits) are
    /// left out of the peer counters and counted as [`Counter::Control`],
    /// so the gate never judges the traffic of its own readings.
    pub control_port: u16,
    /// The pod ranges ADDR_BLOCKS answers for, tried in order; unused
    /// ones have `shift` 0.
    pub block_ranges: [BlockRange; MAX_BLOCK_RANGES],
}

impl Config {
    /// The encapsulation configured on UDP destination port `port`, if
    /// any.
    #[inline(always)]
    pub fn encap_for(&self, port: u16) -> Option<EncapPort> {
        self.encap_ports
            .into_iter()
            .find(|&slot| slot.port == port && slot.encap != Encap::None.wire())
    }

    /// Whether `overlay` (a wire value) travels in a tunnel: a port's, or
    /// IP-in-IP.
    #[inline(always)]
    pub fn tunnels(&self, overlay: u8) -> bool {
        self.ipip_overlay == overlay
            || self
                .encap_ports
                .iter()
                .any(|slot| slot.overlay == overlay && slot.encap != Encap::None.wire())
    }
}

/// One range of [`Config::block_ranges`]: an address `a` (host byte
/// order) with `a & mask == base` is classified by ADDR_BLOCKS entry
/// `offset + ((a - base) >> shift)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct BlockRange {
    /// The range's first address, host byte order.
    pub base: u32,
    /// The range's netmask, host byte order.
    pub mask: u32,
    /// Its first entry in ADDR_BLOCKS.
    pub offset: u32,
    /// 32 minus the block's prefix length; 0 marks an unused range.
    pub shift: u8,
    pub _pad: [u8; 3],
}

impl BlockRange {
    /// The ADDR_BLOCKS index of `host` (an address in host byte order)
    /// when this range holds it. The kernel and userspace's model of it
    /// both find entries here.
    #[inline(always)]
    pub fn index_of(&self, host: u32) -> Option<u32> {
        (host & self.mask == self.base).then(|| self.offset + ((host - self.base) >> self.shift))
    }
}

impl AddrBlock {
    /// What the entry answers for `host`, an address of its block.
    #[inline(always)]
    pub fn info_for(&self, host: u32) -> AddrInfo {
        if self.exact != 0 && host == self.exact {
            self.exact_info
        } else {
            self.info
        }
    }
}

/// The ADDR_BLOCKS entry that answers for `host` (an address in host
/// byte order), through `ranges` (CONFIG's) and `entry` (the array's entry
/// at an index); `None` when the trie must answer: `host` in no range, or
/// its block asking. The kernel and userspace's model of it both search
/// here. A reference, not an `Option<AddrInfo>`, so the kernel never holds
/// an undefined payload.
#[inline(always)]
pub fn answering_block<'a>(
    ranges: &[BlockRange],
    host: u32,
    entry: impl Fn(u32) -> Option<&'a AddrBlock>,
) -> Option<&'a AddrBlock> {
    for range in ranges {
        if range.shift == 0 {
            return None;
        }
        if let Some(index) = range.index_of(host) {
            return entry(index).filter(|block| block.state == BLOCK_ANSWERS);
        }
    }
    None
}

/// [`AddrBlock::state`]: ADDRS has more inside this block than one
/// address (or the entry is being rewritten): ask it. All zeroes, so an
/// entry never written is this.
pub const BLOCK_ASK: u8 = 0;
/// [`AddrBlock::state`]: the entry answers for every address in its block.
pub const BLOCK_ANSWERS: u8 = 1;

/// Value of [`ADDR_BLOCKS`](map::ADDR_BLOCKS): what ADDRS answers for a
/// block's addresses, computed by userspace from the same prefixes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct AddrBlock {
    /// The answer for the block's addresses but `exact`.
    pub info: AddrInfo,
    /// The answer for `exact` (a node's overlay address inside its block).
    pub exact_info: AddrInfo,
    /// The one /32 of ADDRS inside the block, host byte order; 0 for none.
    pub exact: u32,
    /// [`BLOCK_ASK`] or [`BLOCK_ANSWERS`]. Written last when an entry
    /// becomes an answer and first when it stops being one, so a reader
    /// never takes a half-written entry for an answer.
    pub state: u8,
    pub _pad: [u8; 3],
}

/// Value of an [`ADDRS`](map::ADDRS) entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct AddrInfo {
    /// [`Net`] wire value.
    pub net: u8,
    /// [`AddrKind`] wire value.
    pub kind: u8,
    pub _pad: [u8; 2],
    /// Underlay address of the node this range lives on; 0 when cluster-wide.
    pub node: u32,
}

/// Key of [`FLOWS`](map::FLOWS): one direction of a conversation, as seen
/// at one hook. The same packet seen on a pod veth, an overlay device and
/// the underlay makes three flows, which is how loss is located on a node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP ports; ICMP echo: identifier in `src_port`; other ICMP:
    /// `type << 8 | code` in `dst_port`.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// [`Point`] wire value.
    pub point: u8,
    /// [`Direction`] wire value.
    pub direction: u8,
    pub _pad: u8,
}

/// Value of [`FLOWS`](map::FLOWS). Counters are updated atomically (the
/// handshake bytes excepted); the classification is written once, when
/// the flow is first seen.
///
/// 64 bytes, so a FLOWS element (the kernel's 48-byte header, the 16-byte
/// key and this) is two cache lines, not three, and FLOWS preallocates a
/// third less (a 48-byte larger element cost a new flow 20-70 ns more;
/// against the 112-byte one the bench measured no difference, README).
/// What fits only in more room is derived: the SNAT address is one of
/// the key's ends, an echo flow's requests are its packets less its
/// replies. Read the typed values through the methods; the raw fields
/// are the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FlowStats {
    pub packets: u64,
    /// Sum of IPv4 total lengths (inner packet for encapsulated traffic).
    pub bytes: u64,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the first
    /// packet.
    pub first_seen_ns: u64,
    /// The latest of that and the [`CLOCK`](map::CLOCK) userspace wrote
    /// before a later packet: to the sample interval.
    pub last_seen_ns: u64,
    /// TCP: segments with payload, SYN or FIN, what retransmissions are
    /// out of. An ICMP echo flow ([`FlowKey::is_echo`]): its echo
    /// replies. Read through [`segments`](Self::segments) and
    /// [`echo_replies`](Self::echo_replies).
    pub segments: u64,
    /// Segments whose end did not advance past the highest end seen.
    pub retransmits: u32,
    /// Highest `seq + length` seen, for retransmission detection.
    pub seq_next: u32,
    /// Peer node underlay address: the outer address for encapsulated
    /// traffic, else the node owning the remote endpoint's range; 0 if none.
    pub peer: u32,
    /// PEER_STATS slot + 1 of this flow's (peer, overlay, direction,
    /// networks) on the underlay; 0 off the underlay; [`NO_PEER_SLOT`] when the peer has no
    /// slot (its packets go straight to the PEERS hash).
    pub peer_slot: u32,
    /// SYN without ACK, SYN-ACK and RST segments, each saturating at 255
    /// (a connection has a few; 255 says "a storm").
    pub syns: u8,
    pub syn_acks: u8,
    pub rsts: u8,
    /// OR of every TCP flag byte seen.
    pub tcp_flags: u8,
    /// [`Net`] of source and destination.
    pub src_net: u8,
    pub dst_net: u8,
    /// [`Overlay`] wire value.
    pub overlay: u8,
    /// [`Snat`] wire value in the low two bits ([`snat`](Self::snat)),
    /// [`MARK_CONTROL`](Self::MARK_CONTROL) for crossover's own control
    /// traffic ([`Config::control_port`]): the flow is counted as usual,
    /// its TCP events stay out of the peer counters.
    pub marks: u8,
}

impl FlowStats {
    /// Bits of [`marks`](Self::marks) that hold the [`Snat`] wire value.
    pub const MARK_SNAT: u8 = 0b11;
    /// Bit of [`marks`](Self::marks) set on control traffic.
    pub const MARK_CONTROL: u8 = 1 << 2;

    /// [`marks`](Self::marks) of a flow.
    #[inline(always)]
    pub const fn marks_of(snat: Snat, control: bool) -> u8 {
        snat.wire() | if control { Self::MARK_CONTROL } else { 0 }
    }

    /// [`Snat`] wire value.
    #[inline(always)]
    pub const fn snat(&self) -> u8 {
        self.marks & Self::MARK_SNAT
    }

    /// Crossover's own control traffic.
    #[inline(always)]
    pub const fn control(&self) -> bool {
        self.marks & Self::MARK_CONTROL != 0
    }

    /// The node overlay address involved when [`snat`](Self::snat) is not
    /// [`Snat::None`]: the key's source or destination; 0 when none.
    #[inline(always)]
    pub const fn snat_addr(&self, key: &FlowKey) -> u32 {
        match self.snat() {
            s if s == Snat::Source.wire() => key.src,
            s if s == Snat::Destination.wire() => key.dst,
            _ => 0,
        }
    }

    /// TCP segments with payload, SYN or FIN; 0 for an echo flow.
    #[inline(always)]
    pub const fn segments(&self, key: &FlowKey) -> u64 {
        if key.is_echo() { 0 } else { self.segments }
    }

    /// Echo replies of an echo flow; 0 for any other.
    #[inline(always)]
    pub const fn echo_replies(&self, key: &FlowKey) -> u64 {
        if key.is_echo() { self.segments } else { 0 }
    }

    /// Echo requests of an echo flow (its other packets); 0 for any other.
    /// Saturating: a reader may see a reply counted before its packet.
    #[inline(always)]
    pub const fn echo_requests(&self, key: &FlowKey) -> u64 {
        if key.is_echo() {
            self.packets.saturating_sub(self.segments)
        } else {
            0
        }
    }
}

impl FlowKey {
    /// An ICMP echo flow: request or reply, keyed by the echo identifier
    /// with `dst_port` 0, which no other ICMP message has (type 0 is the
    /// echo reply, whatever its code).
    #[inline(always)]
    pub const fn is_echo(&self) -> bool {
        self.proto == 1 && self.dst_port == 0
    }
}

/// [`FlowStats::peer_slot`] of a flow whose peer had no slot when the flow
/// was created.
pub const NO_PEER_SLOT: u32 = u32::MAX;

/// Bit of a [`PEER_SLOTS`](map::PEER_SLOTS) value marking the slot of a
/// peer that left the cluster shape: the kernel treats the peer as having
/// no slot, and userspace still finds every slot it ever handed out
/// there (slots are never reused), also after a restart.
pub const PEER_SLOT_RETIRED: u32 = 1 << 31;

/// Key of [`PEERS`](map::PEERS) and [`PEER_SLOTS`](map::PEER_SLOTS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct PeerKey {
    /// The peer node's underlay address.
    pub peer: u32,
    /// [`Overlay`] wire value.
    pub overlay: u8,
    /// [`Direction`] wire value: egress is sent to the peer, ingress received.
    pub direction: u8,
    /// [`Net`] of the inner packet's source and destination, as its flow
    /// classified them (the same on both nodes: same addresses, same
    /// ranges); [`Net::Unknown`] when counted without a flow.
    pub src_net: u8,
    pub dst_net: u8,
}

impl PeerKey {
    /// The [`SLOT_CACHE`](map::SLOT_CACHE) entry of this key: the top bits
    /// of a multiplicative hash of its 8 bytes.
    #[inline(always)]
    pub fn cache_index(&self) -> u32 {
        let bits = self.peer as u64
            | (self.overlay as u64) << 32
            | (self.direction as u64) << 40
            | (self.src_net as u64) << 48
            | (self.dst_net as u64) << 56;
        (bits.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOT_CACHE_ENTRIES.trailing_zeros()))
            as u32
    }
}

/// Value of [`SLOT_CACHE`](map::SLOT_CACHE): a key and the PEER_STATS
/// slot + 1 PEER_SLOTS gave it; `slot` 0 is an empty entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCacheEntry {
    pub key: PeerKey,
    pub slot: u32,
    pub _pad: u32,
}

/// Meaning of [`PeerKey`] and of the maps keyed by it. Version 1 had no
/// networks (their bytes were padding, so its keys have the same size);
/// version 2 had [`PeerStats`] of packets and bytes only (16 B);
/// userspace keeps the version in PEER_SLOTS under [`PEER_ABI_KEY`] and
/// recreates pinned per-peer maps that lack it or hold another.
pub const PEER_ABI_VERSION: u32 = 3;

/// The PEER_SLOTS entry that holds [`PEER_ABI_VERSION`] (with
/// [`PEER_SLOT_RETIRED`] set, so the kernel would see "no slot" should it
/// ever look it up). No packet has peer 0.
pub const PEER_ABI_KEY: PeerKey = PeerKey {
    peer: 0,
    overlay: u8::MAX,
    direction: u8::MAX,
    src_net: u8::MAX,
    dst_net: u8::MAX,
};

/// Value of [`PEER_STATS`](map::PEER_STATS) and [`PEERS`](map::PEERS), per
/// CPU: one cache line. Besides delivery (packets), the TCP events the
/// gate's handshake and retransmit signals are made of, so the agent never
/// needs the flow table for them. TCP events are those of the inner
/// packet, decided on its flow (the same rules as [`FlowStats`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct PeerStats {
    pub packets: u64,
    /// Whole frames as the underlay carries them, headers included.
    pub bytes: u64,
    /// TCP segments with payload, SYN or FIN: what retransmissions are
    /// out of.
    pub segments: u64,
    /// Segments whose end did not pass the highest end their flow had seen.
    pub retransmits: u64,
    /// Packets with RST set.
    pub rsts: u64,
    /// The outcomes of handshakes this node's clients opened towards the
    /// peer (egress counters only): answered by a SYN-ACK within
    /// [`HANDSHAKE_GRACE_NS`], answered later (its first SYN or answer
    /// was lost; userspace adds the ones never answered), refused by RST.
    pub handshakes_answered: u64,
    pub handshakes_late: u64,
    pub handshakes_reset: u64,
}

/// Key of [`FRAG_NEEDED`](map::FRAG_NEEDED): the path a "fragmentation
/// needed" was about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FragKey {
    /// The peer node's underlay address: the quoted tunnel packet's
    /// destination, or the node owning the quoted packet's destination.
    pub peer: u32,
    /// [`Overlay`] wire value: the quoted packet's tunnel, native for a
    /// routed pod's packet, or the overlay the pod's flow took.
    pub overlay: u8,
    /// [`MtuHop`] wire value.
    pub hop: u8,
    pub _pad: [u8; 2],
}

/// Value of [`FRAG_NEEDED`](map::FRAG_NEEDED). `messages` is added
/// atomically; the rest is the latest message's, written by whichever
/// CPU saw one last.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct FragNeeded {
    /// Messages since the entry was created.
    pub messages: u64,
    /// The latest message's next-hop MTU (RFC 1191), as sent: the wire's
    /// size for [`MtuHop::Wire`], an inner packet's for [`MtuHop::Node`]
    /// and [`MtuHop::Peer`]. 0 from a router older than RFC 1191.
    pub next_hop_mtu: u16,
    /// Bytes the tunnel adds to an inner packet (outer IPv4, UDP, tunnel
    /// header and options, inner Ethernet; the outer IPv4 header alone
    /// for IP-in-IP), from the quoted headers: `next_hop_mtu - overhead`
    /// is the largest inner packet the path takes. 0 for [`MtuHop::Node`]
    /// and [`MtuHop::Peer`], and for packets in no tunnel.
    pub overhead: u16,
    /// Total length of the quoted packet: a size that did not fit.
    pub refused_len: u16,
    pub _pad: u16,
}

/// Value of [`HANDSHAKES`](map::HANDSHAKES).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct PendingHandshake {
    /// `bpf_ktime_get_coarse_ns` of the first SYN.
    pub opened_ns: u64,
    /// The client's peer counters the outcome is counted in.
    pub peer: PeerKey,
}

/// TCP flag bits as they sit in byte 13 of the header.
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

const _: () = {
    assert!(core::mem::size_of::<DropConfig>() == 48);
    assert!(core::mem::size_of::<DropKey>() == 12);
    assert!(core::mem::size_of::<EncapPort>() == 4);
    assert!(core::mem::size_of::<BlockRange>() == 16);
    assert!(core::mem::size_of::<Config>() == 40 + 16 * MAX_BLOCK_RANGES);
    assert!(core::mem::size_of::<AddrBlock>() == 24);
    assert!(core::mem::size_of::<AddrInfo>() == 8);
    assert!(core::mem::size_of::<FlowKey>() == 16);
    assert!(core::mem::size_of::<FlowStats>() == 64);
    assert!(core::mem::size_of::<PeerKey>() == 8);
    assert!(core::mem::size_of::<SlotCacheEntry>() == 16);
    assert!(SLOT_CACHE_ENTRIES.is_power_of_two());
    assert!(core::mem::size_of::<PeerStats>() == 64);
    assert!(core::mem::size_of::<PendingHandshake>() == 16);
    assert!(core::mem::size_of::<FragKey>() == 8);
    assert!(core::mem::size_of::<FragNeeded>() == 16);
    assert!(Counter::ALL.len() as u32 == COUNTER_SLOTS);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], contain only integers and have
    // explicit padding fields, so every byte pattern is a valid value.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AddrBlock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PeerStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PendingHandshake {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DropConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for DropKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FragNeeded {}
}
