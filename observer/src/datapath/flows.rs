//! The flow table read a page at a time by whoever asks (the JSON API),
//! without the observer's lock, which the tick's reads need: a handle on
//! the map of its own, and the kernel's batch cursor (a bucket index,
//! stable while entries come and go) as the page token.
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{HashMap, IterableMap, MapData};
use observer_ebpf::{FlowKey, FlowStats, map};

use super::{FlowRecord, Observer, map_ref, sys};
use crate::{Error, Result};

/// Most entries one page may read.
pub const MAX_PAGE: usize = 10_000;

/// A handle on FLOWS that outlives no lock: a duplicate of the map's fd.
pub struct FlowTable {
    fd: OwnedFd,
    /// The table's capacity: what a whole read may hold at most.
    capacity: u32,
}

/// One page: the flows of the next `limit` entries that `keep` kept, and
/// where the next page starts (`None`: this was the last).
#[derive(Debug)]
pub struct FlowPage {
    pub flows: Vec<FlowRecord>,
    pub next: Option<u32>,
    /// Entries read for this page, kept or not.
    pub scanned: usize,
}

impl Observer {
    /// A handle to read FLOWS from any thread while the observer is used
    /// by others.
    pub fn flow_table(&self) -> Result<FlowTable> {
        let flows: HashMap<&MapData, FlowKey, FlowStats> = map_ref(&self.ebpf, map::FLOWS)?;
        let fd = flows
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io(format!("duplicating the {} map's fd", map::FLOWS), e))?;
        Ok(FlowTable {
            fd,
            capacity: self.options.flow_capacity,
        })
    }
}

impl FlowTable {
    /// The entries from `from` on (the start when `None`), `limit` (at
    /// most [`MAX_PAGE`]) of them, those `keep` accepts decoded.
    pub fn page(
        &self,
        from: Option<u32>,
        limit: usize,
        mut keep: impl FnMut(&FlowRecord) -> bool,
    ) -> Result<FlowPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut page = FlowPage {
            flows: Vec::new(),
            next: from,
            scanned: 0,
        };
        let mut first = true;
        // A batch may stop short of its count at a bucket's edge: go on
        // until the page is full or the table ends.
        while page.scanned < limit && (first || page.next.is_some()) {
            first = false;
            let want = (limit - page.scanned) as u32;
            let next = sys::lookup_batch_page(
                self.fd.as_fd(),
                want,
                page.next,
                |k: &FlowKey, v: &FlowStats| {
                    page.scanned += 1;
                    if let Some(flow) = FlowRecord::from_raw(k, v)
                        && keep(&flow)
                    {
                        page.flows.push(flow);
                    }
                },
            );
            page.next = match next {
                Ok(next) => next,
                // A bucket holding more than what is left of the page: the
                // kernel says so before copying anything. The page ends.
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && page.scanned > 0 => {
                    break;
                }
                Err(e) if sys::batch_unsupported(&e) => {
                    return Err(Error::io(
                        "paged reads of the flow table need BPF_MAP_LOOKUP_BATCH (Linux 5.6+)",
                        e,
                    ));
                }
                Err(e) => return Err(Error::io(format!("batch lookup of {}", map::FLOWS), e)),
            };
        }
        Ok(page)
    }

    /// Every flow, for a join across hooks; at most the table's capacity.
    pub fn all(&self) -> Result<Vec<FlowRecord>> {
        let mut out = Vec::new();
        let mut from = None;
        loop {
            let page = self.page(from, MAX_PAGE, |_| true)?;
            out.extend(page.flows);
            match page.next {
                Some(next) if out.len() < self.capacity as usize => from = Some(next),
                _ => return Ok(out),
            }
        }
    }
}
