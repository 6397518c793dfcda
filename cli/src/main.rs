//! flotctl: the command-line client of a flotilla cluster.
//!
//! Each command group is a module with a clap `Args` type and a
//! `run(&Global, Args) -> anyhow::Result<ExitCode>` function, registered with one line in the
//! `commands!` list below.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod ca;
mod cat;
mod client;
mod completions;
mod images;
mod kv;
mod man;
mod member;
mod unit_files;
mod units;
mod verify;

use images::{list as images_list, pull, rmi, run as run_image};
use units::{
    destroy, journal, list_machines, list_unit_files, list_units, load, restart, start, status,
    stop, submit, unload,
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

    /// With an https:// --endpoint: the CA certificate (PEM) the agent's certificate must chain to
    #[arg(long, global = true, env = "FLOTCTL_CA_FILE", value_name = "FILE")]
    pub(crate) ca_file: Option<std::path::PathBuf>,

    /// A client certificate (PEM) to present to the agent (its common name is the user)
    #[arg(long, global = true, env = "FLOTCTL_CERT_FILE", value_name = "FILE")]
    pub(crate) cert_file: Option<std::path::PathBuf>,

    /// The client certificate's private key (PEM)
    #[arg(long, global = true, env = "FLOTCTL_KEY_FILE", value_name = "FILE")]
    pub(crate) key_file: Option<std::path::PathBuf>,

    /// A token for the agent's HTTP API (sent as Authorization: Bearer)
    #[arg(
        long,
        global = true,
        env = "FLOTCTL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
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
    Restart => restart,
    ListUnits => list_units,
    ListUnitFiles => list_unit_files,
    ListMachines => list_machines,
    Pull => pull,
    Images => images_list,
    Rmi => rmi,
    Run => run_image,
    Status => status,
    Journal => journal,
    Ca => ca,
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
  FLOTCTL_ENDPOINT   the default for --endpoint
  FLOTCTL_CA_FILE, FLOTCTL_CERT_FILE, FLOTCTL_KEY_FILE, FLOTCTL_TOKEN
                     the defaults for --ca-file, --cert-file, --key-file, --token";

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
