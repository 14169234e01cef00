//! Checks of Cilium's own settings: `cilium-config` as the Helm chart
//! renders it, and the per-node CiliumNodeConfig.
//!
//! Keys and values verified against the chart's
//! `install/kubernetes/cilium/templates/cilium-configmap.yaml`
//! (cilium/cilium, commit 002c6fff):
//! - `ipam: {{ $ipam | quote }}` (from `ipam.mode`, default cluster-pool);
//! - `enable-policy: "{{ lower .Values.policyEnforcementMode }}"`;
//! - `enable-host-legacy-routing: {{ .Values.bpf.hostLegacyRouting | quote }}`,
//!   written only when the value is set (or in chaining mode);
//! - `custom-cni-conf: "{{ .Values.cni.customConf }}"`;
//! - `cni-uninstall: {{ .Values.cni.uninstall | quote }}`, written only when
//!   true: `cni.uninstall: false` leaves the key out, and the preStop hook
//!   `plugins/cilium-cni/cni-uninstall.sh` removes nothing unless the file
//!   `/tmp/cilium/config-map/cni-uninstall` says `true`;
//! - `unmanaged-pod-watcher-interval`: `"0"` when
//!   `operator.unmanagedPodWatcher.restart` is false, else
//!   `"<intervalSeconds>s"`; the operator's flag defaults to 15 (seconds),
//!   "0 to disable" (`operator/option`), so an absent key restarts pods.
use std::collections::BTreeMap;

use super::{Check, Facts, helm_set};
use crate::cluster::cilium::{CiliumNodeConfig, selects};

pub const MIGRATION_LABEL: &str = "io.cilium.migration/cilium-default";

/// The guide's CiliumNodeConfig defaults: a migrated node's agent writes
/// its own CNI config, first in the directory, and takes the node alone.
pub const NODE_CONFIG_DEFAULTS: [(&str, &str); 4] = [
    (
        "write-cni-conf-when-ready",
        "/host/etc/cni/net.d/05-cilium.conflist",
    ),
    ("custom-cni-conf", "false"),
    ("cni-chaining-mode", "none"),
    ("cni-exclusive", "true"),
];

/// The value of `key`, or the failing check when `cilium-config` is absent.
fn config<'a>(facts: &'a Facts, name: &'static str, key: &str) -> Result<Option<&'a str>, Check> {
    match &facts.cilium_config {
        Some(data) => Ok(data.get(key).map(|v| v.trim())),
        None => Err(Check::fail(
            name,
            format!(
                "ConfigMap {}/cilium-config not found: Cilium is not installed there, so {key} cannot be read",
                facts.cilium_namespace
            ),
            install_remedy(&facts.cilium_namespace),
        )),
    }
}

/// The guide's first-phase values, as a file and a Helm install.
pub(super) fn install_remedy(namespace: &str) -> String {
    format!(
        "cat > values-migration.yaml <<'EOF'\n\
         operator: {{ unmanagedPodWatcher: {{ restart: false }} }}\n\
         routingMode: tunnel\n\
         tunnelProtocol: vxlan\n\
         tunnelPort: 8473\n\
         cni: {{ customConf: true, uninstall: false }}\n\
         ipam: {{ mode: cluster-pool, operator: {{ clusterPoolIPv4PodCIDRList: [\"10.245.0.0/16\"] }} }}\n\
         policyEnforcementMode: never\n\
         bpf: {{ hostLegacyRouting: true }}\n\
         EOF\n\
         # pick a pod CIDR disjoint from the legacy and Service CIDRs first\n\
         helm upgrade --install cilium cilium/cilium -n {namespace} -f values-migration.yaml"
    )
}

