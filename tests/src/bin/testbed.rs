//! `testbed`: bring a cluster of systemd machines up and down, and inject faults into it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use flotilla_tests::testbed::{Node, Options, Testbed};
use nix::sys::signal::{SigSet, Signal};

/// Machines that run real systemd as PID 1, in namespaces of this host, each with its own
/// network address, host name, machine id, D-Bus system bus, journal, /etc/flotilla and
/// /var/lib/flotilla, running flotillad as a systemd service. Needs root.
///
/// Start here: `testbed up --nodes 3`, then `testbed exec node1 -- systemctl status`, and
/// `testbed down` when done. Several testbeds may be up at once: name one with --id.
#[derive(Parser)]
#[command(version, after_help = AFTER_HELP)]
struct Cli {
    /// The testbed to act on (its id K: bridge fltbrK, network 10.213.K.0/24); default: the
    /// only one up.
    #[arg(long, global = true)]
    id: Option<u8>,
    #[command(subcommand)]
    command: Command,
}

const AFTER_HELP: &str = "\
Faults for tests: stop-agent/start-agent, power-off/power-on, partition/heal, slow.
Leftovers of a crashed run are removed by the next `up` and by `down --all`.
Files: /run/flotilla-testbed/K.json (what was created), /var/lib/flotilla-testbed/K/NODE/
(the machine's directory: log/journal, var-lib-flotilla, etc-flotilla, console.log).";

#[derive(Subcommand)]
enum Command {
    /// Boot N machines, start flotillad in each, print how to reach them, and return (the
    /// machines keep running until `testbed down`).
    Up {
        /// How many machines.
        #[arg(long, short = 'n', default_value_t = 3)]
        nodes: usize,
        /// The agent binary (default: the flotillad next to this testbed binary).
        #[arg(long, conflicts_with = "no_agent")]
        agent: Option<PathBuf>,
        /// Run no agent: plain systemd machines.
        #[arg(long)]
        no_agent: bool,
        /// Install the agent's unit but do not start it (`testbed start-agent NODE` does).
        #[arg(long, conflicts_with = "no_agent")]
        agent_stopped: bool,
        /// Stay in the foreground and take the testbed down on Ctrl-C or SIGTERM.
        #[arg(long)]
        foreground: bool,
        /// Seconds to wait for each machine to boot and each agent to be ready.
        #[arg(long, default_value_t = 30)]
        deadline: u64,
    },
    /// Remove the testbed: every process, namespace, veth, bridge, cgroup and directory it made.
    Down {
        /// Remove every testbed left running by `up` and every leftover of a crashed run
        /// (testbeds of running tests are left alone).
        #[arg(long)]
        all: bool,
    },
    /// List the testbeds and their machines.
    Status,
    /// Run a command in a machine (interactive when stdin is a terminal).
    Exec {
        /// The machine, e.g. node1.
        node: String,
        /// The command and its arguments (default: a login shell).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Print a machine's journal (readable also while it is powered off).
    Journal {
        /// The machine.
        node: String,
        /// Only this unit.
        #[arg(long, short = 'u')]
        unit: Option<String>,
        /// How many lines.
        #[arg(long, short = 'n', default_value_t = 100)]
        lines: usize,
    },
    /// Stop a machine's flotillad.
    StopAgent {
        /// The machine.
        node: String,
    },
    /// Start a machine's flotillad and wait until it is ready.
    StartAgent {
        /// The machine.
        node: String,
    },
    /// Pull a machine's plug (or shut it down cleanly with --clean); its disk stays.
    PowerOff {
        /// The machine.
        node: String,
        /// `systemctl poweroff` inside instead of killing it.
        #[arg(long)]
        clean: bool,
    },
    /// Boot a powered-off machine again.
    PowerOn {
        /// The machine.
        node: String,
    },
    /// Cut a machine off the network.
    Partition {
        /// The machine.
        node: String,
    },
    /// Reconnect a partitioned machine.
    Heal {
        /// The machine.
        node: String,
    },
    /// Delay a machine's traffic each way (tc netem), or --off to undo.
    Slow {
        /// The machine.
        node: String,
        /// The delay, e.g. 100ms.
        #[arg(long, value_parser = parse_duration, default_value = "100ms")]
        delay: Duration,
        /// The jitter, e.g. 10ms.
        #[arg(long, value_parser = parse_duration, default_value = "0ms")]
        jitter: Duration,
        /// Remove the delay.
        #[arg(long)]
        off: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 100ms"))?;
    match unit {
        "us" => Ok(Duration::from_micros(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{text:?}: unit must be us, ms or s")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn node<'a>(tb: &'a Testbed, name: &str) -> Result<Node<'a>> {
    Ok(tb.node_named(name)?)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Up {
            nodes,
            agent,
            no_agent,
            agent_stopped,
            foreground,
            deadline,
        } => {
            let mut options = Options::new(nodes);
            options.deadline = Duration::from_secs(deadline);
            if !no_agent {
                options = options.agent(agent.unwrap_or_else(Options::default_agent));
                if agent_stopped {
                    options = options.agent_stopped();
                }
            }
            up(options, foreground)
        }
        Command::Down { all } => {
            if all {
                let removed = Testbed::remove_all(true)?;
                println!("removed {} testbed(s) {removed:?}", removed.len());
                let rest = Testbed::list()?;
                if !rest.is_empty() {
                    let ids: Vec<String> = rest.iter().map(|r| r.id.to_string()).collect();
                    println!(
                        "left alone (owned by running processes): {}",
                        ids.join(", ")
                    );
                }
            } else {
                let tb = Testbed::open(cli.id)?;
                let id = tb.id();
                let owner = tb.record().owner;
                if let Some(owner) = owner.filter(|o| o.is_alive()) {
                    bail!(
                        "testbed {id} belongs to running process {} (a test?): it goes when that process ends",
                        owner.pid
                    );
                }
                tb.down()
                    .with_context(|| format!("taking testbed {id} down"))?;
                println!("testbed {id} is down");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let all = Testbed::list()?;
            if all.is_empty() {
                println!("no testbed is up");
            }
            for record in all {
                let owner = match record.owner {
                    None => "left running by `testbed up`".to_owned(),
                    Some(p) if p.is_alive() => format!("owned by process {}", p.pid),
                    Some(p) => format!("LEFTOVER of dead process {} (`testbed down --all`)", p.pid),
                };
                println!(
                    "testbed {} (fltbr{}, 10.213.{}.0/24): {owner}",
                    record.id, record.id, record.id
                );
                let tb = Testbed::open(Some(record.id))?;
                print_table(&tb);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            node: name,
            command,
        } => {
            let tb = Testbed::open(cli.id)?;
            let node = node(&tb, &name)?;
            let command: Vec<&str> = if command.is_empty() {
                vec!["/bin/bash", "-l"]
            } else {
                command.iter().map(String::as_str).collect()
            };
            let status = if std::io::stdin().is_terminal() {
                node.exec_interactive(&command)?
            } else {
                node.command(&command)?.status()?
            };
            Ok(ExitCode::from(
                status.code().unwrap_or(1).clamp(0, 255) as u8
            ))
        }
        Command::Journal {
            node: name,
            unit,
            lines,
        } => {
            let tb = Testbed::open(cli.id)?;
            print!("{}", node(&tb, &name)?.journal(unit.as_deref(), lines));
            Ok(ExitCode::SUCCESS)
        }
        Command::StopAgent { node: name } => {
            let tb = Testbed::open(cli.id)?;
            node(&tb, &name)?.stop_agent()?;
            println!("{name}: flotillad stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::StartAgent { node: name } => {
            let tb = Testbed::open(cli.id)?;
            node(&tb, &name)?.start_agent()?;
            println!("{name}: flotillad is ready");
            Ok(ExitCode::SUCCESS)
        }
        Command::PowerOff { node: name, clean } => {
            let tb = Testbed::open(cli.id)?;
            let node = node(&tb, &name)?;
            if clean {
                node.shutdown()?;
            } else {
                node.power_off()?;
            }
            println!("{name}: powered off");
            Ok(ExitCode::SUCCESS)
        }
        Command::PowerOn { node: name } => {
            let tb = Testbed::open(cli.id)?;
            node(&tb, &name)?.power_on()?;
            println!("{name}: up");
            Ok(ExitCode::SUCCESS)
        }
        Command::Partition { node: name } => {
            let tb = Testbed::open(cli.id)?;
            node(&tb, &name)?.partition()?;
            println!("{name}: cut off the network");
            Ok(ExitCode::SUCCESS)
        }
        Command::Heal { node: name } => {
            let tb = Testbed::open(cli.id)?;
            node(&tb, &name)?.heal()?;
            println!("{name}: back on the network");
            Ok(ExitCode::SUCCESS)
        }
        Command::Slow {
            node: name,
            delay,
            jitter,
            off,
        } => {
            let tb = Testbed::open(cli.id)?;
            let node = node(&tb, &name)?;
            if off {
                node.unslow_link()?;
                println!("{name}: link at full speed");
            } else {
                node.slow_link(delay, jitter)?;
                println!("{name}: link delayed by {delay:?} ± {jitter:?} each way");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Brings a testbed up with SIGINT, SIGTERM and SIGHUP taken by a thread: a signal while
/// building takes down what was built; with `foreground`, a signal takes the testbed down.
fn up(options: Options, foreground: bool) -> Result<ExitCode> {
    let signals = watch_signals()?;
    let tb = match Testbed::up(options) {
        Ok(tb) => tb,
        Err(e) => bail!("{e}"),
    };
    if let Ok(signal) = signals.try_recv() {
        eprintln!("testbed: {signal}: taking testbed {} down", tb.id());
        tb.down()?;
        return Ok(ExitCode::from(130));
    }
    println!(
        "testbed {} is up ({} machines on fltbr{}):",
        tb.id(),
        tb.len(),
        tb.id()
    );
    print_table(&tb);
    if foreground {
        println!("press Ctrl-C to take it down");
        let signal = signals.recv().context("the signal thread ended")?;
        eprintln!("testbed: {signal}: taking testbed {} down", tb.id());
        tb.down()?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("take it down with: testbed down{}", id_flag(&tb));
    tb.detach()?;
    Ok(ExitCode::SUCCESS)
}

fn id_flag(tb: &Testbed) -> String {
    match Testbed::list() {
        Ok(all) if all.len() > 1 => format!(" --id {}", tb.id()),
        _ => String::new(),
    }
}

fn print_table(tb: &Testbed) {
    let id = id_flag(tb);
    println!("{:<8} {:<15} {:<8} ENTER-COMMAND", "NAME", "ADDRESS", "PID");
    for node in tb.nodes() {
        let pid = node
            .pid()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "off".into());
        println!(
            "{:<8} {:<15} {:<8} testbed{id} exec {} -- bash",
            node.name(),
            node.addr().to_string(),
            pid,
            node.name()
        );
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in every thread (children get them unblocked again: the
/// standard library resets the mask) and forwards them to a channel.
fn watch_signals() -> Result<mpsc::Receiver<Signal>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().context("blocking signals")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(signal) = set.wait() {
            if tx.send(signal).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
