//! The kernel's drops of cluster traffic (`skb:kfree_skb`, drop reasons
//! since 5.17): the program in `observer-ebpf/src/hooks/drop.rs`, the
//! offsets it needs, and what it counted.
//!
//! The record's layout and the reasons' names come from tracefs (the
//! event's `format`: `reason` moved when `rx_sk` was added in 6.10, and
//! the reason enum grows every release), `struct sk_buff`'s from BTF.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuHashMap},
    programs::TracePoint,
};
use observer_ebpf::{Direction, DropConfig, DropKey, Net, Overlay, map};
use serde::Serialize;

use super::{btf::Btf, map_mut, map_ref};
use crate::{Error, Result};

pub const PROGRAM: &str = "crossover_kfree_skb";
/// An empty program on the same tracepoint: the drop program's benchmark
/// floor.
pub const FLOOR_PROGRAM: &str = "crossover_tp_floor";
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
const EVENT: &str = "events/skb/kfree_skb/format";

/// What the `format` file of `skb:kfree_skb` says.
#[derive(Debug, PartialEq)]
pub struct Format {
    pub skb: u32,
    pub protocol: u32,
    pub reason: u32,
    /// `enum skb_drop_reason` value -> name (`NETFILTER_DROP`), from the
    /// print format's symbol table.
    pub reasons: BTreeMap<u32, String>,
}

impl Format {
    pub fn parse(text: &str) -> std::result::Result<Format, String> {
        let offset = |field: &str| -> std::result::Result<u32, String> {
            let line = text
                .lines()
                .find(|l| {
                    l.contains("field:") && l.split(';').next().is_some_and(|f| f.ends_with(field))
                })
                .ok_or_else(|| {
                    format!("no field {field:?} (a kernel before 5.17 has no drop reasons)")
                })?;
            line.split(';')
                .find_map(|part| part.trim().strip_prefix("offset:"))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("field {field:?} has no offset: {line:?}"))
        };
        let mut reasons = BTreeMap::new();
        if let Some(table) = text.split("__print_symbolic(REC->reason,").nth(1) {
            // `{ 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, ...`
            for entry in table.split('{').skip(1) {
                let Some((value, rest)) = entry.split_once(',') else {
                    continue;
                };
                let name = rest.split('"').nth(1);
                if let (Ok(value), Some(name)) = (value.trim().parse::<u32>(), name) {
                    reasons.insert(value, name.to_owned());
                }
            }
        }
        if reasons.is_empty() {
            return Err("no reason names in the print format".into());
        }
        Ok(Format {
            skb: offset(" skbaddr")?,
            protocol: offset(" protocol")?,
            reason: offset(" reason")?,
            reasons,
        })
    }
}

/// The inode number of the network namespace this thread is in: where
/// the node's stack runs (after entering `--netns`).
pub(crate) fn current_netns_inum() -> Result<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino() as u32)
        .map_err(|e| Error::io("reading /proc/thread-self/ns/net", e))
}

/// The mounted tracefs, mounting it where the kernel expects it when it is
/// not (a privileged container's fresh /sys).
fn tracefs() -> Result<&'static str> {
    if let Some(found) = TRACEFS
        .iter()
        .find(|dir| Path::new(dir).join(EVENT).exists())
    {
        return Ok(found);
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS[0]])
        .status()
        .map_err(|e| Error::io("mounting tracefs", e))?;
    if status.success() && Path::new(TRACEFS[0]).join(EVENT).exists() {
        return Ok(TRACEFS[0]);
    }
    Err(Error::io(
        format!("finding skb:kfree_skb under {}", TRACEFS.join(" or ")),
        std::io::Error::other("tracefs is not mounted and could not be"),
    ))
}

/// Writes DROP_CONFIG, loads and attaches the program; returns the
/// reasons' names.
pub(crate) fn enable(ebpf: &mut Ebpf, netns_inum: u32) -> Result<BTreeMap<u32, String>> {
    let dir = tracefs()?;
    let path = Path::new(dir).join(EVENT);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let format = Format::parse(&text)
        .map_err(|why| Error::io(format!("{}", path.display()), std::io::Error::other(why)))?;
    let btf = Btf::load(super::btf::VMLINUX)
        .map_err(|e| Error::io(format!("reading {}", super::btf::VMLINUX), e))?;
    let member = |ty: &str, name: &str| {
        btf.member_offset(ty, name)
            .map_err(|e| Error::io(format!("struct {ty} in {}", super::btf::VMLINUX), e))
    };
    let config = DropConfig {
        record_skb: format.skb,
        record_protocol: format.protocol,
        record_reason: format.reason,
        skb_head: member("sk_buff", "head")?,
        skb_network_header: member("sk_buff", "network_header")?,
        skb_dev: member("sk_buff", "dev")?,
        skb_sk: member("sk_buff", "sk")?,
        // possible_net_t holds the pointer first (or only).
        dev_net: member("net_device", "nd_net")?,
        sk_net: member("sock_common", "skc_net")?,
        net_inum: member("net", "ns")? + member("ns_common", "inum")?,
        netns_inum,
        _pad: 0,
    };
    let mut array: Array<&mut MapData, DropConfig> = map_mut(ebpf, map::DROP_CONFIG)?;
    array
        .set(0, config, 0)
        .map_err(Error::map(map::DROP_CONFIG))?;
    attach(ebpf, PROGRAM)?;
    Ok(format.reasons)
}

