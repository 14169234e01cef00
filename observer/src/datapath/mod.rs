//! Loading crossover's programs, feeding them the cluster's shape,
//! attaching them, and reading back what they counted.
mod ageing;
mod attach;
mod blocks;
mod btf;
mod drops;
mod flows;
mod frag;
mod handshakes;
mod hook;
mod kept;
mod links;
mod order;
mod pin;
mod session;
mod slots;
mod snapshot;
mod sys;

use std::{collections::BTreeMap, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use ipnet::Ipv4Net;
use observer_ebpf::{
    AddrInfo, DEFAULT_ADDR_CAPACITY, DEFAULT_FLOW_CAPACITY, DEFAULT_PEER_CAPACITY,
    DEFAULT_PEER_SLOT_CAPACITY, PEER_ABI_KEY, PEER_SLOT_RETIRED, PeerKey, map,
};

pub use crate::iface::{Hook, parse_iface};
pub use ageing::{
    AgedSummary, AgeingPolicy, FlowCensus, Retired, RetiredGroup, RetiredReport, RetiredTotals,
};
pub use attach::AttachMode;
use attach::{Attachment, Held};
pub use blocks::{BlockPlan, BlockSummary};
pub use drops::DropRecord;
/// The drop program and its floor, by name (the benchmark reads their
/// kernel statistics).
pub const DROP_PROGRAMS: [&str; 2] = [drops::PROGRAM, drops::FLOOR_PROGRAM];
pub use flows::{FlowPage, FlowTable, MAX_PAGE};
pub use frag::FragRecord;
pub use hook::Framing;
pub use kept::{Found as KeptFound, PAGE as KEPT_PAGE, PinnedPages, Slot as KeptSlot};
pub use links::{LinkEvents, Reconciled, Selection, reconcile};
pub use order::{HookOrder, Placement, blind_by_hook};
use pin::PinDir;
pub use pin::{Geometry, PinReport, Recreated, Uninstalled, uninstall};
pub use session::{ORDER_CHECK, ReadTimes, Session, lock};
use slots::SlotRule;
pub use snapshot::{Counters, FlowRecord, PeerCounts, PeerRecord, Snapshot, monotonic_ns};

use crate::{
    Error, Result,
    error::{is_permission, root_io_error},
    netns,
    shape::{ClusterShape, wire_addr},
};

/// An empty classifier, for measuring the cost of running any program.
pub const FLOOR: &str = "crossover_floor";

/// The object observer-ebpf's build produced, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/crossover-tc"));

/// Largest flow table a flag may ask for: preallocated, about 170 bytes an
/// entry (2.7 GiB at this size).
pub const MAX_FLOW_CAPACITY: u32 = 1 << 24;

/// Largest ADDR_BLOCKS a flag may ask for: 24 bytes an entry (24 MiB), a
/// /8 cut into /28 blocks.
pub const MAX_ADDR_BLOCK_CAPACITY: u32 = 1 << 20;

/// Most PEER_STATS slots a flag may ask for: a per-CPU array of 64 bytes
/// a slot (16 MiB per CPU at this size), and PEER_SLOTS holds one more.
pub const MAX_PEER_SLOT_CAPACITY: u32 = 1 << 18;

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub flow_capacity: u32,
    /// Entries of the PEERS hash, for peers the shape does not name.
    pub peer_capacity: u32,
    /// Slots for the (peer, overlay, direction, network pair) of named
    /// nodes; PEER_SLOTS holds one more entry, the ABI version.
    pub peer_slot_capacity: u32,
    /// ADDRS entries for the shape's ranges and node addresses.
    pub addr_capacity: u32,
    /// ADDR_BLOCKS entries: pod ranges classified by block instead of the
    /// trie (`blocks.rs`); 0 leaves every address to the trie.
    pub addr_block_capacity: u32,
    /// ADDRS entries for pods' /32s besides (`ClusterShape::pods`); pods
    /// beyond it are left out and counted ([`PodAddrStats::refused`]).
    pub pod_addr_capacity: u32,
    /// Handshakes in flight at once (HANDSHAKES).
    pub handshake_capacity: u32,
    pub attach_mode: AttachMode,
    /// Named network namespace (`ip netns`) the interfaces live in.
    pub netns: Option<String>,
    /// bpffs directory to pin maps and TCX links in, so a restarted
    /// process counts on where this one stopped (docs/restarts.md).
    /// `None`: nothing outlives the process.
    pub pin_path: Option<PathBuf>,
    /// TCP port of crossover's own control connections (the agent's API):
    /// their TCP events stay out of the peer counters, so the gate never
    /// judges its own readings (`Config::control_port`). 0: none.
    pub control_port: u16,
}

/// Pods' /32 entries ADDRS has room for by default (`--pod-addr-capacity`).
/// ADDRS is an LPM trie, never preallocated: room costs nothing unused.
pub const DEFAULT_POD_ADDR_CAPACITY: u32 = 65_536;

impl LoadOptions {
    /// ADDRS's size: the ranges' room and the pods'.
    pub fn addrs_entries(&self) -> u32 {
        self.addr_capacity.saturating_add(self.pod_addr_capacity)
    }
}

