//! fleetctl's unit commands: `submit`, `load`, `start`, `stop`, `unload`, `destroy`,
//! `list-units`, `list-unit-files`, `list-machines`, `status`, `journal`.
//!
//! They talk to an agent's HTTP API (`/flotilla/v1/units`, `/flotilla/v1/machines`) directly,
//! at `--endpoint` or else `http://127.0.0.1:2379` (the local agent): the agent's D-Bus
//! interface has no unit methods yet. Tables are aligned as fleetctl prints them
//! (`--no-legend`, `--fields`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{Global, Output};

/// The endpoint when `--endpoint` is not given.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// How long one HTTP request may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// A unit given on the command line: a file (name = file name, text read) or a name.
#[derive(Debug, Clone)]
struct UnitArg {
    name: String,
    file: Option<PathBuf>,
}

impl UnitArg {
    fn parse(arg: &str) -> Result<UnitArg> {
        let path = Path::new(arg);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("'{arg}' does not name a unit"))?
            .to_owned();
        // A path that exists is a file to submit; a bare name is a unit in the cluster.
        let file = path.is_file().then(|| path.to_path_buf());
        Ok(UnitArg { name, file })
    }
}

/// The HTTP client of the unit API.
struct Http {
    client: reqwest::Client,
    endpoint: String,
}

