//! crossover on every node of a lab, as the agent DaemonSet will run it:
//! one observer per node namespace, on `eth0` as the underlay and on every
//! interface whose name tells its hook, following pods as they come and go.
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use observer::{
    connections::{self, Connection},
    conntrack,
    datapath::{Hook, LoadOptions, Observer, Selection, Snapshot, reconcile},
    loss::delivery::{self, Delivery, NodeView},
};

use crate::{lab::Lab, netns::in_netns};

pub struct Member {
    pub name: String,
    pub netns: String,
    pub underlay: Ipv4Addr,
    pub observer: Observer,
}

pub struct Fleet {
    pub members: Vec<Member>,
    selection: Selection,
}

impl Fleet {
    pub fn attach(lab: &Lab) -> Result<Fleet> {
        let selection = Selection {
            explicit: vec![("eth0".into(), Hook::Underlay)],
            follow: Some(observer::iface::Rules::default()),
        };
        let mut members = Vec::new();
        for (j, node) in lab.nodes().enumerate() {
            let netns = lab.node_ns(&node.name);
            let mut observer = Observer::load(LoadOptions {
                netns: Some(netns.clone()),
                ..LoadOptions::default()
            })?;
            observer.configure(&lab.shape(&node.name)?)?;
            members.push(Member {
                name: node.name.clone(),
                netns,
                underlay: lab.state().underlay_addr(j),
                observer,
            });
        }
        let mut fleet = Fleet { members, selection };
        fleet.follow()?;
        Ok(fleet)
    }

    /// Attaches to interfaces that appeared (new pods) and forgets the ones
    /// that went; what the agent does on every link event.
    pub fn follow(&mut self) -> Result<()> {
        for m in &mut self.members {
            let done = reconcile(&mut m.observer, &self.selection)?;
            anyhow::ensure!(
                done.failed.is_empty(),
                "{}: attaching failed: {:?}",
                m.name,
                done.failed
            );
        }
        Ok(())
    }

    /// Gives every node the lab's shape as it is now: what the agent does
    /// when the API reports a pod that came or went (a natively routed
    /// legacy pod is a /32 of the shape).
    pub fn configure(&mut self, lab: &Lab) -> Result<()> {
        for m in &mut self.members {
            m.observer.configure(&lab.shape(&m.name)?)?;
        }
        Ok(())
    }

    pub fn member(&self, node: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == node)
            .unwrap_or_else(|| panic!("no node {node} in the fleet"))
    }

    /// Counts every node's handshakes unanswered past the grace, as the
    /// agent's sampler does before each reading.
    pub fn expire_handshakes(&mut self) -> Result<()> {
        let now = observer::datapath::monotonic_ns();
        for m in &mut self.members {
            m.observer.expire_handshakes(now)?;
        }
        Ok(())
    }

    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        self.members
            .iter()
            .map(|m| Ok(m.observer.snapshot()?))
            .collect()
    }

    /// Sent against received for every node pair and overlay, cumulative.
    pub fn deliveries(&self) -> Result<Vec<Delivery>> {
        let peers = self
            .members
            .iter()
            .map(|m| m.observer.peers())
            .collect::<Result<Vec<_>, _>>()?;
        let views: Vec<NodeView> = self
            .members
            .iter()
            .zip(&peers)
            .map(|(m, peers)| NodeView {
                name: &m.name,
                underlay: m.underlay,
                peers,
            })
            .collect();
        Ok(delivery::deliveries(&views))
    }

    /// `node`'s connections: its flows joined with its conntrack NAT table.
    pub fn connections(&self, node: &str) -> Result<Vec<Connection>> {
        let m = self.member(node);
        let nat = nat_entries(&m.netns)?;
        let snapshot = m.observer.snapshot()?;
        Ok(connections::join_now(&snapshot.flows, &nat))
    }
}

/// The NAT table of namespace `ns`.
pub fn nat_entries(ns: &str) -> Result<Vec<conntrack::NatEntry>> {
    let dump = in_netns(ns, conntrack::nat_entries).context("reading conntrack")?;
    Ok(dump.entries)
}

/// Programs attached with TCX to any interface of `ns`, by name.
pub fn tcx_programs_in(ns: &str) -> Vec<String> {
    in_netns(ns, || {
        let mut names = Vec::new();
        for iface in observer::datapath::interfaces() {
            for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
                if let Ok((_, programs)) = SchedClassifier::query_tcx(&iface, attach) {
                    for p in programs {
                        names.push(format!("{iface}: {}", p.name_as_str().unwrap_or("?")));
                    }
                }
            }
        }
        names
    })
}