/// The pods' /32 entries as the last configure left them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodAddrStats {
    /// `--pod-addr-capacity`.
    pub capacity: u32,
    /// The shape's pods with an entry in ADDRS.
    pub in_table: u32,
    /// The shape's pods left out for lack of room: their traffic is
    /// classified as outside the cluster until room is made.
    pub refused: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_capacity: DEFAULT_FLOW_CAPACITY,
            peer_capacity: DEFAULT_PEER_CAPACITY,
            peer_slot_capacity: DEFAULT_PEER_SLOT_CAPACITY,
            addr_capacity: DEFAULT_ADDR_CAPACITY,
            addr_block_capacity: observer_ebpf::DEFAULT_ADDR_BLOCK_CAPACITY,
            pod_addr_capacity: DEFAULT_POD_ADDR_CAPACITY,
            handshake_capacity: observer_ebpf::DEFAULT_HANDSHAKE_CAPACITY,
            attach_mode: AttachMode::Auto,
            netns: None,
            pin_path: None,
            control_port: 0,
        }
    }
}

/// crossover's programs loaded in the kernel, and where they are attached.
/// Dropping it detaches everything and removes any qdisc it added, except
/// what is pinned: pinned TCX links stay attached (and pinned maps stay)
/// for the next process to take over.
pub struct Observer {
    ebpf: Ebpf,
    options: LoadOptions,
    mode: AttachMode,
    attached: BTreeMap<String, Attachment>,
    /// ADDRS as last written, to apply a new shape as a difference.
    addrs: BTreeMap<Ipv4Net, AddrInfo>,
    /// ADDR_BLOCKS and CONFIG's block ranges as last written.
    blocks: BlockPlan,
    /// Which of `addrs` are pods' /32s, and how many pods found no room.
    pod_addrs: std::collections::BTreeSet<Ipv4Net>,
    pod_stats: PodAddrStats,
    /// PEER_STATS slots handed out. Never reused, so a peer's counters stay
    /// monotonic while the shape changes around it. PEER_SLOTS holds all of
    /// them (peers that left the shape marked retired), so a restarted
    /// process reads them back.
    peer_slots: BTreeMap<PeerKey, u32>,
    /// Keys of the shape's nodes left without a slot (PEER_STATS full):
    /// counted in the PEERS hash instead.
    slotless: usize,
    /// Which keys may hold a slot, from the shape last configured.
    slottable: SlotRule,
    /// The locked pin directory, when pinning.
    pins: Option<PinDir>,
    pin_report: Option<PinReport>,
    /// What ageing deleted from FLOWS, folded.
    retired: Retired,
    /// The flow table by class, as the last ageing sweep read it.
    census: Option<FlowCensus>,
    /// Handshakes expired unanswered, per the client's peer key: the part
    /// of `handshakes_unanswered` the kernel cannot count. Lives in the
    /// process (a restart starts it over; windows clamp, docs/restarts.md).
    expired_handshakes: BTreeMap<PeerKey, u64>,
    /// Every hook's placement as last checked (one entry per attached
    /// interface and direction).
    order: Vec<HookOrder>,
    /// Times a program was re-attached in front of one that had moved
    /// ahead of it, since load.
    reasserted: u64,
    /// The kernel's drop reasons by value, once the drop program runs.
    drop_reasons: Option<BTreeMap<u32, String>>,
}