pub fn ipam(facts: &Facts) -> Check {
    const NAME: &str = "cilium-ipam";
    let ns = &facts.cilium_namespace;
    let remedy = || {
        helm_set(
            ns,
            &[
                "ipam.mode=cluster-pool",
                "'ipam.operator.clusterPoolIPv4PodCIDRList={10.245.0.0/16}'",
            ],
            "deploy/cilium-operator ds/cilium",
        )
    };
    match config(facts, NAME, "ipam") {
        Err(check) => check,
        Ok(Some("cluster-pool")) => Check::pass(NAME, "cilium-config ipam=cluster-pool"),
        Ok(Some(other)) => Check::fail(
            NAME,
            format!(
                "cilium-config ipam={other:?}: the migration needs cluster-pool, so Cilium's pods get \
                 addresses from their own pool, disjoint from the legacy one"
            ),
            remedy(),
        ),
        Ok(None) => Check::warn(
            NAME,
            "cilium-config has no ipam key (the chart always writes one): cannot tell the IPAM mode",
            remedy(),
        ),
    }
}

pub fn policy(facts: &Facts) -> Check {
    const NAME: &str = "cilium-policy-never";
    let remedy = || {
        helm_set(
            &facts.cilium_namespace,
            &["policyEnforcementMode=never"],
            "ds/cilium",
        )
    };
    match config(facts, NAME, "enable-policy") {
        Err(check) => check,
        Ok(Some(v)) if v.eq_ignore_ascii_case("never") => {
            Check::pass(NAME, "cilium-config enable-policy=never")
        }
        Ok(value) => Check::fail(
            NAME,
            format!(
                "cilium-config enable-policy={}: while pods sit on two networks, any policy Cilium \
                 enforces sees legacy pods as unknown (SNATed, no identity) and drops them",
                shown(value, "unset, Cilium's default is \"default\"")
            ),
            remedy(),
        ),
    }
}

pub fn host_legacy_routing(facts: &Facts) -> Check {
    const NAME: &str = "cilium-host-legacy-routing";
    let remedy = || {
        helm_set(
            &facts.cilium_namespace,
            &["bpf.hostLegacyRouting=true"],
            "ds/cilium",
        )
    };
    // What crossover can see in the mode found (docs/hooks.md): its loss
    // signals come from the underlay, which sees every packet in any mode;
    // its pod hooks do not under eBPF host routing or on netkit devices.
    let netkit = match config(facts, NAME, "datapath-mode") {
        Ok(Some(mode)) if mode.starts_with("netkit") => format!(
            "; datapath-mode={mode}: crossover's pod hooks do not see Cilium's pods (netkit \
             devices have their own attach points, not attached), its loss signals come from the \
             underlay and are unaffected"
        ),
        _ => String::new(),
    };
    match config(facts, NAME, "enable-host-legacy-routing") {
        Err(check) => check,
        Ok(Some("true")) => Check::pass(
            NAME,
            format!(
                "cilium-config enable-host-legacy-routing=true: every hook crossover attaches to \
                 sees every packet{netkit}"
            ),
        ),
        Ok(value) => Check::fail(
            NAME,
            format!(
                "cilium-config enable-host-legacy-routing={}: traffic between Cilium and legacy pods \
                 must go through the host's routing stack, where the two overlays meet; under eBPF \
                 host routing crossover's pod hooks also miss what Cilium redirects into its pods \
                 (bpf_redirect_peer), though not its loss signals, from the underlay{netkit}",
                shown(
                    value,
                    "unset, Cilium uses eBPF host routing where the kernel allows"
                )
            ),
            remedy(),
        ),
    }
}

