//! Maps and links pinned in bpffs, so that restarting the agent loses no
//! counts (docs/restarts.md).
//!
//! Layout under the pin directory:
//! * `maps/NAME`: every map of the object. A restarted agent opens these
//!   instead of creating new ones, so its programs count on into the same
//!   counters.
//! * `links/IFACE/HOOK-DIRECTION`: every TCX link (dots in IFACE
//!   percent-encoded: bpffs refuses them). A link stays attached
//!   while pinned, whatever happens to the process, and a restarted agent
//!   swaps its own program into it with `BPF_LINK_UPDATE`: at every
//!   instant exactly one of our programs is on the hook, so no packet goes
//!   uncounted and none is counted twice.
//!
//! aya opens a pinned map without looking at it, so before loading, every
//! pinned map is checked against what this binary wants (type, key and
//! value size, capacity, flags). A map that differs (an upgrade changed
//! the ABI, `--flow-capacity` changed) is unpinned and created anew: the
//! agent comes up, its counters for that map restart from zero, and the
//! reset is reported ([`PinReport::recreated`]) rather than the agent
//! refusing to start and leaving the node unobserved.
use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use aya::{
    EbpfLoader,
    maps::{MapInfo, MapType},
    programs::{SchedClassifier, TcAttachType},
};
use observer_ebpf::{
    AddrBlock, AddrInfo, COUNTER_SLOTS, Config, DEFAULT_DROP_CAPACITY, DEFAULT_FRAG_CAPACITY,
    DropKey, FlowKey, FlowStats, FragKey, FragNeeded, PEER_ABI_KEY, PEER_ABI_VERSION,
    PEER_SLOT_RETIRED, PeerKey, PeerStats, PendingHandshake, map,
};
use serde::Serialize;

use super::{Hook, LoadOptions, sys};
use crate::{Error, Result};

/// `BPF_FS_MAGIC` from statfs(2).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_F_NO_PREALLOC: u32 = 1;
/// How long a starting agent waits for the previous one to let go.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// What a map is, as far as sharing it between two builds goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Geometry {
    /// `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl Geometry {
    pub(crate) fn of(info: &MapInfo) -> Self {
        Geometry {
            map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        }
    }
}

/// Every map of the object and the geometry this binary gives it. Sizes
/// come from the ABI crate the programs were built with.
pub(crate) fn wanted(options: &LoadOptions) -> [(&'static str, Geometry); 12] {
    let g = |map_type: MapType, key: usize, value: usize, max_entries: u32, flags: u32| Geometry {
        map_type: map_type as u32,
        key_size: key as u32,
        value_size: value as u32,
        max_entries,
        flags,
    };
    let u32s = size_of::<u32>();
    [
        (
            map::CONFIG,
            g(MapType::Array, u32s, size_of::<Config>(), 1, 0),
        ),
        (
            map::ADDRS,
            g(
                MapType::LpmTrie,
                2 * u32s,
                size_of::<AddrInfo>(),
                options.addrs_entries(),
                BPF_F_NO_PREALLOC,
            ),
        ),
        (
            map::ADDR_BLOCKS,
            g(
                MapType::Array,
                u32s,
                size_of::<AddrBlock>(),
                options.addr_block_capacity.max(1),
                0,
            ),
        ),
        (
            map::FLOWS,
            g(
                MapType::Hash,
                size_of::<FlowKey>(),
                size_of::<FlowStats>(),
                options.flow_capacity,
                0,
            ),
        ),
        (
            map::PEER_SLOTS,
            g(
                MapType::Hash,
                size_of::<PeerKey>(),
                u32s,
                options.peer_slot_capacity + 1,
                0,
            ),
        ),
        (
            map::PEER_STATS,
            g(
                MapType::PerCpuArray,
                u32s,
                size_of::<PeerStats>(),
                options.peer_slot_capacity,
                0,
            ),
        ),
        (map::CLOCK, g(MapType::Array, u32s, size_of::<u64>(), 1, 0)),
        (
            map::HANDSHAKES,
            g(
                MapType::Hash,
                size_of::<FlowKey>(),
                size_of::<PendingHandshake>(),
                options.handshake_capacity,
                0,
            ),
        ),
        (
            map::PEERS,
            g(
                MapType::PerCpuHash,
                size_of::<PeerKey>(),
                size_of::<PeerStats>(),
                options.peer_capacity,
                BPF_F_NO_PREALLOC,
            ),
        ),
        (
            map::COUNTERS,
            g(
                MapType::PerCpuArray,
                u32s,
                size_of::<u64>(),
                COUNTER_SLOTS,
                0,
            ),
        ),
        // The kernel's drops by reason: pinned, so a window across a
        // restart counts the drops before it too.
        (
            map::DROPS,
            g(
                MapType::PerCpuHash,
                size_of::<DropKey>(),
                size_of::<u64>(),
                DEFAULT_DROP_CAPACITY,
                BPF_F_NO_PREALLOC,
            ),
        ),
        // ICMP fragmentation-needed per path: pinned like the drops.
        (
            map::FRAG_NEEDED,
            g(
                MapType::Hash,
                size_of::<FragKey>(),
                size_of::<FragNeeded>(),
                DEFAULT_FRAG_CAPACITY,
                BPF_F_NO_PREALLOC,
            ),
        ),
    ]
}

/// Maps whose contents only mean something together: a PEER_SLOTS entry
/// names a PEER_STATS slot, so one is never replaced without the other.
const COUPLED: [&str; 2] = [map::PEER_SLOTS, map::PEER_STATS];

/// Maps keyed by [`PeerKey`]: their keys mean what
/// [`PEER_ABI_VERSION`] says, which sizes cannot show (version 1 had the
/// networks' bytes as padding).
const PEER_KEYED: [&str; 2] = [map::PEER_SLOTS, map::PEERS];

/// A pinned map that did not fit this binary and was replaced: its
/// counters restarted from zero.
#[derive(Clone, Debug, Serialize)]
pub struct Recreated {
    pub map: &'static str,
    /// What was pinned; `None` when it was replaced only because a map it
    /// is coupled with was.
    pub pinned: Option<Geometry>,
    pub wanted: Geometry,
    /// "geometry differs", "peer ABI differs" or "coupled".
    pub reason: &'static str,
}

/// What loading found in the pin directory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PinReport {
    pub dir: PathBuf,
    /// Pinned maps opened as they were: their counters carry on.
    pub reused: Vec<&'static str>,
    /// Maps that were not pinned yet (first start).
    pub created: Vec<&'static str>,
    /// Maps replaced because they did not fit: counter resets.
    pub recreated: Vec<Recreated>,
    /// Pinned links that now run this process's programs ("iface/hook-dir").
    pub links_adopted: Vec<String>,
    /// Pinned links of interfaces that are gone, removed.
    pub links_removed: Vec<String>,
}