/// Loads `name` and attaches it to `skb:kfree_skb`.
pub(crate) fn attach(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let failed = |source: aya::programs::ProgramError| Error::Program {
        program: name.to_owned(),
        source: Box::new(source),
    };
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::MissingProgram(name.to_owned()))?
        .try_into()
        .map_err(failed)?;
    program.load().map_err(failed)?;
    program.attach("skb", "kfree_skb").map_err(failed)?;
    Ok(())
}

/// Packets of one reason, peer, overlay and network pair the kernel
/// dropped on this node, since the map was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropRecord {
    /// The kernel's name for the reason (`NETFILTER_DROP`); `reason_<n>`
    /// for a value the format did not name.
    pub reason: String,
    /// `None`: no other node (local traffic, or an address no node owns).
    pub peer: Option<Ipv4Addr>,
    /// The overlay it was in when dropped; `native` for a pod packet not
    /// (or not yet, or no longer) in a tunnel.
    pub overlay: Overlay,
    pub src_net: Net,
    pub dst_net: Net,
    /// Egress: on its way to `peer` (or to no node); ingress: from it.
    pub direction: Direction,
    pub packets: u64,
}

pub(crate) fn read(ebpf: &Ebpf, reasons: &BTreeMap<u32, String>) -> Result<Vec<DropRecord>> {
    let drops: PerCpuHashMap<&MapData, DropKey, u64> = map_ref(ebpf, map::DROPS)?;
    let mut out = Vec::new();
    for entry in drops.iter() {
        let (key, values) = entry.map_err(Error::map(map::DROPS))?;
        out.push(DropRecord {
            reason: reasons
                .get(&key.reason)
                .cloned()
                .unwrap_or_else(|| format!("reason_{}", key.reason)),
            peer: (key.peer != 0).then(|| Ipv4Addr::from(u32::from_be(key.peer))),
            overlay: Overlay::from_wire(key.overlay).unwrap_or(Overlay::None),
            src_net: Net::from_wire(key.src_net).unwrap_or(Net::Unknown),
            dst_net: Net::from_wire(key.dst_net).unwrap_or(Net::Unknown),
            direction: Direction::from_wire(key.direction).unwrap_or(Direction::Egress),
            packets: values.iter().sum(),
        });
    }
    out.sort_by(|a, b| {
        (
            &a.reason,
            a.peer,
            a.direction,
            a.overlay,
            a.src_net,
            a.dst_net,
        )
            .cmp(&(
                &b.reason,
                b.peer,
                b.direction,
                b.overlay,
                b.src_net,
                b.dst_net,
            ))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: kfree_skb
ID: 2310
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p reason: %s\", REC->skbaddr, __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, { 12, \"NETFILTER_DROP\" })
";

    #[test]
    fn the_format_gives_offsets_and_names() {
        let f = Format::parse(FORMAT_6_18).unwrap();
        assert_eq!((f.skb, f.protocol, f.reason), (8, 32, 36));
        assert_eq!(f.reasons[&12], "NETFILTER_DROP");
        assert_eq!(f.reasons.len(), 2);
        // 5.15: no reason field.
        let old = FORMAT_6_18.replace("enum skb_drop_reason reason", "int other");
        assert!(Format::parse(&old).unwrap_err().contains("before 5.17"));
    }

    /// This machine's kernel, as the agent reads it.
    #[test]
    fn this_kernels_format_parses() {
        let Ok(dir) = tracefs() else {
            panic!("tracefs is needed (root): mount -t tracefs nodev /sys/kernel/tracing");
        };
        let text = std::fs::read_to_string(Path::new(dir).join(EVENT)).unwrap();
        let f = Format::parse(&text).unwrap();
        assert!(f.reasons.values().any(|n| n == "NETFILTER_DROP"), "{f:?}");
    }
}
