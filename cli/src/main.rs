//! flotctl: the command-line client of a flotilla cluster.
//!
//! Each command group is a module with a clap `Args` type and a
//! `run(&Global, Args) -> anyhow::Result<ExitCode>` function, registered with one line in the
//! `commands!` list below.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod cat;
mod client;
mod completions;
mod kv;
mod man;
mod member;
mod unit_files;
mod units;
mod verify;

use units::{
    destroy, journal, list_machines, list_unit_files, list_units, load, start, status, stop,
    submit, unload,
};

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// An agent's HTTP API to talk to (default: the local agent over D-Bus)
    #[arg(long, global = true, env = "FLOTCTL_ENDPOINT", value_name = "URL")]
    pub(crate) endpoint: Option<String>,

    /// Output format: text for people, json for scripts
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Lines for people
    Text,
    /// One JSON document on standard output
    Json,
}

/// Declares the `Command` enum and its dispatch: one line per command group, `Variant =>
/// module`. The help text comes from the module's `Args` (`#[command(about, long_about)]`).
macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident => $module:ident,)*) => {
        #[derive(Debug, Subcommand)]
        enum Command {
            $($(#[$doc])* $variant($module::Args),)*
        }

        impl Command {
            fn run(self, global: &Global) -> anyhow::Result<ExitCode> {
                match self {
                    $(Command::$variant(args) => $module::run(global, args),)*
                }
            }
        }
    };
}

commands! {
    Verify => verify,
    Cat => cat,
    Kv => kv,
    Member => member,
    Submit => submit,
    Load => load,
    Start => start,
    Stop => stop,
    Unload => unload,
    Destroy => destroy,
    ListUnits => list_units,
    ListUnitFiles => list_unit_files,
    ListMachines => list_machines,
    Status => status,
    Journal => journal,
    Completions => completions,
    Man => man,
}

const EXAMPLES: &str = "\
Examples:
  flotctl verify hello.service web@.service     check unit files before submitting them
  flotctl cat hello.service                     the unit as systemd and flotilla see it
  flotctl start hello.service                   submit the file, schedule it, wait until active
  flotctl list-units                            where units run and their systemd states
  flotctl journal -n 20 hello.service           its journal, from the machine that runs it
  flotctl completions bash > /usr/share/bash-completion/completions/flotctl
  flotctl man --dir /usr/share/man/man1         one page per command

Environment:
  FLOTCTL_ENDPOINT   the default for --endpoint";

/// flotctl talks to a flotilla cluster: unit files, the key-value store, machines.
#[derive(Debug, Parser)]
#[command(name = "flotctl", version, after_help = EXAMPLES, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.run(&cli.global) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flotctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
