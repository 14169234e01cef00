//! The one error type of the agent. Each variant names the thing that was
//! wrong (a field, an interface, a program) and carries a metric label.
use std::io;

use aya::{EbpfError, maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "permission denied while {action}: crossover needs root or CAP_BPF, CAP_NET_ADMIN \
         and CAP_PERFMON ({source})"
    )]
    Privilege { action: String, source: io::Error },

    #[error("interface {0:?} does not exist in this network namespace")]
    NoInterface(String),

    #[error(
        "interface {iface:?} has no Ethernet header (an IP tunnel or TUN device); crossover's \
         {hook} programs need one: only overlay devices may be IP-only"
    )]
    NoEthernet {
        iface: String,
        hook: crate::iface::Hook,
    },

    #[error("the kernel verifier rejected program {program}: {source}\nverifier log:\n{log}")]
    Verifier {
        program: String,
        source: io::Error,
        log: String,
    },

    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),

    /// The kernel refused a map of the size asked for (memory, or a
    /// memlock limit): named with the flag that sizes it.
    #[error("creating map {map} ({sized_by}): {source}")]
    MapCreate {
        map: String,
        sized_by: String,
        #[source]
        source: io::Error,
    },

    #[error("program {0} is missing from the eBPF object (built from another version?)")]
    MissingProgram(String),

    #[error("map {0} is missing from the eBPF object (built from another version?)")]
    MissingMap(&'static str),

    #[error("program {program}: {source}")]
    Program {
        program: String,
        source: Box<ProgramError>,
    },

    #[error("attaching {program} to {iface}: {source}")]
    Attach {
        program: String,
        iface: String,
        source: Box<ProgramError>,
    },

    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<MapError>,
    },

    #[error("map {map} is full ({capacity} entries): {what}")]
    MapFull {
        map: &'static str,
        capacity: u32,
        what: String,
    },

    #[error("cluster shape: {0}")]
    Shape(String),

    #[error("network namespace {name:?}: {source}")]
    Netns { name: String, source: io::Error },

    #[error("reading NAT mappings from conntrack (ctnetlink): {context}: {source}")]
    Conntrack {
        context: &'static str,
        source: io::Error,
    },

    #[error("Kubernetes API: {context}: {reason}")]
    Kube { context: String, reason: String },

    #[error("probe: {0}")]
    Probe(String),

    #[error("migration: {0}")]
    Migration(String),

    #[error("agent {agent}: {reason}")]
    Agent { agent: String, reason: String },

    /// The agent refused to read: an underlay hook of its node is blind
    /// (docs/hooks.md), and it says which hooks.
    #[error("agent {agent}: {reason}")]
    Blind {
        agent: String,
        reason: String,
        blind: Box<crate::loss::blind::NodeBlind>,
    },

    /// The agent answered, and refused this reader (401 or 403).
    #[error("agent {agent} refused the reader: {status}: {reason}")]
    Refused {
        agent: String,
        status: u16,
        reason: String,
    },
    /// A Prometheus server read instead of the agents (`--source
    /// prometheus=URL`, `crossover loss --prometheus`).
    #[error("Prometheus at {url}: {reason}")]
    Prometheus { url: String, reason: String },

    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Every value [`Error::metric_label`] gives, in its order: the agent
    /// exports `crossover_errors_total` at 0 for each from its start, so an
    /// `increase()` has a first sample to start from. A test checks the two
    /// agree for every variant.
    pub const METRIC_LABELS: [&'static str; 20] = [
        "privilege",
        "no_interface",
        "no_ethernet",
        "verifier",
        "load",
        "object_mismatch",
        "program",
        "attach",
        "map",
        "map_full",
        "shape",
        "netns",
        "conntrack",
        "kube",
        "probe",
        "migration",
        "agent",
        "refused",
        "prometheus",
        "io",
    ];

    /// Value of the `reason` label when this error is counted.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Privilege { .. } => "privilege",
            Error::NoInterface(_) => "no_interface",
            Error::NoEthernet { .. } => "no_ethernet",
            Error::Verifier { .. } => "verifier",
            Error::Load(_) | Error::MapCreate { .. } => "load",
            Error::MissingProgram(_) | Error::MissingMap(_) => "object_mismatch",
            Error::Program { .. } => "program",
            Error::Attach { .. } => "attach",
            Error::Map { .. } => "map",
            Error::MapFull { .. } => "map_full",
            Error::Shape(_) => "shape",
            Error::Netns { .. } => "netns",
            Error::Conntrack { .. } => "conntrack",
            Error::Kube { .. } => "kube",

            Error::Probe(_) => "probe",
            Error::Migration(_) => "migration",
            Error::Agent { .. } | Error::Blind { .. } => "agent",
            Error::Refused { .. } => "refused",
            Error::Prometheus { .. } => "prometheus",
            Error::Io { .. } => "io",
        }
    }

    /// For `map_err` on operations of map `map`.
    pub(crate) fn map(map: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Error::Map {
            map,
            source: Box::new(source),
        }
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// The `io::Error` at the bottom of an aya error, if any: how a missing
/// privilege or a missing interface shows itself.
pub(crate) fn root_io_error<'a>(
    mut err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a io::Error> {
    loop {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        err = err.source()?;
    }
}

pub(crate) fn is_permission(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One error of every variant (the match makes a new variant fail to
    /// compile here until it is added).
    fn one_of_each() -> Vec<Error> {
        let io = || io::Error::other("x");
        let program = || Box::new(ProgramError::AlreadyAttached);
        let all = vec![
            Error::Privilege {
                action: "a".into(),
                source: io(),
            },
            Error::NoInterface("i".into()),
            Error::NoEthernet {
                iface: "i".into(),
                hook: crate::iface::Hook::Pod,
            },
            Error::Verifier {
                program: "p".into(),
                source: io(),
                log: String::new(),
            },
            Error::Load(Box::new(EbpfError::FileError {
                path: "o".into(),
                error: io(),
            })),
            Error::MapCreate {
                map: "m".into(),
                sized_by: "s".into(),
                source: io(),
            },
            Error::MissingProgram("p".into()),
            Error::MissingMap("m"),
            Error::Program {
                program: "p".into(),
                source: program(),
            },
            Error::Attach {
                program: "p".into(),
                iface: "i".into(),
                source: program(),
            },
            Error::Map {
                map: "m",
                source: Box::new(MapError::KeyNotFound),
            },
            Error::MapFull {
                map: "m",
                capacity: 1,
                what: String::new(),
            },
            Error::Shape("s".into()),
            Error::Netns {
                name: "n".into(),
                source: io(),
            },
            Error::Conntrack {
                context: "c",
                source: io(),
            },
            Error::Kube {
                context: "c".into(),
                reason: "r".into(),
            },
            Error::Probe("p".into()),
            Error::Migration("m".into()),
            Error::Agent {
                agent: "a".into(),
                reason: "r".into(),
            },
            Error::Blind {
                agent: "a".into(),
                reason: "r".into(),
                blind: Box::new(crate::loss::blind::NodeBlind {
                    node: "n".into(),
                    hooks: Default::default(),
                }),
            },
            Error::Refused {
                agent: "a".into(),
                status: 401,
                reason: "r".into(),
            },
            Error::Prometheus {
                url: "u".into(),
                reason: "r".into(),
            },
            Error::io("w", io()),
        ];
        for e in &all {
            match e {
                Error::Privilege { .. }
                | Error::NoInterface(_)
                | Error::NoEthernet { .. }
                | Error::Verifier { .. }
                | Error::Load(_)
                | Error::MapCreate { .. }
                | Error::MissingProgram(_)
                | Error::MissingMap(_)
                | Error::Program { .. }
                | Error::Attach { .. }
                | Error::Map { .. }
                | Error::MapFull { .. }
                | Error::Shape(_)
                | Error::Netns { .. }
                | Error::Conntrack { .. }
                | Error::Kube { .. }
                | Error::Probe(_)
                | Error::Migration(_)
                | Error::Agent { .. }
                | Error::Blind { .. }
                | Error::Refused { .. }
                | Error::Prometheus { .. }
                | Error::Io { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_metric_label_is_listed_once() {
        let mut labels: Vec<_> = one_of_each().iter().map(Error::metric_label).collect();
        labels.dedup();
        assert_eq!(labels, Error::METRIC_LABELS);
    }
}
