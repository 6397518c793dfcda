//! `flotctl completions SHELL`: shell completion scripts generated from the CLI definition.

use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::{Cli, Global};

/// Print a completion script for SHELL on standard output.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  flotctl completions bash > /usr/share/bash-completion/completions/flotctl
  flotctl completions zsh > /usr/share/zsh/vendor-completions/_flotctl
  flotctl completions fish > /usr/share/fish/vendor_completions.d/flotctl.fish")]
pub(crate) struct Args {
    /// The shell
    #[arg(value_enum)]
    shell: Shell,
}

pub(crate) fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "flotctl", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
