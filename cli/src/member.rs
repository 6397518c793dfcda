//! `flotctl member list|add|remove`: the Raft membership, from the local agent over D-Bus or any
//! agent's HTTP API (`--endpoint`); `list` prints an aligned table as `fleetctl list-machines`
//! does (`--no-legend`, `--fields`, `--full`), or JSON.

use std::process::ExitCode;

use anyhow::{Context, bail};
use flotilla_dbus::agent1::MemberRecord;
use serde_json::json;

use crate::Output;
use crate::client::{self, Client};

/// The columns of `member list`, in the default order.
const FIELDS: &[&str] = &["id", "name", "peer", "clients", "role", "leader"];

/// `flotctl member COMMAND`.
#[derive(Debug, clap::Args)]
#[command(
    about = "List, add and remove the members of the Raft group",
    long_about = "List, add and remove the members of the Raft group (up to five voters; further \
                  machines are learners that hold a full replica). Talks to the local agent over \
                  D-Bus, or to --endpoint URL over HTTP. Errors are one line on stderr and exit \
                  code 1."
)]
pub(crate) struct Args {
    /// The command.
    #[command(subcommand)]
    command: MemberCommand,
}

/// The membership commands.
#[derive(Debug, clap::Subcommand)]
enum MemberCommand {
    /// List the members (voters and learners) as a table.
    List {
        /// Leave out the header line.
        #[arg(long)]
        no_legend: bool,
        /// The columns, comma-separated: id, name, peer, clients, role, leader.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "id,name,peer,clients,role,leader"
        )]
        fields: Vec<String>,
        /// Print ids in full (16 hex digits), not their first 8.
        #[arg(long)]
        full: bool,
    },
    /// Register a member that will start with `[cluster] join`; it joins as a learner and
    /// becomes a voter while the cluster has fewer than five.
    Add {
        /// The new member's name (its `name` in flotilla.toml).
        name: String,
        /// Its peer URL, `http://HOST:2380`.
        peer_url: String,
    },
    /// Remove a member, by id (hex) or name.
    Remove {
        /// The member id or name.
        member: String,
    },
}

/// Runs a `flotctl member` command.
pub(crate) fn run(global: &crate::Global, args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(execute(global, &args.command))?;
    Ok(ExitCode::SUCCESS)
}

async fn execute(global: &crate::Global, command: &MemberCommand) -> anyhow::Result<()> {
    let c = Client::connect(global).await?;
    match command {
        MemberCommand::List {
            no_legend,
            fields,
            full,
        } => {
            for f in fields {
                if !FIELDS.contains(&f.as_str()) {
                    bail!("unknown field {f:?}; the fields are {}", FIELDS.join(", "));
                }
            }
            let members = c.list_members().await?;
            match global.output {
                Output::Json => {
                    let all: Vec<_> = members.iter().map(member_json).collect();
                    println!("{}", serde_json::to_string_pretty(&json!(all))?);
                }
                Output::Text => print!("{}", table(&members, fields, *no_legend, *full)),
            }
            Ok(())
        }
        MemberCommand::Add { name, peer_url } => {
            let m = c
                .add_member(name, peer_url)
                .await
                .map_err(|e| refused(e, &format!("cannot add member {name}")))?;
            match global.output {
                Output::Json => println!("{}", member_json(&m)),
                Output::Text => {
                    println!("Added member named {name} with ID {} to cluster", m.id);
                    println!();
                    println!("Start it with this in its flotilla.toml:");
                    println!("name = \"{name}\"");
                    println!("[cluster]");
                    println!("join = [\"{}\"]", peer_url.trim_start_matches("http://"));
                }
            }
            Ok(())
        }
        MemberCommand::Remove { member } => {
            c.remove_member(member)
                .await
                .map_err(|e| refused(e, &format!("cannot remove member {member}")))?;
            if global.output == Output::Text {
                println!("Removed member {member} from cluster");
            }
            Ok(())
        }
    }
}

fn refused(e: client::Error, what: &str) -> anyhow::Error {
    match e {
        client::Error::Refused { message, .. } => anyhow::anyhow!("{what}: {message}"),
        other => other.into(),
    }
}

fn member_json(m: &MemberRecord) -> serde_json::Value {
    json!({
        "id": m.id,
        "name": m.name,
        "peerURL": m.peer_url,
        "clientURLs": m.client_urls,
        "isLearner": !m.voter,
        "isLeader": m.leader,
    })
}

/// The members as an aligned table: upper-case headers, columns separated by a tab-stop of
/// spaces, as fleetctl prints them.
fn table(members: &[MemberRecord], fields: &[String], no_legend: bool, full: bool) -> String {
    let cell = |m: &MemberRecord, f: &str| -> String {
        match f {
            "id" if full => m.id.clone(),
            "id" => m.id.chars().take(8).collect::<String>() + "...",
            "name" => m.name.clone(),
            "peer" => m.peer_url.clone(),
            "clients" if m.client_urls.is_empty() => "-".into(),
            "clients" => m.client_urls.join(","),
            "role" if m.voter => "voter".into(),
            "role" => "learner".into(),
            "leader" => m.leader.to_string(),
            _ => String::new(),
        }
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    if !no_legend {
        rows.push(fields.iter().map(|f| f.to_uppercase()).collect());
    }
    rows.extend(
        members
            .iter()
            .map(|m| fields.iter().map(|f| cell(m, f)).collect()),
    );
    let widths: Vec<usize> = (0..fields.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("\t").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<MemberRecord> {
        vec![
            MemberRecord {
                id: "8e9e05c52164694d".into(),
                name: "node1".into(),
                peer_url: "http://10.0.0.1:2380".into(),
                client_urls: vec!["http://10.0.0.1:2379".into()],
                voter: true,
                leader: true,
            },
            MemberRecord {
                id: "0123456789abcdef".into(),
                name: "node10".into(),
                peer_url: "http://10.0.0.10:2380".into(),
                client_urls: vec![],
                voter: false,
                leader: false,
            },
        ]
    }

    #[test]
    fn table_is_aligned_with_a_legend_and_short_ids() {
        let fields: Vec<String> = FIELDS.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            table(&members(), &fields, false, false),
            "ID         \tNAME  \tPEER                 \tCLIENTS             \tROLE   \tLEADER\n\
             8e9e05c5...\tnode1 \thttp://10.0.0.1:2380 \thttp://10.0.0.1:2379\tvoter  \ttrue\n\
             01234567...\tnode10\thttp://10.0.0.10:2380\t-                   \tlearner\tfalse\n"
        );
    }

    #[test]
    fn fields_no_legend_and_full() {
        let fields = vec!["name".to_string(), "id".to_string()];
        assert_eq!(
            table(&members(), &fields, true, true),
            "node1 \t8e9e05c52164694d\nnode10\t0123456789abcdef\n"
        );
    }
}
