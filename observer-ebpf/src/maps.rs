//! The maps, named as `observer_ebpf::map` says. Capacities here are
//! defaults; userspace sets the real ones before loading.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
};
use observer_ebpf::{
    AddrBlock, AddrInfo, COUNTER_SLOTS, Config, DEFAULT_ADDR_BLOCK_CAPACITY, DEFAULT_ADDR_CAPACITY,
    DEFAULT_DROP_CAPACITY, DEFAULT_FLOW_CAPACITY, DEFAULT_FRAG_CAPACITY,
    DEFAULT_HANDSHAKE_CAPACITY, DEFAULT_PEER_CAPACITY, DEFAULT_PEER_SLOT_CAPACITY, DropConfig,
    DropKey, FlowKey, FlowStats, FragKey, FragNeeded, PeerKey, PeerStats, PendingHandshake,
    SLOT_CACHE_ENTRIES, SlotCacheEntry,
};

#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "ADDRS")]
pub static ADDRS: LpmTrie<u32, AddrInfo> =
    LpmTrie::with_max_entries(DEFAULT_ADDR_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "ADDR_BLOCKS")]
pub static ADDR_BLOCKS: Array<AddrBlock> = Array::with_max_entries(DEFAULT_ADDR_BLOCK_CAPACITY, 0);

#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

#[map(name = "PEER_SLOTS")]
pub static PEER_SLOTS: HashMap<PeerKey, u32> =
    HashMap::with_max_entries(DEFAULT_PEER_SLOT_CAPACITY, 0);

#[map(name = "SLOT_CACHE")]
pub static SLOT_CACHE: PerCpuArray<SlotCacheEntry> =
    PerCpuArray::with_max_entries(SLOT_CACHE_ENTRIES, 0);

#[map(name = "PEER_STATS")]
pub static PEER_STATS: PerCpuArray<PeerStats> =
    PerCpuArray::with_max_entries(DEFAULT_PEER_SLOT_CAPACITY, 0);

/// Not preallocated: it holds the keys in use (each node's few active
/// pairs until they get a slot, and what they counted before), not its
/// capacity, times the CPUs.
#[map(name = "PEERS")]
pub static PEERS: PerCpuHashMap<PeerKey, PeerStats> =
    PerCpuHashMap::with_max_entries(DEFAULT_PEER_CAPACITY, BPF_F_NO_PREALLOC);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map(name = "HANDSHAKES")]
pub static HANDSHAKES: HashMap<FlowKey, PendingHandshake> =
    HashMap::with_max_entries(DEFAULT_HANDSHAKE_CAPACITY, 0);

#[map(name = "CLOCK")]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "DROP_CONFIG")]
pub static DROP_CONFIG: Array<DropConfig> = Array::with_max_entries(1, 0);

/// Not preallocated: a healthy node holds no entry.
#[map(name = "FRAG_NEEDED")]
pub static FRAG_NEEDED: HashMap<FragKey, FragNeeded> =
    HashMap::with_max_entries(DEFAULT_FRAG_CAPACITY, BPF_F_NO_PREALLOC);

/// Not preallocated: a node drops for a few reasons towards a few peers.
#[map(name = "DROPS")]
pub static DROPS: PerCpuHashMap<DropKey, u64> =
    PerCpuHashMap::with_max_entries(DEFAULT_DROP_CAPACITY, BPF_F_NO_PREALLOC);