pub fn cni(facts: &Facts) -> Check {
    const NAME: &str = "cilium-cni-config";
    let custom = match config(facts, NAME, "custom-cni-conf") {
        Err(check) => return check,
        Ok(v) => v,
    };
    let uninstall = facts
        .cilium_config
        .as_ref()
        .and_then(|c| c.get("cni-uninstall"))
        .map(|v| v.trim());
    let mut wrong = Vec::new();
    let mut sets = Vec::new();
    if custom != Some("true") {
        wrong.push(format!(
            "custom-cni-conf={}: every Cilium agent would write its CNI config at once and take \
             over pod networking on every node",
            shown(custom, "unset, the agent writes its CNI config")
        ));
        sets.push("cni.customConf=true");
    }
    if uninstall == Some("true") {
        wrong.push(
            "cni-uninstall=true: a restarting Cilium agent removes CNI configuration from the node"
                .to_string(),
        );
        sets.push("cni.uninstall=false");
    }
    if wrong.is_empty() {
        Check::pass(
            NAME,
            format!(
                "cilium-config custom-cni-conf=true, cni-uninstall={}",
                shown(uninstall, "unset (off)")
            ),
        )
    } else {
        Check::fail(
            NAME,
            format!("cilium-config {}", wrong.join("; ")),
            helm_set(&facts.cilium_namespace, &sets, "ds/cilium"),
        )
    }
}

pub fn unmanaged_pod_watcher(facts: &Facts) -> Check {
    const NAME: &str = "cilium-unmanaged-pod-watcher";
    const KEY: &str = "unmanaged-pod-watcher-interval";
    let remedy = || {
        helm_set(
            &facts.cilium_namespace,
            &["operator.unmanagedPodWatcher.restart=false"],
            "deploy/cilium-operator",
        )
    };
    let value = match config(facts, NAME, KEY) {
        Err(check) => return check,
        Ok(v) => v,
    };
    match value.map(interval_is_zero) {
        Some(Some(true)) => Check::pass(
            NAME,
            format!("cilium-config {KEY}={:?}: off", value.unwrap_or_default()),
        ),
        Some(Some(false)) => Check::fail(
            NAME,
            format!(
                "cilium-config {KEY}={:?}: the operator restarts every pod Cilium does not manage, \
                 i.e. every legacy pod, at once",
                value.unwrap_or_default()
            ),
            remedy(),
        ),
        Some(None) => Check::fail(
            NAME,
            format!(
                "cilium-config {KEY}={:?} is not an interval (seconds or a Go duration)",
                value.unwrap_or_default()
            ),
            remedy(),
        ),
        None => Check::fail(
            NAME,
            format!(
                "cilium-config has no {KEY}: the operator's default (15 s) restarts every legacy pod"
            ),
            remedy(),
        ),
    }
}

/// Whether an operator interval (`0`, `15`, `15s`, `1m30s`) is zero;
/// `None` when it is neither a number nor a duration.
fn interval_is_zero(value: &str) -> Option<bool> {
    let v = value.trim().trim_matches('"');
    let ok = !v.is_empty()
        && v.chars().next().is_some_and(|c| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || "nsuµmh".contains(c));
    ok.then(|| !v.chars().any(|c| ('1'..='9').contains(&c)))
}

