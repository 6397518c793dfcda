//! `flotctl cat FILE`: a unit file in normalized form.

use std::path::PathBuf;
use std::process::ExitCode;

use flotilla_units::verify;
use serde::Serialize;

use crate::{Global, Output, unit_files};

/// Print a unit file in normalized form, with its drop-ins (FILE.d/*.conf) applied.
///
/// The normalized form is what systemd sees: comments, blank lines and ignored lines dropped;
/// continuation lines joined; one Key=value per line; each section once, in order of first
/// appearance, holding all its entries in order (drop-in entries after the file's). Its
/// SHA-256 is the unit's content hash (--hash). Errors go to standard error and make the exit
/// status 1; the normalized form is printed regardless.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  flotctl cat hello.service
  flotctl cat --hash hello.service            the content hash only
  flotctl cat --output json hello.service     sections and entries as JSON")]
pub(crate) struct Args {
    /// The unit file
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// Print only the content hash (SHA-256 of the normalized form, hex)
    #[arg(long)]
    hash: bool,

    /// Do not apply the drop-ins in FILE.d/*.conf
    #[arg(long)]
    no_dropins: bool,
}

#[derive(Serialize)]
struct Entry<'a> {
    key: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct Section<'a> {
    name: &'a str,
    entries: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Document<'a> {
    file: &'a str,
    content_hash: String,
    sections: Vec<Section<'a>>,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let files = unit_files::read(&args.file, args.no_dropins)?;
    let verified = verify(&files.path, &files.text, &files.dropin_refs());
    let unit = &verified.unit;
    match (global.output, args.hash) {
        (Output::Text, true) => println!("{}", unit.content_hash()),
        (Output::Text, false) => print!("{}", unit.normalized()),
        (Output::Json, _) => {
            let doc = Document {
                file: &files.path,
                content_hash: unit.content_hash(),
                sections: unit
                    .sections
                    .iter()
                    .map(|s| Section {
                        name: &s.name,
                        entries: s
                            .entries
                            .iter()
                            .map(|e| Entry {
                                key: &e.key,
                                value: &e.value,
                            })
                            .collect(),
                    })
                    .collect(),
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    let mut failed = false;
    for d in verified.diagnostics.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
        failed = true;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
