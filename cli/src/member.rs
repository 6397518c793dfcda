//! `flotctl member list|add|remove`: the Raft membership through the agent's `/v2/members`,
//! printed as `etcdctl member` (v2) prints it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// `flotctl member COMMAND`.
#[derive(Debug, clap::Args)]
#[command(
    about = "List, add and remove the members of the Raft group",
    long_about = "List, add and remove the members of the Raft group (up to five voters; further \
                  machines are learners that hold a full replica). Output as `etcdctl member`."
)]
pub(crate) struct Args {
    /// The command.
    #[command(subcommand)]
    command: MemberCommand,
}

/// The membership commands.
#[derive(Debug, clap::Subcommand)]
enum MemberCommand {
    /// List the members (voters and learners).
    List,
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
    rt.block_on(execute(&global.endpoint, &args.command))?;
    Ok(ExitCode::SUCCESS)
}

async fn execute(endpoint: &str, command: &MemberCommand) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let base = format!("{}/v2/members", endpoint.trim_end_matches('/'));
    let unreachable = || format!("cannot reach {endpoint}");
    match command {
        MemberCommand::List => {
            let body: Value = http
                .get(&base)
                .send()
                .await
                .with_context(unreachable)?
                .json()
                .await?;
            let leader: Value = match http.get(format!("{base}/leader")).send().await {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            for m in body["members"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let join = |v: &Value| {
                    v.as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                let learner = if m["isLearner"] == true {
                    " isLearner=true"
                } else {
                    ""
                };
                println!(
                    "{}: name={} peerURLs={} clientURLs={} isLeader={}{learner}",
                    m["id"].as_str().unwrap_or(""),
                    m["name"].as_str().unwrap_or(""),
                    join(&m["peerURLs"]),
                    join(&m["clientURLs"]),
                    leader["id"] == m["id"],
                );
            }
            Ok(())
        }
        MemberCommand::Add { name, peer_url } => {
            let resp = http
                .post(&base)
                .json(&json!({"name": name, "peerURLs": [peer_url]}))
                .send()
                .await
                .with_context(unreachable)?;
            let status = resp.status();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!(
                    "cannot add member {name}: {}",
                    body["message"].as_str().unwrap_or(status.as_str())
                );
            }
            println!(
                "Added member named {name} with ID {} to cluster",
                body["id"].as_str().unwrap_or("")
            );
            println!();
            println!("Start it with this in its flotilla.toml:");
            println!("name = \"{name}\"");
            println!("[cluster]");
            println!("join = [\"{}\"]", peer_url.trim_start_matches("http://"));
            Ok(())
        }
        MemberCommand::Remove { member } => {
            let resp = http
                .delete(format!("{base}/{member}"))
                .send()
                .await
                .with_context(unreachable)?;
            let status = resp.status();
            if !status.is_success() {
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                bail!(
                    "cannot remove member {member}: {}",
                    body["message"].as_str().unwrap_or(status.as_str())
                );
            }
            println!("Removed member {member} from cluster");
            Ok(())
        }
    }
}