pub fn node_config(facts: &Facts) -> Check {
    const NAME: &str = "cilium-node-config";
    let ns = &facts.cilium_namespace;
    let Some(configs) = &facts.node_configs else {
        return Check::fail(
            NAME,
            "no CiliumNodeConfig CRD is served (cilium.io/v2 or v2alpha1): Cilium is not installed \
             or older than 1.13, and per-node configuration is how nodes are moved one by one",
            format!(
                "# CiliumNodeConfig needs Cilium >= 1.13\n{}",
                install_remedy(ns)
            ),
        );
    };
    let labelled = BTreeMap::from([(MIGRATION_LABEL.to_string(), "true".to_string())]);
    let selecting: Vec<&CiliumNodeConfig> = configs
        .items
        .iter()
        .filter(|c| {
            c.spec
                .node_selector
                .as_ref()
                .is_some_and(|s| selects(s, &labelled))
        })
        .collect();
    let (here, elsewhere): (Vec<_>, Vec<_>) = selecting
        .into_iter()
        .partition(|c| c.metadata.namespace.as_deref() == Some(ns.as_str()));
    if here.is_empty() {
        let mut detail = format!("no CiliumNodeConfig in {ns} selects {MIGRATION_LABEL}=true");
        for c in elsewhere {
            let _ = std::fmt::Write::write_fmt(
                &mut detail,
                format_args!(
                    "; {}/{} does, but Cilium only reads its own namespace",
                    c.metadata.namespace.as_deref().unwrap_or_default(),
                    c.metadata.name.as_deref().unwrap_or_default()
                ),
            );
        }
        return Check::fail(NAME, detail, apply_node_config(ns, &configs.api_version));
    }
    let mut problems = Vec::new();
    let unlabelled = BTreeMap::new();
    for c in &here {
        let name = c.metadata.name.as_deref().unwrap_or_default();
        if c.spec
            .node_selector
            .as_ref()
            .is_some_and(|s| selects(s, &unlabelled))
        {
            problems.push(format!(
                "{name} also selects nodes without the label: restarting any Cilium agent would move its node"
            ));
        }
        let wrong: Vec<String> = NODE_CONFIG_DEFAULTS
            .iter()
            .filter(|(k, v)| c.spec.defaults.get(*k).map(String::as_str) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}={} (want {v:?})",
                    shown(c.spec.defaults.get(*k).map(String::as_str), "unset")
                )
            })
            .collect();
        if !wrong.is_empty() {
            problems.push(format!("{name} defaults {}", wrong.join(", ")));
        }
    }
    let names: Vec<&str> = here
        .iter()
        .map(|c| c.metadata.name.as_deref().unwrap_or_default())
        .collect();
    if problems.is_empty() {
        Check::pass(
            NAME,
            format!(
                "{ns}/{} selects {MIGRATION_LABEL}=true with the four migration defaults",
                names.join(", ")
            ),
        )
    } else {
        let patches: Vec<String> = names
            .iter()
            .map(|name| patch_node_config(ns, name))
            .collect();
        Check::fail(NAME, problems.join("; "), patches.join("\n"))
    }
}

fn defaults_json() -> String {
    let pairs: Vec<String> = NODE_CONFIG_DEFAULTS
        .iter()
        .map(|(k, v)| format!("\"{k}\":\"{v}\""))
        .collect();
    format!("{{{}}}", pairs.join(","))
}

fn patch_node_config(ns: &str, name: &str) -> String {
    format!(
        "kubectl -n {ns} patch ciliumnodeconfig {name} --type=merge -p '{{\"spec\":{{\"nodeSelector\":{{\"matchLabels\":{{\"{MIGRATION_LABEL}\":\"true\"}},\"matchExpressions\":null}},\"defaults\":{}}}}}'",
        defaults_json()
    )
}

fn apply_node_config(ns: &str, api_version: &str) -> String {
    let defaults: String = NODE_CONFIG_DEFAULTS
        .iter()
        .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
        .collect();
    format!(
        "kubectl apply --server-side -f - <<'EOF'\n\
         apiVersion: {api_version}\n\
         kind: CiliumNodeConfig\n\
         metadata:\n  namespace: {ns}\n  name: cilium-default\n\
         spec:\n  nodeSelector:\n    matchLabels:\n      {MIGRATION_LABEL}: \"true\"\n  defaults:\n{defaults}\
         EOF"
    )
}

/// A value as the detail shows it, or why there is none.
fn shown(value: Option<&str>, absent: &str) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => format!("({absent})"),
    }
}

#[cfg(test)]
mod tests {
    use super::interval_is_zero;

    #[test]
    fn intervals() {
        for zero in ["0", "0s", "0m0s", "0.0s"] {
            assert_eq!(interval_is_zero(zero), Some(true), "{zero}");
        }
        for on in ["15", "15s", "1m", "1m0s"] {
            assert_eq!(interval_is_zero(on), Some(false), "{on}");
        }
        for bad in ["", "off", "s", "-1"] {
            assert_eq!(interval_is_zero(bad), None, "{bad}");
        }
    }
}
