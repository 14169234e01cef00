//! Running the system's own tools (`ip`, `bridge`, `iptables`, `nft`,
//! `sysctl`): they are what Flannel's and Cilium's datapath setups amount
//! to, and what an SRE reads when the lab misbehaves.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Runs a command; a failure names the command and quotes its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| {
            format!(
                "starting {} (is it installed? `cargo xtask setup`)",
                args[0]
            )
        })?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside network namespace `ns`.
pub fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Feeds `script` to `program` on stdin (`ip -batch -`, `nft -f -`,
/// `iptables-restore`), inside `ns`. One process for dozens of changes keeps
/// `lab up` fast; on failure the script is part of the error.
pub fn batch(ns: &str, program: &[&str], script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program[0]))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .with_context(|| format!("writing to {}", program[0]))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{}` in {ns} failed: {}\nscript:\n{script}",
            program.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A list of `ip` commands run as one `ip -batch`.
#[derive(Default)]
pub struct IpBatch {
    lines: Vec<String>,
}

impl IpBatch {
    pub fn add(&mut self, line: impl Into<String>) -> &mut Self {
        self.lines.push(line.into());
        self
    }

    pub fn run(&self, ns: &str) -> Result<()> {
        if self.lines.is_empty() {
            return Ok(());
        }
        batch(ns, &["ip", "-batch", "-"], &(self.lines.join("\n") + "\n"))
    }
}

/// Sets sysctls inside `ns` with one `sysctl` process.
pub fn sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    let mut args = vec!["sysctl", "-q", "-w"];
    let pairs: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
    args.extend(pairs.iter().map(String::as_str));
    in_ns(ns, &args).map(drop)
}

/// Namespaces that exist now.
pub fn netns_list() -> Result<Vec<String>> {
    Ok(run(&["ip", "netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}