impl Http {
    fn new(global: &Global) -> Result<Http> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_DEADLINE)
            .build()
            .context("cannot build the HTTP client")?;
        let endpoint = global
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
            .trim_end_matches('/')
            .to_owned();
        Ok(Http { client, endpoint })
    }

    /// Sends `req`; a non-2xx answer is an error carrying the agent's message and diagnostics.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let reply = req
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {}", self.endpoint))?;
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .with_context(|| format!("{} sent a reply that is not JSON", self.endpoint))?;
        if !status.is_success() {
            let mut msg = body["error"]
                .as_str()
                .unwrap_or("the agent refused the request")
                .to_owned();
            if let Some(d) = body["diagnostics"].as_array()
                && !msg.contains('\n')
            {
                for line in d.iter().filter_map(Value::as_str) {
                    msg.push('\n');
                    msg.push_str(line);
                }
            }
            bail!("{msg}");
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    async fn put(&self, name: &str, body: Value) -> Result<Value> {
        self.send(
            self.client
                .put(self.url(&format!("/flotilla/v1/units/{name}")))
                .json(&body),
        )
        .await
    }

    async fn units(&self) -> Result<Vec<Value>> {
        let body = self
            .send(self.client.get(self.url("/flotilla/v1/units")))
            .await?;
        Ok(body["units"].as_array().cloned().unwrap_or_default())
    }

    /// Submits `u` if it names a file (a different content is refused unless `replace`).
    async fn submit(&self, u: &UnitArg, replace: bool) -> Result<()> {
        let Some(file) = &u.file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        self.put(&u.name, json!({ "text": text, "replace": replace }))
            .await?;
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Options of the commands that change desired states.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Change {
    /// Unit files (submitted first; the unit name is the file name) or unit names
    #[arg(required = true, value_name = "UNIT")]
    units: Vec<String>,
    /// Replace a submitted unit whose content differs
    #[arg(long)]
    replace: bool,
    /// Do not wait until the units reach the state asked for
    #[arg(long)]
    no_block: bool,
    /// How long to wait, in seconds
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    block_timeout: u64,
}

/// Submits, then applies `transition` (if any) to every unit, then waits for `ready`.
fn change(global: &Global, c: Change, transition: Option<&str>, ready: Ready) -> Result<ExitCode> {
    let units = c
        .units
        .iter()
        .map(|u| UnitArg::parse(u))
        .collect::<Result<Vec<_>>>()?;
    runtime()?.block_on(async {
        let http = Http::new(global)?;
        for u in &units {
            http.submit(u, c.replace).await?;
            if let Some(t) = transition {
                http.put(&u.name, json!({ "transition": t })).await?;
            }
        }
        if c.no_block || ready == Ready::Now {
            return Ok(ExitCode::SUCCESS);
        }
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        wait(&http, &names, ready, Duration::from_secs(c.block_timeout)).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// What a command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    /// Nothing.
    Now,
    /// Every machine it is assigned to reports it loaded and not running.
    Loaded,
    /// Every machine it is assigned to reports it active.
    Active,
    /// It runs nowhere.
    Gone,
}

/// Whether `unit` (a row of the list) is in the state `ready` waits for.
fn reached(unit: &Value, ready: Ready) -> bool {
    let machines: Vec<&str> = unit["machines"]
        .as_array()
        .map(|m| m.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let state = |m: &str| {
        unit["states"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["machine"] == m))
            .cloned()
    };
    match ready {
        Ready::Now => true,
        Ready::Gone => machines.is_empty(),
        Ready::Active => {
            !machines.is_empty()
                && machines
                    .iter()
                    .all(|m| state(m).is_some_and(|s| s["active"] == "active"))
        }
        Ready::Loaded => {
            !machines.is_empty()
                && machines.iter().all(|m| {
                    state(m).is_some_and(|s| {
                        s["load"] == "loaded"
                            && matches!(s["active"].as_str(), Some("inactive" | "failed"))
                    })
                })
        }
    }
}

/// Waits (fleetctl's blocking) until every unit of `names` reached `ready`, or fails naming
/// those that did not.
async fn wait(http: &Http, names: &[&str], ready: Ready, deadline: Duration) -> Result<()> {
    let until = Instant::now() + deadline;
    let mut period = Duration::from_millis(100);
    loop {
        let units = http.units().await?;
        let pending: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                let row = units.iter().find(|u| u["name"] == *n);
                match row {
                    Some(u) => !reached(u, ready),
                    None => ready != Ready::Gone,
                }
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= until {
            let why: Vec<String> = pending
                .iter()
                .map(|n| {
                    let row = units.iter().find(|u| u["name"] == *n);
                    match row.and_then(|u| u["unschedulable"].as_str()) {
                        Some(reason) => format!("{n} ({reason})"),
                        None => (*n).to_owned(),
                    }
                })
                .collect();
            bail!(
                "not {} after {}s: {}; see flotctl list-units",
                match ready {
                    Ready::Active => "active",
                    Ready::Loaded => "loaded",
                    _ => "done",
                },
                deadline.as_secs(),
                why.join(", ")
            );
        }
        tokio::time::sleep(period).await;
        period = (period * 2).min(Duration::from_secs(1));
    }
}

/// `flotctl submit`.
pub(crate) mod submit {
    use super::*;

    /// Submit unit files to the cluster without scheduling them (fleetctl submit).
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// Unit files; the unit name is the file name
        #[arg(required = true, value_name = "FILE")]
        files: Vec<String>,
        /// Replace a submitted unit whose content differs
        #[arg(long)]
        replace: bool,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let c = Change {
            units: args.files,
            replace: args.replace,
            no_block: true,
            block_timeout: 0,
        };
        for u in &c.units {
            if !Path::new(u).is_file() {
                bail!("cannot read unit file {u}: no such file");
            }
        }
        change(global, c, None, Ready::Now)
    }
}

/// `flotctl load`.
pub(crate) mod load {
    use super::*;

    /// Schedule units on machines and load them into systemd without starting them
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        change: Change,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        change(global, args.change, Some("load"), Ready::Loaded)
    }
}

/// `flotctl start`.
pub(crate) mod start {
    use super::*;

    /// Submit (a file), schedule and start units, and wait until they are active
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        change: Change,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        change(global, args.change, Some("start"), Ready::Active)
    }
}

/// `flotctl stop`.
pub(crate) mod stop {
    use super::*;

    /// Stop units; they stay loaded on their machines
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        change: Change,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        change(global, args.change, Some("stop"), Ready::Loaded)
    }
}

/// `flotctl unload`.
pub(crate) mod unload {
    use super::*;

    /// Stop units and take them off their machines; they stay submitted
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        change: Change,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        change(global, args.change, Some("unload"), Ready::Gone)
    }
}

/// `flotctl destroy`.
pub(crate) mod destroy {
    use super::*;