impl Observer {
    /// Loads and verifies every program. Nothing is attached yet.
    /// With `pin_path`, pinned maps that fit are reused, the others
    /// recreated (see [`PinReport`]), and every pinned TCX link is given
    /// this process's program at once.
    pub fn load(options: LoadOptions) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map::FLOWS, options.flow_capacity)
            .map_max_entries(map::PEERS, options.peer_capacity)
            .map_max_entries(map::PEER_SLOTS, options.peer_slot_capacity + 1)
            .map_max_entries(map::PEER_STATS, options.peer_slot_capacity)
            .map_max_entries(map::ADDRS, options.addrs_entries())
            // An array of no entries cannot be created; one unused entry
            // stands for "off".
            .map_max_entries(map::ADDR_BLOCKS, options.addr_block_capacity.max(1))
            .map_max_entries(map::HANDSHAKES, options.handshake_capacity);
        let pins = options.pin_path.as_deref().map(PinDir::open).transpose()?;
        let mut pin_report = None;
        if let Some(pins) = &pins {
            let mut report = PinReport {
                dir: pins.dir.clone(),
                ..PinReport::default()
            };
            pins.prepare(&mut loader, &options, &mut report)?;
            pin_report = Some(report);
        }
        let mut ebpf = loader.load(OBJECT).map_err(|err| {
            if let Some(io) = root_io_error(&err).filter(|e| is_permission(e)) {
                return Error::Privilege {
                    action: "creating BPF maps".into(),
                    source: std::io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(1)),
                };
            }
            match err {
                aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => {
                    Error::MapCreate {
                        sized_by: sized_by(&name, &options),
                        map: name,
                        source: io_error,
                    }
                }
                err => Error::Load(Box::new(err)),
            }
        })?;
        for hook in Hook::ALL {
            for name in hook.all_programs() {
                load_program(classifier(&mut ebpf, name)?, name)?;
            }
        }
        let mode = options.attach_mode.resolve();
        let pod_addr_capacity = options.pod_addr_capacity;
        let mut observer = Observer {
            ebpf,
            options,
            mode,
            attached: BTreeMap::new(),
            addrs: BTreeMap::new(),
            blocks: BlockPlan::default(),
            pod_addrs: std::collections::BTreeSet::new(),
            pod_stats: PodAddrStats {
                capacity: pod_addr_capacity,
                ..PodAddrStats::default()
            },
            peer_slots: BTreeMap::new(),
            slotless: 0,
            slottable: SlotRule::default(),
            pins,
            pin_report,
            retired: Retired::default(),
            census: None,
            expired_handshakes: BTreeMap::new(),
            order: Vec::new(),
            reasserted: 0,
            drop_reasons: None,
        };
        if observer.pins.is_some() {
            observer.recover()?;
            observer.adopt_links()?;
        }
        Ok(observer)
    }

    /// Reads back from reused maps the state userspace keeps beside them:
    /// the PEER_STATS slots handed out and ADDRS as last written.
    fn recover(&mut self) -> Result<()> {
        let slots: HashMap<&MapData, PeerKey, u32> = map_ref(&self.ebpf, map::PEER_SLOTS)?;
        for entry in slots.iter() {
            let (key, slot) = entry.map_err(Error::map(map::PEER_SLOTS))?;
            if key != PEER_ABI_KEY {
                self.peer_slots.insert(key, slot & !PEER_SLOT_RETIRED);
            }
        }
        let trie: LpmTrie<&MapData, u32, AddrInfo> = map_ref(&self.ebpf, map::ADDRS)?;
        for entry in trie.iter() {
            let (key, info) = entry.map_err(Error::map(map::ADDRS))?;
            let net = Ipv4Net::new(
                crate::shape::addr_from_wire(key.data()),
                key.prefix_len() as u8,
            )
            .map_err(|e| Error::Shape(format!("pinned ADDRS entry: {e}")))?;
            self.addrs.insert(net, info);
        }
        Ok(())
    }

    /// Swaps this process's programs into every pinned link whose
    /// interface still exists; unpins the others (the kernel detached
    /// them when their interface went).
    fn adopt_links(&mut self) -> Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let found = pin::found_links(&pins.links())?;
        let _ns = self.enter_netns()?;
        let mut report = self.pin_report.take().unwrap_or_default();
        for link in found {
            let label = format!("{}/{}-{}", link.iface, link.hook, link.direction);
            if link.ifindex == 0 || ifindex(&link.iface) != Some(link.ifindex) {
                pin::unpin_link(&link.path)?;
                report.links_removed.push(label);
                continue;
            }
            let framing = framing(&link.iface).unwrap_or(Framing::Ethernet);
            let Some([ingress, egress]) = link.hook.programs_for(framing) else {
                pin::unpin_link(&link.path)?;
                report.links_removed.push(label);
                continue;
            };
            let name = if link.direction == "ingress" {
                ingress
            } else {
                egress
            };
            let held = attach::adopt(classifier(&mut self.ebpf, name)?, name, link.path)?;
            let attachment =
                self.attached
                    .entry(link.iface.clone())
                    .or_insert_with(|| Attachment {
                        hook: link.hook,
                        links: Vec::new(),
                        owns_clsact: false,
                    });
            attachment.links.push((name, held));
            report.links_adopted.push(label);
        }
        self.pin_report = Some(report);
        Ok(())
    }

    /// What loading found in the pin directory; `None` without pinning.
    pub fn pin_report(&self) -> Option<&PinReport> {
        self.pin_report.as_ref()
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// With pins, the pinned pages `name` for `slots` blobs of at most
    /// `max_bytes` (see `kept.rs`); `None` without pins.
    pub fn pinned_pages(
        &self,
        name: &'static str,
        slots: u32,
        max_bytes: usize,
    ) -> Result<Option<(PinnedPages, KeptFound)>> {
        self.pins
            .as_ref()
            .map(|pins| PinnedPages::open(pins, name, slots, max_bytes))
            .transpose()
    }

    /// The kernel's ids of the maps the per-peer counters live in (PEERS,
    /// PEER_STATS): anything kept about their values holds only while they
    /// are the same maps.
    pub fn counter_ids(&self) -> Result<[u32; 2]> {
        let id = |name: &'static str| -> Result<u32> {
            let data = match self.ebpf.map(name).ok_or(Error::MissingMap(name))? {
                aya::maps::Map::PerCpuHashMap(d) | aya::maps::Map::PerCpuArray(d) => d,
                _ => return Err(Error::MissingMap(name)),
            };
            Ok(data.info().map_err(Error::map(name))?.id())
        };
        Ok([id(map::PEERS)?, id(map::PEER_STATS)?])
    }

    /// The pod ranges new flows are classified in by block, and what is
    /// left to the trie.
    pub fn block_summary(&self) -> &BlockSummary {
        &self.blocks.summary
    }

    /// Writes the cluster's shape into CONFIG, ADDRS and ADDR_BLOCKS.
    /// Applied as a difference, so a changed shape never leaves the kernel
    /// with an empty table in between.
    pub fn configure(&mut self, shape: &ClusterShape) -> Result<()> {
        shape.validate()?;
        self.tick()?;
        let mut wanted: BTreeMap<Ipv4Net, AddrInfo> = shape.kernel_addrs().into_iter().collect();
        if wanted.len() as u32 > self.options.addr_capacity {
            return Err(Error::MapFull {
                map: map::ADDRS,
                capacity: self.options.addr_capacity,
                what: format!(
                    "the shape has {} address ranges; raise --addr-capacity (sized at start)",
                    wanted.len()
                ),
            });
        }
        let (pods, stats) = self.pods_that_fit(shape, &wanted);
        wanted.extend(pods.iter().map(|(net, info)| (*net, *info)));
        let plan = blocks::plan(&wanted, self.options.addr_block_capacity);
        // New ranges (or a restart, which knows nothing of the array): the
        // kernel asks the trie alone while the whole array is rewritten.
        let relaid = plan.ranges != self.blocks.ranges;
        let mut config = observer_ebpf::Config {
            control_port: self.options.control_port,
            block_ranges: if relaid {
                Default::default()
            } else {
                plan.ranges
            },
            ..shape.kernel_config()?
        };
        self.write_config(config)?;

        let previous = std::mem::take(&mut self.addrs);
        let mut trie: LpmTrie<&mut MapData, u32, AddrInfo> = map_mut(&mut self.ebpf, map::ADDRS)?;
        let key = |net: &Ipv4Net| Key::new(u32::from(net.prefix_len()), wire_addr(net.network()));
        for (net, info) in &wanted {
            if previous.get(net) != Some(info) {
                trie.insert(&key(net), *info, 0)
                    .map_err(Error::map(map::ADDRS))?;
            }
        }
        for net in previous.keys().filter(|net| !wanted.contains_key(net)) {
            trie.remove(&key(net)).map_err(Error::map(map::ADDRS))?;
        }

        let writes = match relaid {
            true => (0u32..).zip(plan.entries.iter().copied()).collect(),
            false => self.blocks.writes_to(&plan),
        };
        self.write_addr_blocks(writes)?;
        if relaid {
            config.block_ranges = plan.ranges;
            self.write_config(config)?;
        }
        self.blocks = plan;
        self.addrs = wanted;
        if stats.refused != self.pod_stats.refused {
            eprintln!(
                "crossover: {} of {} pod addresses have an ADDRS entry; {} left out (--pod-addr-capacity {})",
                stats.in_table,
                stats.in_table + stats.refused,
                stats.refused,
                stats.capacity
            );
        }
        self.pod_addrs = pods.into_iter().map(|(net, _)| net).collect();
        self.pod_stats = stats;
        self.assign_peer_slots(shape)
    }

    fn write_config(&mut self, config: observer_ebpf::Config) -> Result<()> {
        let mut array: Array<&mut MapData, observer_ebpf::Config> =
            map_mut(&mut self.ebpf, map::CONFIG)?;
        array.set(0, config, 0).map_err(Error::map(map::CONFIG))
    }

    /// (index, entry) pairs into ADDR_BLOCKS, in order.
    fn write_addr_blocks(
        &mut self,
        writes: impl IntoIterator<Item = (u32, observer_ebpf::AddrBlock)>,
    ) -> Result<()> {
        let mut entries: Array<&mut MapData, observer_ebpf::AddrBlock> =
            map_mut(&mut self.ebpf, map::ADDR_BLOCKS)?;
        for (index, block) in writes {
            entries
                .set(index, block, 0)
                .map_err(Error::map(map::ADDR_BLOCKS))?;
        }
        Ok(())
    }

    /// The shape's pod entries that fit `--pod-addr-capacity`: those with
    /// an entry already keep it (a pod never loses its entry to a newer
    /// one), the others in the shape's order while room lasts. A pod /32
    /// that is also a range of the shape is the range's.
    fn pods_that_fit(
        &self,
        shape: &ClusterShape,
        ranges: &BTreeMap<Ipv4Net, AddrInfo>,
    ) -> (Vec<(Ipv4Net, AddrInfo)>, PodAddrStats) {
        let capacity = self.options.pod_addr_capacity;
        let entries: Vec<(Ipv4Net, AddrInfo)> = shape
            .pod_entries()
            .into_iter()
            .filter(|(net, _)| !ranges.contains_key(net))
            .collect();
        let (held, new): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|(net, _)| self.pod_addrs.contains(net));
        let total = held.len() + new.len();
        let kept: Vec<_> = held
            .into_iter()
            .chain(new)
            .take(capacity as usize)
            .collect();
        let stats = PodAddrStats {
            capacity,
            in_table: kept.len() as u32,
            refused: (total - kept.len()) as u32,
        };
        (kept, stats)
    }

    /// The pods' /32 entries as the last configure left them.
    pub fn pod_addrs(&self) -> PodAddrStats {
        self.pod_stats
    }

    /// Attaches `hook`'s ingress and egress programs to `iface`. Attaching
    /// an interface twice is a no-op when the hook is the same.
    pub fn attach(&mut self, iface: &str, hook: Hook) -> Result<()> {
        if let Some(existing) = self.attached.get(iface) {
            // An adopted interface may have only one direction pinned (a
            // crash between the two pins): attach it again whole.
            if existing.hook == hook && existing.links.len() == 2 {
                return Ok(());
            }
            self.detach(iface)?;
        }
        let _ns = self.enter_netns()?;
        let Some(framing) = framing(iface) else {
            return Err(Error::NoInterface(iface.to_owned()));
        };
        let [ingress, egress] = hook
            .programs_for(framing)
            .ok_or_else(|| Error::NoEthernet {
                iface: iface.to_owned(),
                hook,
            })?;
        let owns_clsact = match self.mode {
            AttachMode::Netlink => attach::ensure_clsact(iface)?,
            _ => false,
        };
        let mut attachment = Attachment {
            hook,
            links: Vec::new(),
            owns_clsact,
        };
        for (name, direction) in [
            (ingress, TcAttachType::Ingress),
            (egress, TcAttachType::Egress),
        ] {
            let program = classifier(&mut self.ebpf, name)?;
            let held = attach::attach_one(program, name, iface, direction, self.mode).and_then(
                |id| match (&self.pins, self.mode) {
                    // Netlink filters are not links; they are removed on
                    // exit like without pins (docs/restarts.md).
                    (Some(pins), AttachMode::Tcx) => {
                        let path = pins.link(iface, hook, direction_label(direction));
                        attach::pin(program, name, id, path)
                    }
                    _ => Ok(Held::Owned(id)),
                },
            );
            match held {
                Ok(held) => attachment.links.push((name, held)),
                Err(err) => {
                    // Leave nothing half-attached behind.
                    self.release(iface, attachment);
                    return Err(err);
                }
            }
        }
        self.attached.insert(iface.to_owned(), attachment);
        Ok(())
    }

    /// Takes our programs off `iface`. An interface that has vanished
    /// (a deleted pod veth) took them with it; that is not an error.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        if let Some(attachment) = self.attached.remove(iface) {
            let _ns = self.enter_netns()?;
            self.release(iface, attachment);
        }
        Ok(())
    }

    fn release(&mut self, iface: &str, attachment: Attachment) {
        for (name, held) in attachment.links {
            if let Ok(program) = classifier(&mut self.ebpf, name) {
                release_link(program, held);
            }
        }
        // The qdisc we added goes, unless someone (Cilium, started after
        // us) has put filters on it since: removing it would take theirs.
        if attachment.owns_clsact
            && interface_exists(iface)
            && !order::filters_remain(iface)
            && let Err(err) = attach::remove_clsact(iface)
        {
            eprintln!("crossover: {err}");
        }
    }

    /// Takes our programs off every interface (shutdown).
    pub fn detach_all(&mut self) {
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for name in names {
            if let Err(err) = self.detach(&name) {
                eprintln!("crossover: detaching from {name}: {err}");
            }
        }
    }

    /// Leaves for good: with pins, removes every link, map pin and the
    /// pin directory; without, the same as [`Observer::detach_all`]. The
    /// maps themselves go when this Observer is dropped.
    pub fn uninstall(&mut self) -> Result<Uninstalled> {
        let mut done = Uninstalled::default();
        // The links we hold are unpinned and closed by detach_all; the
        // kernel releases them from a workqueue, so their ids are kept to
        // wait for, as for the pins found below.
        let mut releasing = Vec::new();
        for (iface, attachment) in &self.attached {
            for (name, held) in &attachment.links {
                if let Held::Pinned { link, .. } = held {
                    done.links.push(format!("{iface}/{name}"));
                    match link.info() {
                        Ok(info) => releasing.push(pin::Releasing {
                            id: info.id(),
                            program: info.program_id(),
                            iface: iface.clone(),
                            what: format!("{iface} ({name})"),
                        }),
                        Err(err) => eprintln!("crossover: reading link {iface}/{name}: {err}"),
                    }
                }
            }
        }
        self.detach_all();
        {
            let _ns = self.enter_netns()?;
            pin::wait_released(&releasing)?;
        }
        if let Some(pins) = &self.pins {
            let rest = pin::uninstall_in(pins)?;
            done.links.extend(rest.links);
            done.maps = rest.maps;
        }
        Ok(done)
    }

    /// What the agent does on SIGTERM. Without pins, detach everything.
    /// With pins, leave links and maps for the next agent to take over
    /// without a gap, unless `detach` asks to [`Observer::uninstall`].
    pub fn exit(&mut self, detach: bool) -> Result<()> {
        if self.pins.is_none() {
            self.detach_all();
        } else if detach {
            self.uninstall()?;
        } else {
            // Netlink filters cannot be handed over: they go now.
            let unpinned: Vec<String> = self
                .attached
                .iter()
                .filter(|(_, a)| a.links.iter().any(|(_, h)| matches!(h, Held::Owned(_))))
                .map(|(name, _)| name.clone())
                .collect();
            for name in unpinned {
                self.detach(&name)?;
            }
        }
        Ok(())
    }

    /// Checks that our program runs first on every hook we are on; with
    /// `reassert`, re-attaches in front any that is not (TCX: at the head
    /// again; clsact: our filter added anew, so the newest in priority 1).
    /// A hook that is still not first afterwards is [`Placement::Blind`].
    /// Re-attaching takes the program off for the moment between detach
    /// and attach (TCX refuses the same program twice on one hook): the
    /// packets of that moment are not counted, where behind another
    /// program none would be. A hook whose order cannot be read is blind.
    pub fn check_order(&mut self, reassert: bool) -> Result<&[HookOrder]> {
        let _ns = self.enter_netns()?;
        let mut order = Vec::new();
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for iface in names {
            if !interface_exists(&iface) {
                // Gone with its programs; the next reconcile forgets it.
                continue;
            }
            let Some(mut attachment) = self.attached.remove(&iface) else {
                continue;
            };
            let mut checked = Vec::new();
            let result = self.check_attachment(&iface, &mut attachment, reassert, &mut checked);
            if let Err(err) = result {
                if !interface_exists(&iface) {
                    // Went away while we looked.
                    self.attached.insert(iface, attachment);
                    continue;
                }
                // What cannot be checked cannot be trusted.
                eprintln!("crossover: checking the order of programs on {iface}: {err}");
                checked = attachment
                    .links
                    .iter()
                    .map(|(name, _)| HookOrder {
                        iface: iface.clone(),
                        hook: attachment.hook,
                        direction: direction_of_hook(direction_of(name)),
                        placement: Placement::Blind,
                        ahead: Vec::new(),
                    })
                    .collect();
            }
            order.extend(checked);
            self.attached.insert(iface, attachment);
        }
        self.order = order;
        Ok(&self.order)
    }

    fn check_attachment(
        &mut self,
        iface: &str,
        attachment: &mut Attachment,
        reassert: bool,
        order: &mut Vec<HookOrder>,
    ) -> Result<()> {
        for (name, held) in &mut attachment.links {
            let direction = direction_of(name);
            let program = classifier(&mut self.ebpf, name)?;
            let ours = program_id(program, name)?;
            let mut ahead = order::ahead_of(self.mode, iface, direction, ours)?;
            if reassert && ahead.as_ref().is_none_or(|a| !a.is_empty()) {
                let path = match held {
                    Held::Pinned { path, .. } => Some(path.clone()),
                    Held::Owned(_) | Held::Detached => None,
                };
                let previous = std::mem::replace(held, Held::Detached);
                release_link(program, previous);
                let id = attach::attach_one(program, name, iface, direction, self.mode)?;
                *held = match path {
                    Some(path) => attach::pin(program, name, id, path)?,
                    None => Held::Owned(id),
                };
                self.reasserted += 1;
                ahead = order::ahead_of(self.mode, iface, direction, ours)?;
            }
            // Not on the hook at all (taken off by someone else): as blind
            // as behind another program.
            order.push(HookOrder::from_ahead(
                iface,
                attachment.hook,
                direction_of_hook(direction),
                ahead,
            ));
        }
        Ok(())
    }

    /// Every hook's placement as last checked by [`Observer::check_order`].
    pub fn order(&self) -> &[HookOrder] {
        &self.order
    }

    /// Re-attachments in front since load.
    pub fn reasserted(&self) -> u64 {
        self.reasserted
    }

    /// Interfaces we are attached to, with their hook.
    pub fn attached(&self) -> impl Iterator<Item = (&str, Hook)> {
        self.attached
            .iter()
            .map(|(name, a)| (name.as_str(), a.hook))
    }

    /// A program, for `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn program(&self, name: &str) -> Result<&SchedClassifier> {
        let program = self
            .ebpf
            .program(name)
            .ok_or_else(|| Error::MissingProgram(name.into()))?;
        program.try_into().map_err(|source| Error::Program {
            program: name.into(),
            source: Box::new(source),
        })
    }

    /// Loads the empty program the benchmark uses as its floor.
    #[cfg(feature = "test-api")]
    pub fn load_floor(&mut self) -> Result<&SchedClassifier> {
        let program = classifier(&mut self.ebpf, FLOOR)?;
        if program.fd().is_err() {
            load_program(program, FLOOR)?;
        }
        self.program(FLOOR)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::read(
            &self.ebpf,
            &self.peer_slots,
            &self.expired_handshakes,
            &self.retired,
        )
    }

    /// Deletes connections idle past `policy` from FLOWS (joined across
    /// SNAT with `nat`, this node's conntrack NAT table; empty is fine
    /// without SNAT) and folds their counts into [`Observer::retired`].
    /// `now_ns` is CLOCK_MONOTONIC ([`monotonic_ns`]).
    pub fn age_flows(
        &mut self,
        now_ns: u64,
        policy: &AgeingPolicy,
        nat: &[crate::conntrack::NatEntry],
    ) -> Result<AgedSummary> {
        self.age_flows_with(now_ns, policy, || nat.to_vec())
    }

    /// [`Observer::age_flows`] with the NAT table read only when some
    /// flow is idle enough to be aged (most sweeps find none).
    pub fn age_flows_with(
        &mut self,
        now_ns: u64,
        policy: &AgeingPolicy,
        nat: impl FnOnce() -> Vec<crate::conntrack::NatEntry>,
    ) -> Result<AgedSummary> {
        // Flows stamped since the last tick are stamped with now from here.
        self.tick()?;
        let (summary, census) =
            ageing::sweep(&mut self.ebpf, &mut self.retired, now_ns, policy, nat)?;
        self.census = Some(census);
        Ok(summary)
    }

    /// The flow table by class at the last ageing sweep; `None` before it.
    pub fn census(&self) -> Option<&FlowCensus> {
        self.census.as_ref()
    }

    /// Reads FLOWS raw, batched as snapshots do or key by key (two
    /// syscalls per flow); the number of flows. For the benchmark.
    #[cfg(feature = "test-api")]
    pub fn read_flows_raw(&self, batched: bool) -> Result<usize> {
        if batched {
            snapshot::read_flows(&self.ebpf).map(|f| f.len())
        } else {
            snapshot::read_flows_by_key(&self.ebpf).map(|f| f.len())
        }
    }

    /// Packets, bytes and TCP events per (peer node, overlay, direction,
    /// network pair).
    /// Starts counting the kernel's drops of cluster traffic by reason
    /// (`skb:kfree_skb`; kernels 5.17 and later): needs tracefs and BTF.
    /// Only drops in the node's network namespace (`--netns`, else this
    /// process's) count: in a lab several nodes share one kernel.
    pub fn enable_drops(&mut self) -> Result<()> {
        if self.drop_reasons.is_none() {
            let inum = {
                let _ns = self.enter_netns()?;
                drops::current_netns_inum()?
            };
            self.drop_reasons = Some(drops::enable(&mut self.ebpf, inum)?);
        }
        Ok(())
    }

    /// Attaches an empty program beside the drop program: what the
    /// benchmark measures it against.
    pub fn attach_drop_floor(&mut self) -> Result<()> {
        drops::attach(&mut self.ebpf, drops::FLOOR_PROGRAM)
    }

    /// What the drop program counted; empty until [`Observer::enable_drops`].
    pub fn drops(&self) -> Result<Vec<DropRecord>> {
        match &self.drop_reasons {
            Some(reasons) => drops::read(&self.ebpf, reasons),
            None => Ok(Vec::new()),
        }
    }

    /// ICMP "fragmentation needed" about this node's packets, per peer,
    /// overlay and hop: O(nodes) entries.
    pub fn frag_needed(&self) -> Result<Vec<FragRecord>> {
        frag::read(&self.ebpf)
    }

    pub fn peers(&self) -> Result<Vec<PeerRecord>> {
        snapshot::read_peers(&self.ebpf, &self.peer_slots, &self.expired_handshakes)
    }

    /// Handshakes this process expired unanswered, per key: the part of
    /// `handshakes_unanswered` the kernel cannot count, which lives in the
    /// process. The agent keeps it with its ticks (loss/kept.rs).
    pub fn expired_handshakes(&self) -> Vec<(PeerKey, u64)> {
        self.expired_handshakes
            .iter()
            .map(|(k, n)| (*k, *n))
            .collect()
    }

    /// Takes over what a previous process over the same pinned maps had
    /// expired (as it kept it), so unanswered handshakes carry on across
    /// a restart as the kernel's counts do.
    pub fn adopt_expired_handshakes(&mut self, kept: &[(PeerKey, u64)]) {
        for (key, n) in kept {
            *self.expired_handshakes.entry(*key).or_default() += n;
        }
    }

    /// Expires handshakes unanswered past the grace (see
    /// `datapath/handshakes.rs`): call before reading the counters, at
    /// least once a second. Returns how many were expired.
    pub fn expire_handshakes(&mut self, now_ns: u64) -> Result<u64> {
        handshakes::expire(&self.ebpf, now_ns, &mut self.expired_handshakes)
    }

    /// Writes CLOCK_MONOTONIC into CLOCK, the time known flows' packets
    /// are stamped with: call it at least once a second (the agent's
    /// sampler does, and every ageing sweep first).
    pub fn tick(&mut self) -> Result<()> {
        let mut clock: Array<&mut MapData, u64> = map_mut(&mut self.ebpf, map::CLOCK)?;
        clock
            .set(0, monotonic_ns(), 0)
            .map_err(Error::map(map::CLOCK))
    }

    /// Packets seen per hook point and skipped per reason.
    pub fn counters(&self) -> Result<Counters> {
        snapshot::read_counters(&self.ebpf)
    }

    /// Empties FLOWS only: the next packet of every flow is a first packet.
    pub fn clear_flows(&mut self) -> Result<()> {
        snapshot::clear_flows(&mut self.ebpf)
    }

    /// Overwrites ADDR_BLOCKS entry `index` behind the plan's back: tests
    /// prove the kernel answers from it.
    #[cfg(feature = "test-api")]
    pub fn write_addr_block(&mut self, index: u32, block: observer_ebpf::AddrBlock) -> Result<()> {
        self.write_addr_blocks([(index, block)])
    }

    /// The plan last written to ADDR_BLOCKS and CONFIG.
    pub fn block_plan(&self) -> &BlockPlan {
        &self.blocks
    }

    /// Empties FLOWS, PEERS, PEER_STATS, FRAG_NEEDED and COUNTERS (tests
    /// start clean).
    #[cfg(feature = "test-api")]
    pub fn reset_counters(&mut self) -> Result<()> {
        handshakes::clear(&self.ebpf)?;
        frag::clear(&mut self.ebpf)?;
        self.expired_handshakes.clear();
        snapshot::reset(&mut self.ebpf, self.options.peer_slot_capacity)
    }

    pub(crate) fn enter_netns(&self) -> Result<Option<netns::NetnsGuard>> {
        self.options.netns.as_deref().map(netns::enter).transpose()
    }
}