impl PinReport {
    /// One line for the log.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "pins in {}: {} maps reused, {} created",
            self.dir.display(),
            self.reused.len(),
            self.created.len()
        );
        if !self.recreated.is_empty() {
            let names: Vec<&str> = self.recreated.iter().map(|r| r.map).collect();
            out += &format!(
                ", {} recreated (counters reset: {})",
                names.len(),
                names.join(", ")
            );
        }
        out += &format!(
            "; {} links adopted, {} of vanished interfaces removed",
            self.links_adopted.len(),
            self.links_removed.len()
        );
        out
    }
}

/// The pin directory of one agent, locked for as long as it lives: two
/// agents sharing maps would each think they own the links.
pub(crate) struct PinDir {
    pub dir: PathBuf,
    /// flock(2) on the directory; released when closed.
    _lock: OwnedFd,
}

impl PinDir {
    pub fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.dir.join("links")
    }

    pub fn link(&self, iface: &str, hook: Hook, direction: &str) -> PathBuf {
        self.links()
            .join(encode_iface(iface))
            .join(format!("{hook}-{direction}"))
    }

    /// Creates (if needed) and locks `dir`, which must be on bpffs.
    pub fn open(dir: &Path) -> Result<Self> {
        let pin_err = |what: &str, e: io::Error| Error::io(format!("{what} {}", dir.display()), e);
        fs::create_dir_all(dir.join("maps")).map_err(|e| pin_err("creating", e))?;
        fs::create_dir_all(dir.join("links")).map_err(|e| pin_err("creating", e))?;
        if !is_bpffs(dir).map_err(|e| pin_err("statfs of", e))? {
            return Err(Error::io(
                format!("pin directory {}", dir.display()),
                io::Error::other(
                    "not on a BPF filesystem; mount one (mount -t bpf bpf /sys/fs/bpf) \
                     or mount the host's /sys/fs/bpf into the pod",
                ),
            ));
        }
        let lock: OwnedFd = fs::File::open(dir)
            .map_err(|e| pin_err("opening", e))?
            .into();
        let started = Instant::now();
        loop {
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) || started.elapsed() > LOCK_WAIT {
                return Err(pin_err("another crossover holds the pin directory", err));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(PinDir {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Checks every pinned map against `options`, unpins the ones that do
    /// not fit, and points `loader` at the pins.
    pub fn prepare<'a>(
        &self,
        loader: &mut EbpfLoader<'a>,
        options: &LoadOptions,
        report: &mut PinReport,
    ) -> Result<()> {
        let wanted = wanted(options);
        let mut misfits: Vec<(&'static str, Option<Geometry>, &'static str)> = Vec::new();
        for (name, want) in &wanted {
            let path = self.map(name);
            if !path.exists() {
                report.created.push(name);
                continue;
            }
            let info = MapInfo::from_pin(&path).map_err(Error::map(name))?;
            let pinned = Geometry::of(&info);
            if pinned == *want {
                report.reused.push(name);
            } else {
                misfits.push((name, Some(pinned), "geometry differs"));
            }
        }
        if report.reused.contains(&map::PEER_SLOTS) && !self.peer_abi_matches()? {
            for name in PEER_KEYED {
                if report.reused.contains(&name) {
                    report.reused.retain(|n| *n != name);
                    let info = MapInfo::from_pin(self.map(name)).map_err(Error::map(name))?;
                    misfits.push((name, Some(Geometry::of(&info)), "peer ABI differs"));
                }
            }
        }
        if misfits.iter().any(|(n, _, _)| COUPLED.contains(n)) {
            for name in COUPLED {
                if !misfits.iter().any(|(n, _, _)| *n == name) && self.map(name).exists() {
                    report.reused.retain(|n| *n != name);
                    misfits.push((name, None, "coupled"));
                }
            }
        }
        for (name, pinned, reason) in misfits {
            // Programs still attached keep the old map alive until their
            // links get this process's programs; then it is freed.
            fs::remove_file(self.map(name))
                .map_err(|e| Error::io(format!("unpinning map {name}"), e))?;
            let want = wanted.iter().find(|(n, _)| *n == name).map(|(_, g)| *g);
            report.recreated.push(Recreated {
                map: name,
                pinned,
                wanted: want.expect("every misfit is a wanted map"),
                reason,
            });
        }
        for (name, _) in &wanted {
            loader.map_pin_path(name, self.map(name));
        }
        Ok(())
    }
}

impl PinDir {
    /// Whether the pinned PEER_SLOTS holds this build's
    /// [`PEER_ABI_VERSION`]. Builds before the version entry wrote none.
    fn peer_abi_matches(&self) -> Result<bool> {
        let path = self.map(map::PEER_SLOTS);
        let data = MapData::from_pin(&path).map_err(Error::map(map::PEER_SLOTS))?;
        let slots: HashMap<MapData, PeerKey, u32> = Map::HashMap(data)
            .try_into()
            .map_err(Error::map(map::PEER_SLOTS))?;
        Ok(slots.get(&PEER_ABI_KEY, 0).ok() == Some(PEER_SLOT_RETIRED | PEER_ABI_VERSION))
    }
}

/// bpffs refuses names with a dot (`flannel.1`), so dots (and the escape
/// character itself) are percent-encoded.
fn encode_iface(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

fn decode_iface(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

fn is_bpffs(dir: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid path and out pointer.
    if unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statfs succeeded.
    let f_type = unsafe { st.assume_init() }.f_type;
    // f_type is i64 on x86_64 glibc, other widths elsewhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(f_type as i64 == BPF_FS_MAGIC)
}

/// A pinned link found in the pin directory.
pub(crate) struct FoundLink {
    pub iface: String,
    pub hook: Hook,
    /// "ingress" or "egress".
    pub direction: String,
    pub path: PathBuf,
    /// Interface index the link is attached to; 0 when the interface is
    /// gone (the kernel detached it then).
    pub ifindex: u32,
    /// The kernel's id of the link.
    pub id: u32,
    /// The program it runs.
    pub prog_id: u32,
}

/// Every pinned link under `links/`. Entries that are not ours or not a
/// TCX link are reported as errors rather than touched.
pub(crate) fn found_links(links: &Path) -> Result<Vec<FoundLink>> {
    let mut out = Vec::new();
    let read = |dir: &Path| {
        fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))
    };
    for iface in read(links)? {
        let iface = iface.map_err(|e| Error::io("listing pinned links", e))?;
        for entry in read(&iface.path())? {
            let entry = entry.map_err(|e| Error::io("listing pinned links", e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name
                .rsplit_once('-')
                .and_then(|(hook, dir)| Some((hook.parse::<Hook>().ok()?, dir)))
                .filter(|(_, dir)| matches!(*dir, "ingress" | "egress"));
            let Some((hook, direction)) = parsed else {
                return Err(Error::io(
                    format!("pinned link {}", path.display()),
                    io::Error::other("not a name crossover gives its links"),
                ));
            };
            let fd = sys::obj_get(&path)
                .map_err(|e| Error::io(format!("opening pinned link {}", path.display()), e))?;
            let target = sys::link_target(fd.as_fd())
                .map_err(|e| Error::io(format!("reading pinned link {}", path.display()), e))?;
            if target.link_type != sys::LINK_TYPE_TCX {
                return Err(Error::io(
                    format!("pinned link {}", path.display()),
                    io::Error::other(format!("link type {} is not TCX", target.link_type)),
                ));
            }
            out.push(FoundLink {
                iface: decode_iface(&iface.file_name().to_string_lossy()),
                hook,
                direction: direction.to_owned(),
                path,
                ifindex: target.ifindex,
                prog_id: target.prog_id,
                id: target.id,
            });
        }
    }
    Ok(out)
}

/// Removes a link pin and, when it was the last one, its interface's
/// directory. Once the pin is gone and no fd holds the link, the kernel
/// detaches it.
pub(crate) fn unpin_link(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("unpinning {}", path.display()), e)),
    }
    if let Some(parent) = path.parent() {
        // Fails while other links of the interface are pinned: fine.
        let _ = fs::remove_dir(parent);
    }
    Ok(())
}

/// What `uninstall` removed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Uninstalled {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Removes every pinned link (detaching it) and map under `dir`, then the
/// directory. For `crossover uninstall` and `--detach-on-exit`; needs no
/// program loaded. A missing directory is nothing to do.
pub fn uninstall(dir: &Path) -> Result<Uninstalled> {
    if !dir.exists() {
        return Ok(Uninstalled::default());
    }
    uninstall_in(&PinDir::open(dir)?)
}

/// [`uninstall`] by the holder of the directory's lock.
pub(crate) fn uninstall_in(pins: &PinDir) -> Result<Uninstalled> {
    let mut done = Uninstalled::default();
    let links = found_links(&pins.links())?;
    for link in &links {
        unpin_link(&link.path)?;
        done.links
            .push(format!("{}/{}-{}", link.iface, link.hook, link.direction));
    }
    let releasing: Vec<Releasing> = links
        .iter()
        .map(|link| Releasing {
            id: link.id,
            program: link.prog_id,
            iface: link.iface.clone(),
            what: format!("{} ({}-{})", link.iface, link.hook, link.direction),
        })
        .collect();
    wait_released(&releasing)?;
    for entry in fs::read_dir(pins.maps()).map_err(|e| Error::io("listing pinned maps", e))? {
        let entry = entry.map_err(|e| Error::io("listing pinned maps", e))?;
        fs::remove_file(entry.path())
            .map_err(|e| Error::io(format!("unpinning {}", entry.path().display()), e))?;
        done.maps
            .push(entry.file_name().to_string_lossy().into_owned());
    }
    remove_dirs(&pins.dir)?;
    Ok(done)
}

/// How long an unpinned link may take to leave its interface. The kernel
/// releases it from a workqueue, normally within milliseconds.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A link whose pin was removed and whose last fd is closed (or about to
/// be): the kernel's ids of it and its program, the interface it is on,
/// and how to name it in an error.
pub(crate) struct Releasing {
    pub id: u32,
    pub program: u32,
    pub iface: String,
    pub what: String,
}

/// Returns once every unpinned link is gone from its interface, so that
/// `crossover uninstall` (and an agent leaving with `--detach-on-exit`)
/// returning means the programs no longer run. The kernel releases a link
/// from a workqueue, and frees its id before it takes the program off the
/// hook (under the RTNL lock, which a busy node's netlink traffic can hold
/// for a while): so the wait is for both, the id and the program off the
/// interface's TCX chain, where the interface is visible from here. A link
/// still there after [`RELEASE_WAIT`] is held by another process's fd
/// (bpftool, a debugger): named in the error.
pub(crate) fn wait_released(links: &[Releasing]) -> Result<()> {
    let deadline = Instant::now() + RELEASE_WAIT;
    for link in links {
        loop {
            let exists = sys::link_exists(link.id).map_err(|e| {
                Error::io(format!("checking that link {} was released", link.id), e)
            })?;
            if !exists && !still_on_hook(&link.iface, link.program) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::io(
                    format!("link {} on {}", link.id, link.what),
                    io::Error::other(format!(
                        "still attached {}s after its pin was removed: another process holds it open",
                        RELEASE_WAIT.as_secs()
                    )),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Whether `program` still runs on either TCX hook of `iface`. An
/// interface that cannot be queried here (gone, or in another network
/// namespace) has nothing to wait for.
fn still_on_hook(iface: &str, program: u32) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .any(|direction| {
            SchedClassifier::query_tcx(iface, direction)
                .is_ok_and(|(_, programs)| programs.iter().any(|p| p.id() == program))
        })
}

/// Removes the (now empty) directory tree of the pins.
pub(crate) fn remove_dirs(dir: &Path) -> Result<()> {
    // Interface directories left empty (a crash between mkdir and pin).
    if let Ok(entries) = fs::read_dir(dir.join("links")) {
        for entry in entries.flatten() {
            let _ = fs::remove_dir(entry.path());
        }
    }
    for sub in ["maps", "links"] {
        match fs::remove_dir(dir.join(sub)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("removing {}", dir.join(sub).display()),
                    e,
                ));
            }
        }
    }
    fs::remove_dir(dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}