    /// Stop units and remove them from the cluster
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// Unit names (or files: the file name is the unit name)
        #[arg(required = true, value_name = "UNIT")]
        units: Vec<String>,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let units = args
            .units
            .iter()
            .map(|u| UnitArg::parse(u))
            .collect::<Result<Vec<_>>>()?;
        runtime()?.block_on(async {
            let http = Http::new(global)?;
            for u in &units {
                let url = http.url(&format!("/flotilla/v1/units/{}", u.name));
                http.send(http.client.delete(url)).await?;
                println!("Destroyed {}", u.name);
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// Table options shared by the list commands.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TableArgs {
    /// Leave out the header line
    #[arg(long)]
    no_legend: bool,
    /// The columns, comma-separated
    #[arg(long, value_delimiter = ',')]
    fields: Option<Vec<String>>,
}

/// Prints rows (already as strings by field) as an aligned table, or JSON.
fn print_table(
    global: &Global,
    t: &TableArgs,
    all: &[&str],
    default: &[&str],
    rows: &[Vec<(&'static str, String)>],
    json_rows: Value,
) -> Result<ExitCode> {
    if global.output == Output::Json {
        println!("{json_rows}");
        return Ok(ExitCode::SUCCESS);
    }
    let fields: Vec<String> = match &t.fields {
        Some(f) => f.clone(),
        None => default.iter().map(|s| (*s).to_owned()).collect(),
    };
    for f in &fields {
        if !all.contains(&f.as_str()) {
            bail!("unknown field '{f}': expected one of {}", all.join(", "));
        }
    }
    let cell = |row: &Vec<(&'static str, String)>, f: &str| {
        row.iter()
            .find(|(k, _)| *k == f)
            .map_or("-".to_owned(), |(_, v)| v.clone())
    };
    let mut lines: Vec<Vec<String>> = Vec::new();
    if !t.no_legend {
        lines.push(fields.iter().map(|f| f.to_uppercase()).collect());
    }
    for row in rows {
        lines.push(fields.iter().map(|f| cell(row, f)).collect());
    }
    let widths: Vec<usize> = (0..fields.len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    for l in &lines {
        let mut out = String::new();
        for (i, c) in l.iter().enumerate() {
            if i + 1 == l.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}\t", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotctl list-units`.
pub(crate) mod list_units {
    use super::*;

    const ALL: &[&str] = &[
        "unit", "machine", "load", "active", "sub", "desired", "pid", "result", "hash",
    ];
    const DEFAULT: &[&str] = &["unit", "machine", "active", "sub"];

    /// List the units that run on machines, with the state their machines report
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        table: TableArgs,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let units = runtime()?.block_on(async { Http::new(global)?.units().await })?;
        let mut rows = Vec::new();
        for u in &units {
            let name = u["name"].as_str().unwrap_or_default().to_owned();
            let machines: Vec<&str> = u["machines"]
                .as_array()
                .map(|m| m.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for m in machines {
                let s = u["states"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["machine"] == m))
                    .cloned()
                    .unwrap_or(Value::Null);
                let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
                rows.push(vec![
                    ("unit", name.clone()),
                    ("machine", m.to_owned()),
                    ("load", text("load")),
                    ("active", text("active")),
                    ("sub", text("sub")),
                    ("desired", u["desired"].as_str().unwrap_or("-").to_owned()),
                    (
                        "pid",
                        s["mainPid"].as_u64().map_or("-".into(), |p| p.to_string()),
                    ),
                    ("result", text("result")),
                    (
                        "hash",
                        u["hash"].as_str().unwrap_or("-").chars().take(7).collect(),
                    ),
                ]);
            }
        }
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(units))
    }
}

/// `flotctl list-unit-files`.
pub(crate) mod list_unit_files {
    use super::*;

    const ALL: &[&str] = &["unit", "hash", "dstate", "state", "target"];
    const DEFAULT: &[&str] = &["unit", "hash", "dstate", "state", "target"];

    /// List the unit files of the cluster with their desired and current states
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        table: TableArgs,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let units = runtime()?.block_on(async { Http::new(global)?.units().await })?;
        let rows: Vec<_> = units
            .iter()
            .map(|u| {
                let machines: Vec<&str> = u["machines"]
                    .as_array()
                    .map(|m| m.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                // fleet's current state: launched if active somewhere, loaded if loaded.
                let states = u["states"].as_array().cloned().unwrap_or_default();
                let state = if states.iter().any(|s| s["active"] == "active") {
                    "launched"
                } else if states.iter().any(|s| s["load"] == "loaded") {
                    "loaded"
                } else {
                    "inactive"
                };
                vec![
                    ("unit", u["name"].as_str().unwrap_or_default().to_owned()),
                    (
                        "hash",
                        u["hash"].as_str().unwrap_or("-").chars().take(7).collect(),
                    ),
                    ("dstate", u["desired"].as_str().unwrap_or("-").to_owned()),
                    ("state", state.to_owned()),
                    (
                        "target",
                        if machines.is_empty() {
                            "-".to_owned()
                        } else {
                            machines.join(",")
                        },
                    ),
                ]
            })
            .collect();
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(units))
    }
}

/// `flotctl list-machines`.
pub(crate) mod list_machines {
    use super::*;

    const ALL: &[&str] = &["machine", "name", "ip", "metadata", "status"];
    const DEFAULT: &[&str] = &["machine", "name", "ip", "metadata", "status"];

    /// List the machines of the cluster with their metadata and liveness
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        table: TableArgs,
        /// Print full machine IDs
        #[arg(long)]
        full: bool,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let body = runtime()?.block_on(async {
            let http = Http::new(global)?;
            http.send(http.client.get(http.url("/flotilla/v1/machines")))
                .await
        })?;
        let machines = body["machines"].as_array().cloned().unwrap_or_default();
        let rows: Vec<_> = machines
            .iter()
            .map(|m| {
                let id = m["machineID"].as_str().unwrap_or("-");
                let id = if args.full {
                    id.to_owned()
                } else {
                    format!("{}...", id.chars().take(8).collect::<String>())
                };
                let metadata = m["metadata"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".to_owned());
                vec![
                    ("machine", id),
                    ("name", m["name"].as_str().unwrap_or("-").to_owned()),
                    ("ip", m["addr"].as_str().unwrap_or("-").to_owned()),
                    ("metadata", metadata),
                    ("status", m["status"].as_str().unwrap_or("-").to_owned()),
                ]
            })
            .collect();
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(machines))
    }
}

/// Prints `status` or `journal` of a unit as its machine's agent ran it.
fn remote(global: &Global, name: &str, what: &str, query: &str) -> Result<ExitCode> {
    let body = runtime()?.block_on(async {
        let http = Http::new(global)?;
        let url = http.url(&format!("/flotilla/v1/units/{name}/{what}{query}"));
        http.send(http.client.get(url)).await
    })?;
    if global.output == Output::Json {
        println!("{body}");
    } else {
        print!("{}", body["output"].as_str().unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotctl status`.
pub(crate) mod status {
    use super::*;

    /// Show `systemctl status` of a unit, run on the machine that runs it
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// The unit name
        unit: String,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let name = UnitArg::parse(&args.unit)?.name;
        remote(global, &name, "status", "")
    }
}

/// `flotctl journal`.
pub(crate) mod journal {
    use super::*;

    /// Show the journal of a unit, read on the machine that runs it
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// The unit name
        unit: String,
        /// How many lines, newest last
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: u32,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let name = UnitArg::parse(&args.unit)?.name;
        remote(global, &name, "journal", &format!("?lines={}", args.lines))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(machines: &[&str], states: Value) -> Value {
        json!({ "name": "hello.service", "machines": machines, "states": states })
    }

    #[test]
    fn active_means_active_on_every_assigned_machine() {
        let u = unit(
            &["a"],
            json!([{ "machine": "a", "active": "active", "load": "loaded" }]),
        );
        assert!(reached(&u, Ready::Active));
        assert!(!reached(&u, Ready::Loaded));
        let stale = unit(&["b"], json!([{ "machine": "a", "active": "active" }]));
        assert!(!reached(&stale, Ready::Active));
        assert!(!reached(&unit(&[], json!([])), Ready::Active));
        assert!(reached(&unit(&[], json!([])), Ready::Gone));
    }

    #[test]
    fn a_path_names_its_unit_by_file_name() {
        let u = UnitArg::parse("/nonexistent/dir/hello.service").unwrap();
        assert_eq!(u.name, "hello.service");
        assert!(u.file.is_none());
    }
}
