//! `flotctl verify FILE...`: check unit files offline and print every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use flotilla_units::{Diagnostic, Severity, verify};
use serde::Serialize;

use crate::{Global, Output, unit_files};

/// Check unit files offline: syntax, systemd's load-time checks, [X-Fleet] and [X-Flotilla].
///
/// Every problem is printed as FILE:LINE:COLUMN: MESSAGE (warnings say "warning:"). Errors are
/// what makes systemd refuse the unit (as `systemd-analyze verify` would) or fleet refuse to
/// schedule it; warnings are what systemd logs and ignores. The exit status is 1 when any file
/// has an error. Nothing is sent to the cluster.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  flotctl verify hello.service                 hello.service and hello.service.d/*.conf
  flotctl verify --no-dropins units/*.service
  flotctl verify --output json web@.service
  flotctl verify web.container                 a Podman Quadlet file, as the service it becomes")]
pub(crate) struct Args {
    /// Unit files (the file name is the unit name) or drop-ins (*.conf)
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Do not apply the drop-ins in FILE.d/*.conf next to each file
    #[arg(long)]
    no_dropins: bool,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    unit: Option<String>,
    content_hash: Option<String>,
    diagnostics: Vec<Diagnostic>,
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.files {
        let report = match unit_files::read(path, args.no_dropins) {
            Ok(files) => {
                let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if flotilla_units::quadlet::is_container(file_name) {
                    // A Quadlet file: its translation's problems, then the service's.
                    let t = flotilla_units::quadlet::container_to_service(
                        &files.path,
                        file_name,
                        &files.text,
                    );
                    let verified = verify(&t.name, &t.text, &[]);
                    let mut diagnostics = t.diagnostics;
                    diagnostics.extend(verified.diagnostics);
                    FileReport {
                        file: files.path.clone(),
                        unit: Some(t.name),
                        content_hash: Some(verified.unit.content_hash()),
                        diagnostics,
                    }
                } else {
                    let verified = verify(&files.path, &files.text, &files.dropin_refs());
                    FileReport {
                        file: files.path.clone(),
                        unit: verified.name.as_ref().map(|n| n.to_string()),
                        content_hash: Some(verified.unit.content_hash()),
                        diagnostics: verified.diagnostics,
                    }
                }
            }
            Err(e) => {
                let file = path.display().to_string();
                FileReport {
                    diagnostics: vec![Diagnostic {
                        file: file.as_str().into(),
                        line: 0,
                        column: 0,
                        severity: Severity::Error,
                        message: format!("{e:#}"),
                    }],
                    file,
                    unit: None,
                    content_hash: None,
                }
            }
        };
        reports.push(report);
    }
    let failed = reports
        .iter()
        .any(|r| flotilla_units::diagnostic::has_errors(&r.diagnostics));
    match global.output {
        Output::Text => {
            for d in reports.iter().flat_map(|r| &r.diagnostics) {
                println!("{d}");
            }
        }
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
