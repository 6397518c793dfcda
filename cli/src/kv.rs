//! `flotctl kv`: the etcd v2 key-value commands, with `etcdctl`'s (v2) flags, output and exit
//! codes, spoken to the local agent over D-Bus, or to any agent's HTTP API with `--endpoint`.

use std::process::ExitCode;

use anyhow::Context;
use flotilla_dbus::agent1::KeyNode;
use serde_json::json;

use crate::Output;
use crate::client::{self, Client, DeleteOptions, SetOptions};

/// etcdctl's exit code for a server or connection error.
const EXIT_SERVER_ERROR: u8 = 4;
/// etcdctl's exit code for a bad argument (and "is a directory").
const EXIT_BAD_ARGS: u8 = 1;

/// `flotctl kv COMMAND`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Read and write the cluster's key-value store (etcdctl v2's commands)",
    long_about = "Read and write the cluster's key-value store, the etcd v2 key space. The commands, \
                  flags, output and exit codes are etcdctl's (v2): 0 on success, 4 for an error \
                  from the cluster (one line on stderr: `Error:  key /foo not found` over D-Bus, \
                  `Error:  100: Key not found (/foo) [12]` over HTTP), 1 for `get` of a \
                  directory. With --output json: the node(s) as JSON. It talks to the local \
                  agent over D-Bus, or to --endpoint URL over HTTP."
)]
pub(crate) struct Args {
    /// The command.
    #[command(subcommand)]
    command: KvCommand,
}