impl Drop for Observer {
    /// Pinned links stay (a restart takes them over); anything else is
    /// taken off, as it would not survive the process anyway and a qdisc
    /// we added must not be left behind.
    fn drop(&mut self) {
        if let Err(err) = self.exit(false) {
            eprintln!("crossover: {err}");
        }
    }
}

/// Takes one link of `program` off its hook.
fn release_link(program: &mut SchedClassifier, held: Held) {
    match held {
        // Fails only when the interface is already gone.
        Held::Owned(id) => {
            let _ = program.detach(id);
        }
        // Without its pin, closing our fd releases the link.
        Held::Pinned { link, path } => {
            if let Err(err) = pin::unpin_link(&path) {
                eprintln!("crossover: {err}");
            }
            drop(link);
        }
        Held::Detached => {}
    }
}

/// The kernel's id of a loaded program.
fn program_id(program: &SchedClassifier, name: &str) -> Result<u32> {
    program
        .info()
        .map(|info| info.id())
        .map_err(|source| Error::Program {
            program: name.to_owned(),
            source: Box::new(source),
        })
}

/// The hook direction of one of our programs, from its name.
fn direction_of(program: &str) -> TcAttachType {
    if program.ends_with("_ingress") {
        TcAttachType::Ingress
    } else {
        TcAttachType::Egress
    }
}

