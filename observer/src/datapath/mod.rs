//! Loading crossover's programs, feeding them the cluster's shape,
//! attaching them, and reading back what they counted.
mod attach;
mod hook;
mod links;
mod snapshot;

use std::collections::BTreeMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{ProgramError, SchedClassifier, TcAttachType},
};
use ipnet::Ipv4Net;
use observer_ebpf::{
    AddrInfo, DEFAULT_ADDR_CAPACITY, DEFAULT_FLOW_CAPACITY, DEFAULT_PEER_CAPACITY,
    DEFAULT_PEER_SLOT_CAPACITY, Direction, PeerKey, map,
};

pub use attach::AttachMode;
use attach::Attachment;
pub use hook::Hook;
pub use links::{LinkEvents, Reconciled, Selection, reconcile};
pub use snapshot::{Counters, FlowRecord, PeerRecord, Snapshot, monotonic_ns};

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

#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub flow_capacity: u32,
    /// Entries of the PEERS hash, for peers the shape does not name.
    pub peer_capacity: u32,
    /// Slots for the (peer, overlay, direction) triples of named nodes.
    pub peer_slot_capacity: u32,
    pub addr_capacity: u32,
    pub attach_mode: AttachMode,
    /// Named network namespace (`ip netns`) the interfaces live in.
    pub netns: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_capacity: DEFAULT_FLOW_CAPACITY,
            peer_capacity: DEFAULT_PEER_CAPACITY,
            peer_slot_capacity: DEFAULT_PEER_SLOT_CAPACITY,
            addr_capacity: DEFAULT_ADDR_CAPACITY,
            attach_mode: AttachMode::Auto,
            netns: None,
        }
    }
}

/// crossover's programs loaded in the kernel, and where they are attached.
/// Dropping it detaches everything and removes any qdisc it added.
pub struct Observer {
    ebpf: Ebpf,
    options: LoadOptions,
    mode: AttachMode,
    attached: BTreeMap<String, Attachment>,
    /// ADDRS as last written, to apply a new shape as a difference.
    addrs: BTreeMap<Ipv4Net, AddrInfo>,
    /// PEER_STATS slots handed out. Never reused, so a peer's counters stay
    /// monotonic while the shape changes around it.
    peer_slots: BTreeMap<PeerKey, u32>,
}