/// The key-value commands (etcdctl v2's).
#[derive(Debug, clap::Subcommand)]
enum KvCommand {
    /// Set the value of a key.
    Set {
        key: String,
        value: String,
        /// Time to live of the key, in seconds.
        #[arg(long)]
        ttl: Option<u64>,
        /// Only set if the current value is this.
        #[arg(long)]
        swap_with_value: Option<String>,
        /// Only set if the current modified index is this.
        #[arg(long)]
        swap_with_index: Option<u64>,
    },
    /// Print the value of a key.
    Get {
        key: String,
        /// Sort the result.
        #[arg(long)]
        sort: bool,
        /// Linearizable read (through the leader).
        #[arg(long)]
        quorum: bool,
    },
    /// Create a key that must not exist yet.
    Mk {
        key: String,
        value: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Create a directory that must not exist yet.
    Mkdir {
        key: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Update a key that must exist.
    Update {
        key: String,
        value: String,
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Remove a key or a directory.
    Rm {
        key: String,
        /// Remove an empty directory, or a key.
        #[arg(long)]
        dir: bool,
        /// Remove a directory and everything under it.
        #[arg(long)]
        recursive: bool,
        /// Only remove if the current value is this.
        #[arg(long)]
        with_value: Option<String>,
        /// Only remove if the current modified index is this.
        #[arg(long)]
        with_index: Option<u64>,
    },
    /// Remove an empty directory.
    Rmdir { key: String },
    /// List a directory.
    Ls {
        #[arg(default_value = "/")]
        key: String,
        /// List everything under the directory.
        #[arg(long)]
        recursive: bool,
        /// Sort the result.
        #[arg(long)]
        sort: bool,
        /// Append `/` to directories.
        #[arg(short = 'p')]
        p: bool,
        #[arg(long)]
        quorum: bool,
    },
    /// Wait for a change of a key (or anything under a directory) and print it.
    Watch {
        key: String,
        /// Keep watching after the first change.
        #[arg(long)]
        forever: bool,
        /// Watch changes after this index.
        #[arg(long, default_value_t = 0)]
        after_index: u64,
        /// Watch everything under the key.
        #[arg(long)]
        recursive: bool,
    },
}

/// Runs a `flotctl kv` command; the exit code is etcdctl's.
pub(crate) fn run(global: &crate::Global, args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = rt.block_on(async {
        let client = Client::connect(global).await?;
        execute(&client, global.output, &args.command).await
    });
    match code {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(client::Error::Refused { message, .. }) => {
            eprintln!("Error:  {message}");
            Ok(ExitCode::from(EXIT_SERVER_ERROR))
        }
        Err(client::Error::Unreachable(e)) => {
            eprintln!(
                "Error:  client: flotilla cluster is unavailable or misconfigured; error #0: {e}"
            );
            Ok(ExitCode::from(EXIT_SERVER_ERROR))
        }
    }
}

/// Prints `node` as etcdctl's "simple" output (its value), or as JSON.
fn print_node(output: Output, action: &str, node: &KeyNode) {
    match output {
        Output::Json => println!("{}", node_json(action, node)),
        Output::Text => println!("{}", node.value),
    }
}

fn node_json(action: &str, n: &KeyNode) -> serde_json::Value {
    let mut v = json!({
        "key": n.key,
        "dir": n.dir,
        "createdIndex": n.created_index,
        "modifiedIndex": n.modified_index,
    });
    if !n.dir {
        v["value"] = json!(n.value);
    }
    if n.ttl != 0 {
        v["ttl"] = json!(n.ttl);
    }
    if action.is_empty() {
        v
    } else {
        json!({"action": action, "node": v})
    }
}

async fn execute(c: &Client, output: Output, command: &KvCommand) -> Result<u8, client::Error> {
    match command {
        KvCommand::Set {
            key,
            value,
            ttl,
            swap_with_value,
            swap_with_index,
        } => {
            let o = SetOptions {
                ttl: *ttl,
                prev_value: swap_with_value.clone(),
                prev_index: *swap_with_index,
                ..SetOptions::default()
            };
            print_node(output, "set", &c.set_key(key, value, &o).await?);
            Ok(0)
        }
        KvCommand::Mk { key, value, ttl } => {
            let o = SetOptions {
                ttl: *ttl,
                prev_exist: Some(false),
                ..SetOptions::default()
            };
            print_node(output, "create", &c.set_key(key, value, &o).await?);
            Ok(0)
        }
        KvCommand::Mkdir { key, ttl } => {
            let o = SetOptions {
                ttl: *ttl,
                dir: true,
                prev_exist: Some(false),
                ..SetOptions::default()
            };
            let n = c.set_key(key, "", &o).await?;
            if output == Output::Json {
                print_node(output, "create", &n);
            }
            Ok(0)
        }
        KvCommand::Update { key, value, ttl } => {
            let o = SetOptions {
                ttl: *ttl,
                prev_exist: Some(true),
                ..SetOptions::default()
            };
            print_node(output, "update", &c.set_key(key, value, &o).await?);
            Ok(0)
        }
        KvCommand::Rm {
            key,
            dir,
            recursive,
            with_value,
            with_index,
        } => {
            let o = DeleteOptions {
                dir: *dir,
                recursive: *recursive,
                prev_value: with_value.clone(),
                prev_index: *with_index,
            };
            let n = c.delete_key(key, &o).await?;
            print_deleted(output, &n);
            Ok(0)
        }
        KvCommand::Rmdir { key } => {
            let o = DeleteOptions {
                dir: true,
                ..DeleteOptions::default()
            };
            let n = c.delete_key(key, &o).await?;
            print_deleted(output, &n);
            Ok(0)
        }
        KvCommand::Get {
            key,
            sort: _,
            quorum,
        } => {
            let n = c.get_key(key, *quorum).await?;
            if n.dir {
                eprintln!("{}: is a directory", n.key);
                return Ok(EXIT_BAD_ARGS);
            }
            print_node(output, "get", &n);
            Ok(0)
        }
        KvCommand::Ls {
            key,
            recursive,
            sort: _,
            p: slash,
            quorum,
        } => {
            let nodes = c.list_keys(key, *recursive, *quorum).await?;
            match output {
                Output::Json => {
                    let all: Vec<_> = nodes.iter().map(|n| node_json("", n)).collect();
                    println!("{}", json!(all));
                }
                Output::Text => {
                    for n in &nodes {
                        if n.dir && *slash {
                            println!("{}/", n.key);
                        } else {
                            println!("{}", n.key);
                        }
                    }
                }
            }
            Ok(0)
        }
        KvCommand::Watch {
            key,
            forever,
            after_index,
            recursive,
        } => {
            let after = (*after_index != 0).then_some(*after_index);
            c.watch(key, *recursive, after, |action, n| {
                if n.dir {
                    return true;
                }
                match output {
                    Output::Json => println!("{}", node_json(action, n)),
                    Output::Text => {
                        if *recursive {
                            println!("[{action}] {}", n.key);
                        }
                        if action == "delete" || action == "expire" || action == "compareAndDelete"
                        {
                            println!("PrevNode.Value: {}", n.value);
                        } else {
                            println!("{}", n.value);
                        }
                    }
                }
                *forever
            })
            .await?;
            Ok(0)
        }
    }
}

/// etcdctl prints the value a deletion removed (nothing for a directory).
fn print_deleted(output: Output, n: &KeyNode) {
    match output {
        Output::Json => println!("{}", node_json("delete", n)),
        Output::Text if !n.dir => println!("PrevNode.Value: {}", n.value),
        Output::Text => {}
    }
}
