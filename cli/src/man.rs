//! `flotctl man`: manual pages generated from the CLI definition.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::CommandFactory;

use crate::{Cli, Global};

/// Print the manual page, or write all of them into a directory.
///
/// Without --dir, flotctl(1) goes to standard output. With --dir, flotctl.1 and one
/// flotctl-COMMAND.1 per command are written there; packaging generates them this way from the
/// same definitions as --help.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  flotctl man | man -l -
  flotctl man --dir debian/tmp/usr/share/man/man1")]
pub(crate) struct Args {
    /// Write all pages into this directory instead
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub(crate) fn run(_global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write manual pages into {}", dir.display()))?;
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
