//! Interfaces and their roles: which hook an interface gets, from its name.
//!
//! Each CNI names its devices its own way; a migration runs two at once, so
//! the defaults know every plugin the migration guide names. Rules are
//! globs (`*`, `?`) tried in order, the first match wins; rules given by
//! flag or shape file go before the defaults, and `none` leaves matching
//! interfaces alone.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Kind of interface crossover observes; each has an ingress and an egress
/// program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// The node's NIC, where tunnels are on the wire.
    Underlay,
    /// The legacy CNI's tunnel device: `flannel.1`, `vxlan.calico`, `tunl0`.
    OverlayLegacy,
    /// `cilium_vxlan`, `cilium_geneve`.
    OverlayCilium,
    /// `cilium_host`.
    Host,
    /// Host side of a pod's veth: `veth*`, `cali*`, `eni*`, `lxc*`.
    Pod,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Underlay,
        Hook::OverlayLegacy,
        Hook::OverlayCilium,
        Hook::Host,
        Hook::Pod,
    ];

    /// The hook an interface gets from its name under the default rules.
    /// The underlay has no fixed name and must be given.
    pub fn for_interface(name: &str) -> Option<Hook> {
        Rules::default().hook_for(name)
    }

    pub fn label(self) -> &'static str {
        match self {
            Hook::Underlay => "underlay",
            Hook::OverlayLegacy => "overlay-legacy",
            Hook::OverlayCilium => "overlay-cilium",
            Hook::Host => "host",
            Hook::Pod => "pod",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Hook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hook::ALL
            .into_iter()
            .find(|h| h.label() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Hook::ALL.iter().map(|h| h.label()).collect();
                format!("unknown hook {s:?}; expected one of {}", known.join(", "))
            })
    }
}

/// One rule: interfaces whose name matches `pattern` get `hook`; with no
/// hook they are left alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub pattern: String,
    /// `none` leaves matching interfaces unobserved.
    #[serde(with = "hook_or_none")]
    pub hook: Option<Hook>,
    /// Where the rule comes from, shown at start-up.
    #[serde(skip)]
    pub source: &'static str,
}

/// The CNIs' own names. `cni0` (Flannel's bridge) is not among them: its
/// veth ports are, and the bridge would see the same packets again.
const DEFAULTS: &[(&str, Hook, &str)] = &[
    ("flannel.1", Hook::OverlayLegacy, "Flannel VXLAN"),
    ("vxlan.calico", Hook::OverlayLegacy, "Calico VXLAN"),
    ("tunl0", Hook::OverlayLegacy, "Calico IP-in-IP"),
    ("cilium_vxlan", Hook::OverlayCilium, "Cilium VXLAN"),
    ("cilium_geneve", Hook::OverlayCilium, "Cilium Geneve"),
    ("cilium_host", Hook::Host, "Cilium"),
    ("veth*", Hook::Pod, "Flannel (cni0's ports), bridge CNIs"),
    ("cali*", Hook::Pod, "Calico"),
    ("eni*", Hook::Pod, "AWS VPC CNI"),
    ("lxc*", Hook::Pod, "Cilium"),
];

/// Most rules a flag and a shape file may add: each is tried against every
/// interface at every rescan.
pub const MAX_RULES: usize = 64;

/// The rules in the order they are tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Default for Rules {
    fn default() -> Self {
        Rules(
            DEFAULTS
                .iter()
                .map(|&(pattern, hook, source)| Rule {
                    pattern: pattern.into(),
                    hook: Some(hook),
                    source,
                })
                .collect(),
        )
    }
}

impl Rules {
    /// The defaults behind `first` (flags, then the shape file's rules).
    pub fn with_overrides(first: impl IntoIterator<Item = Rule>) -> crate::Result<Self> {
        let mut rules: Vec<Rule> = first.into_iter().collect();
        if rules.len() > MAX_RULES {
            return Err(crate::Error::Shape(format!(
                "{} interface rules given; at most {MAX_RULES}",
                rules.len()
            )));
        }
        rules.extend(Rules::default().0);
        Ok(Rules(rules))
    }

    /// The hook of the first rule matching `name`; `None` when none does or
    /// the first that does says `none`.
    pub fn hook_for(&self, name: &str) -> Option<Hook> {
        self.0
            .iter()
            .find(|rule| glob_match(&rule.pattern, name))
            .and_then(|rule| rule.hook)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.0.iter()
    }
}

impl fmt::Display for Rules {
    /// One line a rule, as shown at start-up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for rule in &self.0 {
            let hook = rule.hook.map_or("none", Hook::label);
            writeln!(f, "  {:<16} {:<15} ({})", rule.pattern, hook, rule.source)?;
        }
        Ok(())
    }
}

