//! The agent's own requests to its peers' APIs, counted from outside by
//! nftables on the agent namespace's output: connection attempts (SYN) and
//! request segments (TCP with PSH) to the agents' port, whatever answers.
use super::{agent::LISTEN, probes::nft_packets};
use crate::netns::{sh, unique};

pub struct RequestCounter {
    ns: String,
}

/// Packets counted so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requests {
    pub connects: u64,
    pub segments: u64,
}

impl RequestCounter {
    pub fn install(ns: &str) -> Self {
        let port = LISTEN.rsplit(':').next().expect("LISTEN has a port");
        let ruleset = format!(
            "table inet xorequests {{\n\
               chain output {{\n\
                 type filter hook output priority 0; policy accept;\n\
                 oifname != \"lo\" tcp dport {port} tcp flags & (syn | ack) == syn counter comment \"connects\"\n\
                 oifname != \"lo\" tcp dport {port} tcp flags & psh == psh counter comment \"segments\"\n\
               }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(unique("xorequests-") + ".nft");
        std::fs::write(&path, ruleset).expect("write the nft ruleset");
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "-f",
            path.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&path);
        RequestCounter { ns: ns.into() }
    }

    pub fn read(&self) -> Requests {
        let text = sh(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "nft",
            "list",
            "table",
            "inet",
            "xorequests",
        ]);
        let packets = |comment: &str| nft_packets(&text, comment);
        Requests {
            connects: packets("connects"),
            segments: packets("segments"),
        }
    }
}