fn direction_label(direction: TcAttachType) -> &'static str {
    direction_of_hook(direction).label()
}

/// The ABI's direction of a TC attach point.
fn direction_of_hook(direction: TcAttachType) -> observer_ebpf::Direction {
    match direction {
        TcAttachType::Ingress => observer_ebpf::Direction::Ingress,
        _ => observer_ebpf::Direction::Egress,
    }
}

/// Index of `iface` in the current network namespace.
fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// How `iface` frames its packets, from its `ARPHRD_*` type (the
/// `SIOCGIFHWADDR` address family); `None` when it does not exist. Asked
/// of the current network namespace (a socket's), not of /sys, which shows
/// the namespace it was mounted in.
pub fn framing(iface: &str) -> Option<Framing> {
    let name = std::ffi::CString::new(iface).ok()?;
    if name.as_bytes_with_nul().len() > libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: a socket owned right away; an ifreq whose name is a
    // NUL-terminated string within IFNAMSIZ, read back after the ioctl.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let fd = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes_with_nul()) {
            *dst = src as libc::c_char;
        }
        let rc = libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SIOCGIFHWADDR,
            &mut req,
        );
        (rc == 0).then(|| Framing::of_link_type(req.ifr_ifru.ifru_hwaddr.sa_family))
    }
}

