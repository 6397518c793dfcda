//! `flotctl kv`: the etcd v2 key-value commands, with `etcdctl`'s (v2) flags, output and exit
//! codes, spoken to a flotilla agent's client API (the global `--endpoint`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

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
                  from the cluster (e.g. `Error:  100: Key not found (/foo) [12]`), 1 for `get` \
                  of a directory."
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

/// What a request produced: the decoded body, or an etcd error body.
enum Reply {
    Ok(Value),
    EtcdError(Value),
}

struct Client {
    http: reqwest::Client,
    endpoint: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        key: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<Reply> {
        let key = if key.starts_with('/') {
            key.to_string()
        } else {
            format!("/{key}")
        };
        let url = format!("{}/v2/keys{}", self.endpoint.trim_end_matches('/'), key);
        let encoded = encode_pairs(params);
        let req = if method == reqwest::Method::GET || method == reqwest::Method::DELETE {
            let url = if encoded.is_empty() {
                url
            } else {
                format!("{url}?{encoded}")
            };
            self.http.request(method, url)
        } else {
            self.http
                .request(method, &url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(encoded)
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.endpoint))?;
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("{} sent a reply that is not JSON", self.endpoint))?;
        if body.get("errorCode").is_some() {
            Ok(Reply::EtcdError(body))
        } else {
            Ok(Reply::Ok(body))
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of `pairs`.
fn encode_pairs(pairs: &[(&str, String)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(b as char)
                }
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// Runs a `flotctl kv` command; the exit code is etcdctl's.
pub(crate) fn run(global: &crate::Global, args: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match rt.block_on(execute(&global.endpoint, &args.command)) {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!(
                "Error:  client: flotilla cluster is unavailable or misconfigured; error #0: {e:#}"
            );
            Ok(ExitCode::from(EXIT_SERVER_ERROR))
        }
    }
}

/// etcd's error line: `Error:  100: Key not found (/foo) [12]`.
fn etcd_error(body: &Value) -> u8 {
    let code = body["errorCode"].as_u64().unwrap_or(0);
    let message = body["message"].as_str().unwrap_or("");
    let cause = body["cause"].as_str().unwrap_or("");
    let index = body["index"].as_u64().unwrap_or(0);
    eprintln!("Error:  {code}: {message} ({cause}) [{index}]");
    EXIT_SERVER_ERROR
}

/// etcdctl's "simple" output of a response.
fn print_value(body: &Value) {
    if body["action"] == "delete" {
        println!(
            "PrevNode.Value: {}",
            body["prevNode"]["value"].as_str().unwrap_or("")
        );
    } else {
        println!("{}", body["node"]["value"].as_str().unwrap_or(""));
    }
}

fn ls_print(node: &Value, p: bool) {
    let key = node["key"].as_str().unwrap_or("");
    if node["dir"] == true && p {
        println!("{key}/");
    } else {
        println!("{key}");
    }
    if let Some(nodes) = node["nodes"].as_array() {
        for n in nodes {
            ls_print(n, p);
        }
    }
}

async fn execute(endpoint: &str, command: &KvCommand) -> anyhow::Result<u8> {
    use reqwest::Method;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()?;
    let c = Client {
        http,
        endpoint: endpoint.to_string(),
    };
    let ttl = |t: &Option<u64>| t.map(|t| ("ttl", t.to_string()));
    let t = "true".to_string();
    match command {
        KvCommand::Set {
            key,
            value,
            ttl: tl,
            swap_with_value,
            swap_with_index,
        } => {
            let mut p = vec![("value", value.clone())];
            p.extend(ttl(tl));
            p.extend(swap_with_value.clone().map(|v| ("prevValue", v)));
            p.extend(swap_with_index.map(|i| ("prevIndex", i.to_string())));
            write(&c, Method::PUT, key, &p, true).await
        }
        KvCommand::Mk {
            key,
            value,
            ttl: tl,
        } => {
            let mut p = vec![("value", value.clone()), ("prevExist", "false".into())];
            p.extend(ttl(tl));
            write(&c, Method::PUT, key, &p, true).await
        }
        KvCommand::Mkdir { key, ttl: tl } => {
            let mut p = vec![("dir", t.clone()), ("prevExist", "false".into())];
            p.extend(ttl(tl));
            write(&c, Method::PUT, key, &p, false).await
        }
        KvCommand::Update {
            key,
            value,
            ttl: tl,
        } => {
            let mut p = vec![("value", value.clone()), ("prevExist", t.clone())];
            p.extend(ttl(tl));
            write(&c, Method::PUT, key, &p, true).await
        }
        KvCommand::Rm {
            key,
            dir,
            recursive,
            with_value,
            with_index,
        } => {
            let mut p = Vec::new();
            if *dir {
                p.push(("dir", t.clone()));
            }
            if *recursive {
                p.push(("recursive", t.clone()));
            }
            p.extend(with_value.clone().map(|v| ("prevValue", v)));
            p.extend(with_index.map(|i| ("prevIndex", i.to_string())));
            match c.call(Method::DELETE, key, &p).await? {
                Reply::EtcdError(b) => Ok(etcd_error(&b)),
                Reply::Ok(b) => {
                    if b["node"]["dir"] != true {
                        print_value(&b);
                    }
                    Ok(0)
                }
            }
        }
        KvCommand::Rmdir { key } => match c.call(Method::DELETE, key, &[("dir", t.clone())]).await?
        {
            Reply::EtcdError(b) => Ok(etcd_error(&b)),
            Reply::Ok(b) => {
                if b["node"]["dir"] != true {
                    print_value(&b);
                }
                Ok(0)
            }
        },
        KvCommand::Get { key, sort, quorum } => {
            let mut p = Vec::new();
            if *sort {
                p.push(("sorted", t.clone()));
            }
            if *quorum {
                p.push(("quorum", t.clone()));
            }
            match c.call(Method::GET, key, &p).await? {
                Reply::EtcdError(b) => Ok(etcd_error(&b)),
                Reply::Ok(b) if b["node"]["dir"] == true => {
                    eprintln!(
                        "{}: is a directory",
                        b["node"]["key"].as_str().unwrap_or(key)
                    );
                    Ok(EXIT_BAD_ARGS)
                }
                Reply::Ok(b) => {
                    print_value(&b);
                    Ok(0)
                }
            }
        }
        KvCommand::Ls {
            key,
            recursive,
            sort,
            p: slash,
            quorum,
        } => {
            let mut p = Vec::new();
            if *recursive {
                p.push(("recursive", t.clone()));
            }
            if *sort {
                p.push(("sorted", t.clone()));
            }
            if *quorum {
                p.push(("quorum", t.clone()));
            }
            match c.call(Method::GET, key, &p).await? {
                Reply::EtcdError(b) => Ok(etcd_error(&b)),
                Reply::Ok(b) => {
                    let node = &b["node"];
                    if node["dir"] != true {
                        println!("{}", node["key"].as_str().unwrap_or(""));
                    }
                    if let Some(nodes) = node["nodes"].as_array() {
                        for n in nodes {
                            ls_print(n, *slash);
                        }
                    }
                    Ok(0)
                }
            }
        }
        KvCommand::Watch {
            key,
            forever,
            after_index,
            recursive,
        } => {
            let mut wait_index = if *after_index == 0 {
                None
            } else {
                Some(after_index + 1)
            };
            loop {
                let mut p = vec![("wait", t.clone())];
                if *recursive {
                    p.push(("recursive", t.clone()));
                }
                if let Some(i) = wait_index {
                    p.push(("waitIndex", i.to_string()));
                }
                match c.call(Method::GET, key, &p).await? {
                    Reply::EtcdError(b) => return Ok(etcd_error(&b)),
                    Reply::Ok(b) => {
                        wait_index = b["node"]["modifiedIndex"].as_u64().map(|i| i + 1);
                        if b["node"]["dir"] == true {
                            continue;
                        }
                        if *recursive {
                            println!(
                                "[{}] {}",
                                b["action"].as_str().unwrap_or(""),
                                b["node"]["key"].as_str().unwrap_or("")
                            );
                        }
                        print_value(&b);
                        if !forever {
                            return Ok(0);
                        }
                    }
                }
            }
        }
    }
}

async fn write(
    c: &Client,
    method: reqwest::Method,
    key: &str,
    p: &[(&str, String)],
    print: bool,
) -> anyhow::Result<u8> {
    match c.call(method, key, p).await? {
        Reply::EtcdError(b) => Ok(etcd_error(&b)),
        Reply::Ok(b) => {
            if print {
                print_value(&b);
            }
            Ok(0)
        }
    }
}
