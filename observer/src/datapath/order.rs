//! Where crossover's programs stand on each hook, relative to Cilium's.
//!
//! Cilium's programs end a packet's journey on their hook (TC_ACT_OK /
//! TCX_PASS are final, redirects move it elsewhere): a program that runs
//! after them never sees it. So crossover must run first. On TCX it
//! attaches at the head and Cilium at the tail (`link.Tail()`); on clsact
//! it shares Cilium's priority 1, where cls_bpf runs the most recently
//! added filter first and Cilium's restarts replace their filter in place.
//! Either can be upset (something attached at the TCX head after us, a
//! Cilium filter added after ours): this module finds out from the kernel
//! which programs run ahead of ours; the Observer re-attaches in front, and
//! a hook it cannot put first is reported blind rather than trusted.
use std::{io, process::Command};

use aya::programs::{SchedClassifier, TcAttachType};
use serde::Serialize;

use super::{AttachMode, Hook};
use crate::{Error, Result};

/// How a hook's program stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Ours runs before every other program on the hook: it sees every
    /// packet that crosses it.
    First,
    /// Another program runs before ours and may end a packet's journey:
    /// what this hook counts is not what crossed it.
    Blind,
}

/// How many hooks of each kind and direction are blind: what `/metrics`
/// shows (bounded: a series per hook kind and direction, whatever the
/// number of pod veths).
pub fn blind_by_hook(order: &[HookOrder]) -> Vec<(Hook, &'static str, u64)> {
    let mut out = Vec::new();
    for hook in Hook::ALL {
        for direction in ["ingress", "egress"] {
            let blind = order
                .iter()
                .filter(|o| o.hook == hook && o.direction == direction)
                .filter(|o| o.placement == Placement::Blind)
                .count();
            out.push((hook, direction, blind as u64));
        }
    }
    out
}

/// One hook's placement, as last checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HookOrder {
    pub iface: String,
    pub hook: Hook,
    pub direction: &'static str,
    pub placement: Placement,
    /// Kernel ids of the programs that run before ours (empty when first).
    pub ahead: Vec<u32>,
}

/// Programs ahead of the program `ours` on `iface`'s `direction` hook, in
/// the current network namespace; `None` when ours is not on the hook.
pub(crate) fn ahead_of(
    mode: AttachMode,
    iface: &str,
    direction: TcAttachType,
    ours: u32,
) -> Result<Option<Vec<u32>>> {
    let chain = match mode {
        AttachMode::Netlink => filter_chain(iface, direction)?,
        _ => tcx_chain(iface, direction)?,
    };
    Ok(chain
        .iter()
        .position(|&id| id == ours)
        .map(|at| chain[..at].to_vec()))
}

/// Program ids on a TCX hook, in the order they run.
fn tcx_chain(iface: &str, direction: TcAttachType) -> Result<Vec<u32>> {
    let (_, programs) = SchedClassifier::query_tcx(iface, direction).map_err(|e| {
        Error::io(
            format!("querying the TCX programs of {iface}"),
            io::Error::other(e.to_string()),
        )
    })?;
    Ok(programs.iter().map(|p| p.id()).collect())
}

/// True when any filter is left on `iface`'s clsact (either direction),
/// or when that cannot be told (then the qdisc is better left in place).
pub(crate) fn filters_remain(iface: &str) -> bool {
    [TcAttachType::Ingress, TcAttachType::Egress]
        .into_iter()
        .any(|direction| !matches!(filter_chain(iface, direction), Ok(f) if f.is_empty()))
}

/// Program ids of the cls_bpf filters on a clsact hook, in the order they
/// run (by priority, then as the kernel lists them within one: newest
/// first), from `tc -j filter show`. Filters of other kinds, which carry
/// no program, count as unknown programs (id 0) ahead of whatever follows.
fn filter_chain(iface: &str, direction: TcAttachType) -> Result<Vec<u32>> {
    let parent = super::direction_label(direction);
    let out = Command::new("tc")
        .args(["-j", "filter", "show", "dev", iface, parent])
        .output()
        .map_err(|e| Error::io(format!("running tc to list the filters of {iface}"), e))?;
    if !out.status.success() {
        return Err(Error::io(
            format!("listing the {parent} filters of {iface}"),
            io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        ));
    }
    parse_filters(&out.stdout).map_err(|e| {
        Error::io(
            format!("reading tc's list of the {parent} filters of {iface}"),
            io::Error::other(e),
        )
    })
}

/// From `tc -j filter show`: one entry per filter, in evaluation order
/// (entries without `options` head each priority and are skipped).
fn parse_filters(json: &[u8]) -> std::result::Result<Vec<u32>, String> {
    // tc prints nothing at all for a hook without filters.
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let entries: Vec<serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut ids = Vec::new();
    for entry in &entries {
        let Some(options) = entry.get("options") else {
            continue;
        };
        let id = options
            .get("prog")
            .and_then(|p| p.get("id"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        ids.push(u32::try_from(id).map_err(|_| format!("program id {id} out of range"))?);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::parse_filters;

    #[test]
    fn filters_in_evaluation_order_with_unknown_kinds_as_zero() {
        let json = br#"[{"protocol":"all","pref":1,"kind":"bpf","chain":0},
            {"protocol":"all","pref":1,"kind":"bpf","chain":0,"options":{"handle":"0xc055","bpf_name":"crossover_underlay_egress","direct-action":true,"prog":{"id":41,"tag":"ab","jited":1}}},
            {"protocol":"all","pref":1,"kind":"bpf","chain":0,"options":{"handle":"0x1","bpf_name":"cil_to_netdev","direct-action":true,"prog":{"id":17,"tag":"cd","jited":1}}},
            {"protocol":"ip","pref":5,"kind":"u32","chain":0},
            {"protocol":"ip","pref":5,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}}]"#;
        assert_eq!(parse_filters(json).unwrap(), vec![41, 17, 0]);
        assert_eq!(parse_filters(b"\n").unwrap(), Vec::<u32>::new());
        assert!(parse_filters(b"[{").is_err());
    }
}