/// True when `iface` exists in the current network namespace.
pub fn interface_exists(iface: &str) -> bool {
    ifindex(iface).is_some()
}

/// Names of the interfaces in the current network namespace.
pub fn interfaces() -> Vec<String> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut entry = list;
        while (*entry).if_index != 0 {
            out.push(
                std::ffi::CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// Map `name` of `ebpf` as the typed map `T`.
fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(Error::map(name))
}

/// What sizes map `name`, for an error when the kernel refuses it: the
/// flag and the size asked for.
fn sized_by(name: &str, options: &LoadOptions) -> String {
    let (flag, entries) = match name {
        map::FLOWS => ("--flow-capacity", options.flow_capacity),
        map::ADDRS => (
            "--addr-capacity and --pod-addr-capacity",
            options.addrs_entries(),
        ),
        map::ADDR_BLOCKS => ("--addr-block-capacity", options.addr_block_capacity),
        map::PEER_SLOTS | map::PEER_STATS => ("--peer-slot-capacity", options.peer_slot_capacity),
        map::PEERS => ("its fixed capacity", options.peer_capacity),
        map::HANDSHAKES => ("its fixed capacity", options.handshake_capacity),
        _ => return "its fixed capacity".into(),
    };
    format!(
        "{entries} entries, set by {flag}: lower it, or give the agent more memory or a higher memlock limit"
    )
}

/// Map `name` of `ebpf` as the typed map `T`, writable.
fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(Error::map(name))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::MissingProgram(name.into()))?;
    program.try_into().map_err(|source| Error::Program {
        program: name.into(),
        source: Box::new(source),
    })
}