impl Observer {
    /// Loads and verifies every program. Nothing is attached yet.
    pub fn load(options: LoadOptions) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map::FLOWS, options.flow_capacity)
            .map_max_entries(map::PEERS, options.peer_capacity)
            .map_max_entries(map::PEER_SLOTS, options.peer_slot_capacity)
            .map_max_entries(map::PEER_STATS, options.peer_slot_capacity)
            .map_max_entries(map::ADDRS, options.addr_capacity)
            .load(OBJECT)
            .map_err(
                |err| match root_io_error(&err).filter(|e| is_permission(e)) {
                    Some(io) => Error::Privilege {
                        action: "creating BPF maps".into(),
                        source: std::io::Error::from_raw_os_error(io.raw_os_error().unwrap_or(1)),
                    },
                    None => Error::Load(Box::new(err)),
                },
            )?;
        for hook in Hook::ALL {
            for name in hook.programs() {
                let program = classifier(&mut ebpf, name)?;
                program.load().map_err(|err| load_error(name, err))?;
            }
        }
        let mode = options.attach_mode.resolve();
        Ok(Observer {
            ebpf,
            options,
            mode,
            attached: BTreeMap::new(),
            addrs: BTreeMap::new(),
            peer_slots: BTreeMap::new(),
        })
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Writes the cluster's shape into CONFIG and ADDRS. Applied as a
    /// difference, so a changed shape never leaves the kernel with an empty
    /// table in between.
    pub fn configure(&mut self, shape: &ClusterShape) -> Result<()> {
        shape.validate()?;
        let config = shape.kernel_config()?;
        let mut array: Array<&mut MapData, observer_ebpf::Config> =
            map_mut(&mut self.ebpf, map::CONFIG)?;
        array.set(0, config, 0).map_err(Error::map(map::CONFIG))?;

        let wanted: BTreeMap<Ipv4Net, AddrInfo> = shape.kernel_addrs().into_iter().collect();
        if wanted.len() as u32 > self.options.addr_capacity {
            return Err(Error::MapFull {
                map: map::ADDRS,
                capacity: self.options.addr_capacity,
                what: format!("the shape has {} address ranges", wanted.len()),
            });
        }
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
        self.addrs = wanted;
        self.assign_peer_slots(shape)
    }

    /// Gives every (other node, overlay, direction) a PEER_STATS slot, so
    /// the kernel counts known peers without a hash lookup per packet.
    /// Nodes that left the shape keep their slot (their counts stay
    /// readable) but leave PEER_SLOTS, so new traffic to them is counted
    /// in the PEERS hash.
    fn assign_peer_slots(&mut self, shape: &ClusterShape) -> Result<()> {
        let local = shape.local().map(|n| n.underlay);
        let overlays = shape.peer_overlays()?;
        let mut wanted = Vec::new();
        for node in shape.nodes.iter().filter(|n| Some(n.underlay) != local) {
            for overlay in &overlays {
                for direction in [Direction::Ingress, Direction::Egress] {
                    wanted.push(PeerKey {
                        peer: wire_addr(node.underlay),
                        overlay: overlay.wire(),
                        direction: direction.wire(),
                        _pad: [0; 2],
                    });
                }
            }
        }
        let capacity = self.options.peer_slot_capacity;
        let mut next = self.peer_slots.len() as u32;
        let mut slots: HashMap<&mut MapData, PeerKey, u32> =
            map_mut(&mut self.ebpf, map::PEER_SLOTS)?;
        let stale: Vec<PeerKey> = slots
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !wanted.contains(k))
            .collect();
        for key in stale {
            slots.remove(&key).map_err(Error::map(map::PEER_SLOTS))?;
        }
        for key in wanted {
            let slot = match self.peer_slots.get(&key) {
                Some(slot) => *slot,
                None if next < capacity => {
                    next += 1;
                    self.peer_slots.insert(key, next - 1);
                    next - 1
                }
                None => {
                    return Err(Error::MapFull {
                        map: map::PEER_STATS,
                        capacity,
                        what: "one slot per other node, overlay and direction".into(),
                    });
                }
            };
            slots
                .insert(key, slot, 0)
                .map_err(Error::map(map::PEER_SLOTS))?;
        }
        Ok(())
    }

    /// Attaches `hook`'s ingress and egress programs to `iface`. Attaching
    /// an interface twice is a no-op when the hook is the same.
    pub fn attach(&mut self, iface: &str, hook: Hook) -> Result<()> {
        if let Some(existing) = self.attached.get(iface) {
            if existing.hook == hook {
                return Ok(());
            }
            self.detach(iface)?;
        }
        let _ns = self.enter_netns()?;
        if !interface_exists(iface) {
            return Err(Error::NoInterface(iface.to_owned()));
        }
        let owns_clsact = match self.mode {
            AttachMode::Netlink => attach::ensure_clsact(iface)?,
            _ => false,
        };
        let mut attachment = Attachment {
            hook,
            links: Vec::new(),
            owns_clsact,
        };
        let [ingress, egress] = hook.programs();
        for (name, direction) in [
            (ingress, TcAttachType::Ingress),
            (egress, TcAttachType::Egress),
        ] {
            let program = classifier(&mut self.ebpf, name)?;
            match attach::attach_one(program, name, iface, direction, self.mode) {
                Ok(link) => attachment.links.push((name, link)),
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
        for (name, link) in attachment.links {
            if let Ok(program) = classifier(&mut self.ebpf, name) {
                // Fails only when the interface is already gone.
                let _ = program.detach(link);
            }
        }
        if attachment.owns_clsact
            && interface_exists(iface)
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
    pub fn load_floor(&mut self) -> Result<&SchedClassifier> {
        let program = classifier(&mut self.ebpf, FLOOR)?;
        if program.fd().is_err() {
            program.load().map_err(|err| load_error(FLOOR, err))?;
        }
        self.program(FLOOR)
    }

    pub fn snapshot(&self) -> Result<Snapshot> {
        Snapshot::read(&self.ebpf, &self.peer_slots)
    }

    /// Packets and bytes per (peer node, overlay, direction).
    pub fn peers(&self) -> Result<Vec<PeerRecord>> {
        snapshot::read_peers(&self.ebpf, &self.peer_slots)
    }

    /// Empties FLOWS only: the next packet of every flow is a first packet.
    pub fn clear_flows(&mut self) -> Result<()> {
        snapshot::clear_flows(&mut self.ebpf)
    }

    /// Empties FLOWS, PEERS, PEER_STATS and COUNTERS (tests start clean).
    pub fn reset_counters(&mut self) -> Result<()> {
        snapshot::reset(&mut self.ebpf, self.options.peer_slot_capacity)
    }

    pub(crate) fn enter_netns(&self) -> Result<Option<netns::NetnsGuard>> {
        self.options.netns.as_deref().map(netns::enter).transpose()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// True when `iface` exists in the current network namespace.
pub fn interface_exists(iface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
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
    // null and for AF_INET before it is read as a sockaddr_in.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut entry = list;
        while !entry.is_null() {
            let sa = (*entry).ifa_addr;
            if !sa.is_null() && i32::from((*sa).sa_family) == libc::AF_INET {
                let sin = &*(sa as *const libc::sockaddr_in);
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