/// `GLOB=HOOK` or `GLOB=none` (`--follow-pattern`).
pub fn parse_rule(arg: &str) -> Result<Rule, String> {
    let (pattern, hook) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?}: expected GLOB=HOOK (e.g. 'cali*=pod') or GLOB=none"))?;
    if pattern.is_empty() || pattern.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "{pattern:?}: a pattern is 1 to {} characters, like an interface name",
            libc::IFNAMSIZ - 1
        ));
    }
    let hook = match hook {
        "none" => None,
        hook => Some(hook.parse::<Hook>()?),
    };
    Ok(Rule {
        pattern: pattern.into(),
        hook,
        source: "--follow-pattern",
    })
}

/// `NAME=HOOK`, or a NAME whose hook its name tells (`--iface`).
pub fn parse_iface(arg: &str) -> std::result::Result<(String, Hook), String> {
    let (name, hook) = match arg.split_once('=') {
        Some((name, hook)) => (name, hook.parse::<Hook>()?),
        None => {
            let hook = Hook::for_interface(arg).ok_or_else(|| {
                format!("cannot tell the hook of {arg:?} from its name; write {arg}=underlay (or another hook)")
            })?;
            (arg, hook)
        }
    };
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    Ok((name.to_owned(), hook))
}

/// Shell-style match of the whole name: `*` any run, `?` one character.
/// Interface names are at most 15 bytes, so the backtracking is bounded.
fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was, and the name position it has consumed to.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        match p.get(i) {
            Some(b'*') => {
                star = Some((i, j));
                i += 1;
            }
            Some(&c) if c == b'?' || c == n[j] => {
                i += 1;
                j += 1;
            }
            _ => match star {
                Some((si, sj)) => {
                    i = si + 1;
                    j = sj + 1;
                    star = Some((si, sj + 1));
                }
                None => return false,
            },
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

mod hook_or_none {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Hook;

    pub fn serialize<S: Serializer>(hook: &Option<Hook>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(hook.map_or("none", Hook::label))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Hook>, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "none" => Ok(None),
            hook => hook.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_names() {
        for (pattern, name, matches) in [
            ("cali*", "cali1a2b3c4d5e6", true),
            ("cali*", "cali", true),
            ("cali*", "xcali1", false),
            ("flannel.1", "flannel.1", true),
            ("flannel.1", "flannel.10", false),
            ("eth?", "eth0", true),
            ("eth?", "eth10", false),
            ("*", "anything", true),
            ("*.calico", "vxlan.calico", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**x", "abx", true),
        ] {
            assert_eq!(glob_match(pattern, name), matches, "{pattern} vs {name}");
        }
    }

    #[test]
    fn every_cni_the_guide_names_has_its_devices_known() {
        for (name, hook) in [
            ("flannel.1", Some(Hook::OverlayLegacy)),
            ("veth1234abcd", Some(Hook::Pod)),
            ("cni0", None),
            ("vxlan.calico", Some(Hook::OverlayLegacy)),
            ("tunl0", Some(Hook::OverlayLegacy)),
            ("cali8d3f2a1b9c0", Some(Hook::Pod)),
            ("eni0a1b2c3d4e5", Some(Hook::Pod)),
            ("lxc_health", Some(Hook::Pod)),
            ("cilium_vxlan", Some(Hook::OverlayCilium)),
            ("cilium_geneve", Some(Hook::OverlayCilium)),
            ("cilium_host", Some(Hook::Host)),
            ("cilium_net", None),
            ("eth0", None),
        ] {
            assert_eq!(Hook::for_interface(name), hook, "{name}");
        }
    }

    #[test]
    fn overrides_go_first_and_none_leaves_alone() {
        let rules = Rules::with_overrides([
            parse_rule("cali-skip*=none").unwrap(),
            parse_rule("ens*=underlay").unwrap(),
        ])
        .unwrap();
        assert_eq!(rules.hook_for("cali-skip0"), None);
        assert_eq!(rules.hook_for("cali12345"), Some(Hook::Pod));
        assert_eq!(rules.hook_for("ens5"), Some(Hook::Underlay));
        let shown = rules.to_string();
        assert!(shown.starts_with("  cali-skip*"), "{shown}");
        assert!(
            shown.contains("eni*             pod             (AWS VPC CNI)"),
            "{shown}"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        for (arg, says) in [
            ("cali*", "expected GLOB=HOOK"),
            ("=pod", "1 to 15 characters"),
            ("cali*=pods", "unknown hook \"pods\""),
        ] {
            let err = parse_rule(arg).unwrap_err();
            assert!(err.contains(says), "{arg}: {err}");
        }
        let many = (0..=MAX_RULES).map(|i| parse_rule(&format!("x{i}=pod")).unwrap());
        assert!(Rules::with_overrides(many).is_err());
    }

    #[test]
    fn rules_read_from_json_by_name() {
        let rule: Rule = serde_json::from_str(r#"{"pattern":"gke*","hook":"pod"}"#).unwrap();
        assert_eq!(rule.hook, Some(Hook::Pod));
        let rule: Rule = serde_json::from_str(r#"{"pattern":"gke*","hook":"none"}"#).unwrap();
        assert_eq!(rule.hook, None);
        assert!(serde_json::from_str::<Rule>(r#"{"pattern":"x","hook":"podz"}"#).is_err());
    }
}