/// Loads one program. The verifier gives up with EAGAIN while a signal is
/// pending for the loading thread; that is no verdict on the program, so
/// the load is tried again, as libbpf does, here with a growing pause (a
/// burst of signals passes; about a second in all).
fn load_program(program: &mut SchedClassifier, name: &str) -> Result<()> {
    const ATTEMPTS: u32 = 10;
    for attempt in 1..=ATTEMPTS {
        match program.load() {
            Ok(()) => return Ok(()),
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1 << attempt));
            }
            Err(err) => return Err(load_error(name, err)),
        }
    }
    unreachable!("the last attempt returns")
}

fn load_error(name: &str, err: ProgramError) -> Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if is_permission(&io_error) && verifier_log.to_string().trim().is_empty() {
                Error::Privilege {
                    action: format!("loading {name}"),
                    source: io_error,
                }
            } else {
                Error::Verifier {
                    program: name.to_owned(),
                    source: io_error,
                    log: verifier_log.to_string(),
                }
            }
        }
        source => Error::Program {
            program: name.to_owned(),
            source: Box::new(source),
        },
    }
}

/// The interface holding `addr` in the current network namespace: where a
/// node's underlay traffic leaves, found from its InternalIP.
pub fn interface_with(addr: std::net::Ipv4Addr) -> Option<String> {
    let mut found = None;
    // SAFETY: getifaddrs fills a linked list freed with freeifaddrs; entries
    // are only read while the list is alive, and ifa_addr is checked for
    // null and for AF_INET before it is read as a sockaddr_in (unaligned:
    // a sockaddr promises less alignment than a sockaddr_in needs).
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut entry = list;
        while !entry.is_null() {
            let sa = (*entry).ifa_addr;
            if !sa.is_null() && i32::from((*sa).sa_family) == libc::AF_INET {
                let sin: libc::sockaddr_in = std::ptr::read_unaligned(sa.cast());
                if u32::from_be(sin.sin_addr.s_addr) == u32::from(addr) {
                    found = Some(
                        std::ffi::CStr::from_ptr((*entry).ifa_name)
                            .to_string_lossy()
                            .into_owned(),
                    );
                    break;
                }
            }
            entry = (*entry).ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_interface_holding_an_address_is_found() {
        assert_eq!(
            super::interface_with(std::net::Ipv4Addr::LOCALHOST).as_deref(),
            Some("lo")
        );
        assert_eq!(super::interface_with([192, 0, 2, 77].into()), None);
    }
}
