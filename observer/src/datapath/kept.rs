//! Pages of bytes pinned beside the counters: what userspace keeps across
//! its own restart (the loss windows' ticks, `loss/kept.rs`). bpffs holds
//! no regular files, and a map in the pin directory lives exactly as long
//! as the counters the bytes are about: `uninstall` removes it with them,
//! a reboot takes both.
//!
//! One hash map (`BPF_F_NO_PREALLOC`: memory follows what is written),
//! keyed by (slot, page). A slot holds one blob: page 0 starts with its
//! length. Writing a slot writes its other pages first and page 0 last, so
//! a process killed in between leaves page 0 describing the old blob over
//! new pages, which the caller's checksum refuses. The pages themselves
//! carry no meaning here: formats, versions and checks are the caller's.
use std::{fs, path::Path};

use aya::maps::{HashMap, IterableMap, Map, MapData, MapError, MapInfo, MapType};

use super::pin::{Geometry, PinDir};
use crate::{Error, Result};

/// Bytes a page holds: with the kernel's element header and key, one
/// 4 KiB allocation.
pub const PAGE: usize = 4000;
/// (slot, page).
type PageKey = [u32; 2];
type Page = [u8; PAGE];
/// Bytes page 0 spends on the blob's length.
const LENGTH: usize = size_of::<u32>();
const BPF_F_NO_PREALLOC: u32 = 1;

/// What opening the pinned map found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "map")]
pub enum Found {
    /// Pinned and of this geometry: its slots are read back.
    Reused,
    /// Not pinned (the first agent with this pin directory, or after
    /// `uninstall`).
    Created,
    /// Pinned with another geometry (another window, tick, capacity or
    /// page size): replaced, its contents not read.
    Recreated { pinned: Geometry, wanted: Geometry },
    /// Could not be opened or created: nothing is kept (the caller says
    /// why).
    Unavailable,
}

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot {
    Empty,
    Bytes(Vec<u8>),
    /// Its length is past the slot's pages, or a page is missing.
    Broken(String),
}

pub struct PinnedPages {
    map: HashMap<MapData, PageKey, Page>,
    name: &'static str,
    slots: u32,
    pages_per_slot: u32,
    /// Pages each slot holds now, so a shorter blob removes the rest.
    used: Vec<u32>,
}

/// Pages a blob of `len` bytes takes.
fn pages_for(len: usize) -> usize {
    (LENGTH + len).div_ceil(PAGE)
}

impl PinnedPages {
    /// Opens map `name` under the pin directory's `maps/`, or creates and
    /// pins it, for `slots` blobs of at most `max_bytes` each.
    pub(crate) fn open(
        pins: &PinDir,
        name: &'static str,
        slots: u32,
        max_bytes: usize,
    ) -> Result<(Self, Found)> {
        let pages_per_slot = u32::try_from(pages_for(max_bytes))
            .ok()
            .filter(|p| p.checked_mul(slots).is_some())
            .ok_or_else(|| Error::MapFull {
                map: name,
                capacity: u32::MAX,
                what: format!("{slots} slots of {max_bytes} bytes do not fit one map"),
            })?;
        let wanted = Geometry {
            map_type: MapType::Hash as u32,
            key_size: size_of::<PageKey>() as u32,
            value_size: PAGE as u32,
            max_entries: slots * pages_per_slot,
            flags: BPF_F_NO_PREALLOC,
        };
        let path = pins.map(name);
        let mut found = Found::Created;
        if path.exists() {
            let pinned = Geometry::of(&MapInfo::from_pin(&path).map_err(Error::map(name))?);
            if pinned == wanted {
                found = Found::Reused;
            } else {
                fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("unpinning map {name}"), e))?;
                found = Found::Recreated { pinned, wanted };
            }
        }
        let map = if found == Found::Reused {
            let data = MapData::from_pin(&path).map_err(Error::map(name))?;
            Map::HashMap(data).try_into().map_err(Error::map(name))?
        } else {
            create(&path, name, wanted)?
        };
        let mut pages = PinnedPages {
            map,
            name,
            slots,
            pages_per_slot,
            used: vec![0; slots as usize],
        };
        pages.count_used()?;
        Ok((pages, found))
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// The most bytes a slot holds.
    pub fn max_bytes(&self) -> usize {
        self.pages_per_slot as usize * PAGE - LENGTH
    }

    /// How many pages each slot has, from the keys present.
    fn count_used(&mut self) -> Result<()> {
        for key in self.map.keys() {
            let [slot, page] = key.map_err(Error::map(self.name))?;
            if let Some(used) = self.used.get_mut(slot as usize) {
                *used = (*used).max(page + 1);
            }
        }
        Ok(())
    }

    /// Replaces slot `slot`'s blob with `bytes`.
    pub fn write(&mut self, slot: u32, bytes: &[u8]) -> Result<()> {
        let pages = pages_for(bytes.len());
        if slot >= self.slots || bytes.len() > self.max_bytes() {
            return Err(Error::MapFull {
                map: self.name,
                capacity: self.slots * self.pages_per_slot,
                what: format!(
                    "slot {slot} of {} cannot take {} bytes (at most {})",
                    self.slots,
                    bytes.len(),
                    self.max_bytes()
                ),
            });
        }
        let mut framed = Vec::with_capacity(pages * PAGE);
        framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        framed.extend_from_slice(bytes);
        framed.resize(pages * PAGE, 0);
        let page = |i: usize| -> &Page {
            framed[i * PAGE..(i + 1) * PAGE]
                .try_into()
                .expect("a whole page")
        };
        for i in (1..pages).chain([0]) {
            self.map
                .insert([slot, i as u32], page(i), 0)
                .map_err(Error::map(self.name))?;
        }
        let used = &mut self.used[slot as usize];
        for i in pages as u32..*used {
            match self.map.remove(&[slot, i]) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(Error::map(self.name)(e)),
            }
        }
        *used = pages as u32;
        Ok(())
    }

    /// Slot `slot`'s blob as last written.
    pub fn read(&self, slot: u32) -> Result<Slot> {
        let get = |page: u32| match self.map.get(&[slot, page], 0) {
            Ok(p) => Ok(Some(p)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::map(self.name)(e)),
        };
        let Some(first) = get(0)? else {
            return Ok(Slot::Empty);
        };
        let len = u32::from_le_bytes(first[..LENGTH].try_into().expect("4 bytes")) as usize;
        if len > self.max_bytes() {
            return Ok(Slot::Broken(format!(
                "length {len} past the slot's {} bytes",
                self.max_bytes()
            )));
        }
        let mut framed = Vec::with_capacity(pages_for(len) * PAGE);
        framed.extend_from_slice(&first);
        for i in 1..pages_for(len) as u32 {
            match get(i)? {
                Some(p) => framed.extend_from_slice(&p),
                None => return Ok(Slot::Broken(format!("page {i} of the slot is missing"))),
            }
        }
        Ok(Slot::Bytes(framed[LENGTH..LENGTH + len].to_vec()))
    }

    /// The kernel's id of the map.
    pub fn id(&self) -> Result<u32> {
        let info = self.map.map().info().map_err(Error::map(self.name))?;
        Ok(info.id())
    }
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOENT))
}

fn create(path: &Path, name: &'static str, g: Geometry) -> Result<HashMap<MapData, PageKey, Page>> {
    let map = HashMap::<MapData, PageKey, Page>::create(g.max_entries, g.flags)
        .map_err(Error::map(name))?;
    map.map().pin(path).map_err(|e| {
        Error::io(
            format!("pinning map {name} at {}", path.display()),
            std::io::Error::other(e),
        )
    })?;
    Ok(map)
}
