//! The testbed's network: one bridge per testbed, one network namespace and veth pair per
//! machine, driven through `ip` and `tc` (iproute2).
//!
//! Every removal is idempotent: removing what does not exist is not an error, so a teardown can
//! be repeated and can run over a half-built testbed.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A failure of `ip` or `tc`.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The command could not be started (is iproute2 installed?).
    #[error("cannot run {command}: {source} (install iproute2)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("{command} failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The kernel has no `sch_netem` queueing discipline.
    #[error(
        "this kernel has no netem queueing discipline (sch_netem): a link of {link} cannot be slowed; load the module or use a kernel built with CONFIG_NET_SCH_NETEM"
    )]
    NetemUnavailable {
        /// The interface that was to be slowed.
        link: String,
    },
}

fn run(program: &str, args: &[&str]) -> Result<(), NetworkError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| NetworkError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Failed {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Whether a network interface of this name exists on the host.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Whether a named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates a bridge with `addr/24` and brings it up.
pub fn add_bridge(bridge: &str, addr: Ipv4Addr) -> Result<(), NetworkError> {
    run("ip", &["link", "add", bridge, "type", "bridge"])?;
    run("ip", &["addr", "add", &format!("{addr}/24"), "dev", bridge])?;
    run("ip", &["link", "set", bridge, "up"])
}

/// Creates a network namespace with `eth0` (`addr/24`) plugged into `bridge` through the host
/// end `veth`, and `lo` up.
pub fn add_machine_link(
    netns: &str,
    veth: &str,
    bridge: &str,
    addr: Ipv4Addr,
) -> Result<(), NetworkError> {
    run("ip", &["netns", "add", netns])?;
    run(
        "ip",
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )?;
    run("ip", &["link", "set", veth, "master", bridge, "up"])?;
    run(
        "ip",
        &[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ],
    )?;
    run("ip", &["-n", netns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", netns, "link", "set", "lo", "up"])
}

/// Removes a network namespace (and with it the machine's end of its veth), if it exists.
pub fn remove_netns(netns: &str) -> Result<(), NetworkError> {
    if netns_exists(netns) {
        ignore_gone(run("ip", &["netns", "del", netns]))?;
    }
    Ok(())
}

/// Removes a host interface (veth end or bridge), if it exists.
pub fn remove_link(name: &str) -> Result<(), NetworkError> {
    if link_exists(name) {
        // The host end of a veth goes away on its own once its namespace is gone.
        ignore_gone(run("ip", &["link", "del", name]))?;
    }
    Ok(())
}

fn ignore_gone(result: Result<(), NetworkError>) -> Result<(), NetworkError> {
    match result {
        Err(NetworkError::Failed { stderr, .. })
            if stderr.contains("Cannot find device") || stderr.contains("No such file") =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Unplugs `veth` from its bridge: the machine behind it reaches nothing and nothing reaches it.
pub fn unplug(veth: &str) -> Result<(), NetworkError> {
    run("ip", &["link", "set", veth, "nomaster"])
}

/// Plugs `veth` back into `bridge`.
pub fn plug(veth: &str, bridge: &str) -> Result<(), NetworkError> {
    run("ip", &["link", "set", veth, "master", bridge, "up"])
}

/// Whether `veth` is plugged into a bridge.
pub fn is_plugged(veth: &str) -> bool {
    Path::new("/sys/class/net")
        .join(veth)
        .join("master")
        .exists()
}

fn netem_args(delay: Duration, jitter: Duration) -> Vec<String> {
    vec![
        "root".into(),
        "netem".into(),
        "delay".into(),
        format!("{}us", delay.as_micros()),
        format!("{}us", jitter.as_micros()),
    ]
}

fn tc_netem(netns: Option<&str>, dev: &str, args: &[String]) -> Result<(), NetworkError> {
    let mut all: Vec<&str> = Vec::new();
    if let Some(netns) = netns {
        all.extend(["-n", netns]);
    }
    all.extend(["qdisc", "replace", "dev", dev]);
    all.extend(args.iter().map(String::as_str));
    match run("tc", &all) {
        Err(NetworkError::Failed { stderr, .. })
            if stderr.contains("qdisc kind is unknown") || stderr.contains("not found") =>
        {
            Err(NetworkError::NetemUnavailable {
                link: dev.to_owned(),
            })
        }
        other => other,
    }
}

/// Delays every packet in both directions of a machine's link by `delay` ± `jitter` (netem on
/// the host end `veth` and on the machine's `eth0`): a round trip gains twice `delay`.
pub fn slow(
    netns: &str,
    veth: &str,
    delay: Duration,
    jitter: Duration,
) -> Result<(), NetworkError> {
    let args = netem_args(delay, jitter);
    tc_netem(None, veth, &args)?;
    tc_netem(Some(netns), "eth0", &args)
}

/// Limits both directions of a machine's link to `bits_per_sec` with a token bucket (`tbf` on
/// the host end `veth` and on the machine's `eth0`: 16 kbit bursts, a packet queued longer than
/// 400 ms is dropped). Needs no netem; undone by [`unslow`].
pub fn throttle(netns: &str, veth: &str, bits_per_sec: u64) -> Result<(), NetworkError> {
    let rate = format!("{bits_per_sec}bit");
    let args = [
        "root", "tbf", "rate", &rate, "burst", "16kbit", "latency", "400ms",
    ];
    let host: Vec<&str> = ["qdisc", "replace", "dev", veth]
        .into_iter()
        .chain(args)
        .collect();
    run("tc", &host)?;
    let machine: Vec<&str> = ["-n", netns, "qdisc", "replace", "dev", "eth0"]
        .into_iter()
        .chain(args)
        .collect();
    run("tc", &machine)
}

/// Removes what [`slow`] or [`throttle`] added; a link that was not slowed is left as it is.
pub fn unslow(netns: &str, veth: &str) -> Result<(), NetworkError> {
    // `tc qdisc del` fails when there is no root qdisc to delete: that is the goal state.
    let _ = run("tc", &["qdisc", "del", "dev", veth, "root"]);
    let _ = run("tc", &["-n", netns, "qdisc", "del", "dev", "eth0", "root"]);
    Ok(())
}
