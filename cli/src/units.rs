//! fleetctl's unit commands: `submit`, `load`, `start`, `stop`, `unload`, `destroy`,
//! `restart`, `list-units`, `list-unit-files`, `list-machines`, `status`, `journal`.
//!
//! They go through [`Client`]: the local agent over D-Bus by default, any agent's HTTP API
//! (`/flotilla/v1/units`, `/flotilla/v1/machines`) with `--endpoint`; the output is the same
//! either way. Tables are aligned as fleetctl prints them (`--no-legend`, `--fields`,
//! `--full`); `--output json` prints the rows as the D-Bus interface types them. Commands
//! that wait (`start`, `load`, `stop`, `unload`) wake on `UnitStateChanged` over D-Bus and
//! poll over HTTP. An error is one line on stderr (a malformed unit adds one
//! `file:line:column` line per problem) and exit code 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_dbus::agent1::{UnitFile, UnitState};
use serde_json::{Value, json};

use crate::client::{Client, UnitChanges, Verb};
use crate::{Global, Output};

/// A unit given on the command line: a file (name = file name, text read) or a name.
#[derive(Debug, Clone)]
struct UnitArg {
    name: String,
    file: Option<PathBuf>,
    /// A path with a directory that is not a file (a unit name never has a `/`).
    missing: Option<PathBuf>,
}

impl UnitArg {
    /// Every argument of a command, in order.
    fn parse_all(args: &[String]) -> Result<Vec<UnitArg>> {
        args.iter().map(|a| UnitArg::parse(a)).collect()
    }

    fn parse(arg: &str) -> Result<UnitArg> {
        let path = Path::new(arg);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("'{arg}' does not name a unit"))?
            .to_owned();
        // A Quadlet file NAME.container is the service NAME.service.
        let name = match name.strip_suffix(flotilla_units::quadlet::SUFFIX) {
            Some(base) if flotilla_units::quadlet::is_container(&name) => {
                format!("{base}.service")
            }
            _ => name,
        };
        // A path that exists is a file to submit; a bare name is a unit in the cluster.
        let file = path.is_file().then(|| path.to_path_buf());
        let missing = (file.is_none() && arg.contains('/')).then(|| path.to_path_buf());
        Ok(UnitArg {
            name,
            file,
            missing,
        })
    }

    /// Submits the unit if it names a file (a different content is refused unless `replace`).
    async fn submit(&self, client: &Client, replace: bool) -> Result<()> {
        let Some(file) = &self.file else {
            if let Some(path) = &self.missing {
                let why = std::fs::metadata(path)
                    .err()
                    .map_or("not a file".to_owned(), |e| e.to_string());
                bail!("cannot read {}: {why}", path.display());
            }
            return Ok(());
        };
        let mut text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if flotilla_units::quadlet::is_container(file_name) {
            let t = flotilla_units::quadlet::container_to_service(
                &file.display().to_string(),
                file_name,
                &text,
            );
            for d in t.diagnostics.iter().filter(|d| !d.is_error()) {
                eprintln!("{d}");
            }
            let errors: Vec<String> = t
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(ToString::to_string)
                .collect();
            if !errors.is_empty() {
                bail!(
                    "{} cannot run as {}:\n{}",
                    file.display(),
                    t.name,
                    errors.join("\n")
                );
            }
            text = t.text;
        }
        client.submit_unit(&self.name, &text, replace).await?;
        Ok(())
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `f` with a client of the agent `global` names.
fn with_client<T>(global: &Global, f: impl AsyncFnOnce(&Client) -> Result<T>) -> Result<T> {
    runtime()?.block_on(async {
        let client = Client::connect(global).await?;
        f(&client).await
    })
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

/// Submits, then applies `verb` (if any) to every unit, then waits for `ready`.
fn change(global: &Global, c: Change, verb: Option<Verb>, ready: Ready) -> Result<ExitCode> {
    let units = UnitArg::parse_all(&c.units)?;
    with_client(global, async |client| {
        // Subscribed before the changes, so no state change they cause is missed.
        let mut changes = client.unit_changes().await?;
        for u in &units {
            u.submit(client, c.replace).await?;
            if let Some(verb) = verb {
                client.unit_verb(&u.name, verb).await?;
            }
        }
        if c.no_block || ready == Ready::Now {
            return Ok(ExitCode::SUCCESS);
        }
        let names: Vec<&str> = units.iter().map(|u| u.name.as_str()).collect();
        let deadline = Duration::from_secs(c.block_timeout);
        wait(client, &mut changes, &names, ready, deadline).await?;
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

/// Whether unit `name` is in the state `ready` waits for, by list-units' rows.
fn reached(rows: &[UnitState], name: &str, ready: Ready) -> bool {
    let mine: Vec<&UnitState> = rows.iter().filter(|r| r.unit == name).collect();
    match ready {
        Ready::Now => true,
        Ready::Gone => mine.is_empty(),
        Ready::Active => !mine.is_empty() && mine.iter().all(|r| r.active == "active"),
        Ready::Loaded => {
            !mine.is_empty()
                && mine.iter().all(|r| {
                    r.load == "loaded" && matches!(r.active.as_str(), "inactive" | "failed")
                })
        }
    }
}

/// Waits (fleetctl's blocking) until every unit of `names` reached `ready`, or fails naming
/// those that did not (with the scheduler's reason when it has one).
async fn wait(
    client: &Client,
    changes: &mut UnitChanges,
    names: &[&str],
    ready: Ready,
    deadline: Duration,
) -> Result<()> {
    let until = Instant::now() + deadline;
    let mut period = Duration::from_millis(100);
    loop {
        let rows = client.list_units().await?;
        let pending: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !reached(&rows, n, ready))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let files = client.list_unit_files().await.unwrap_or_default();
            let why: Vec<String> = pending
                .iter()
                .map(|n| match files.iter().find(|f| f.unit == *n) {
                    Some(f) if !f.unschedulable.is_empty() => format!("{n} ({})", f.unschedulable),
                    _ => (*n).to_owned(),
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
        changes.next(period.min(left)).await;
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
        change(global, args.change, Some(Verb::Load), Ready::Loaded)
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
        change(global, args.change, Some(Verb::Start), Ready::Active)
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
        change(global, args.change, Some(Verb::Stop), Ready::Loaded)
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
        change(global, args.change, Some(Verb::Unload), Ready::Gone)
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
        let units = UnitArg::parse_all(&args.units)?;
        with_client(global, async |client| {
            for u in &units {
                client.destroy_unit(&u.name).await?;
                println!("Destroyed {}", u.name);
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// `flotctl restart`.
pub(crate) mod restart {
    use super::*;

    /// Restart started units one machine at a time (rolling): each machine once the previous
    /// one runs the unit again
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// Unit names (a template: every started instance of it)
        #[arg(required = true, value_name = "UNIT")]
        units: Vec<String>,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let units = UnitArg::parse_all(&args.units)?;
        with_client(global, async |client| {
            for u in &units {
                if client.restart_unit(&u.name).await? {
                    println!("Restarting {}", u.name);
                } else {
                    println!("Restarting {} (already under way)", u.name);
                }
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
pub(crate) fn print_table(
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

/// `-` for an empty cell.
fn cell(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

/// A content hash as fleetctl shows it: 7 digits, or whole with `--full`.
fn hash(h: &str, full: bool) -> String {
    if full {
        cell(h)
    } else {
        cell(&h.chars().take(7).collect::<String>())
    }
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
        /// Do not shorten hashes
        #[arg(long)]
        full: bool,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let units = with_client(global, async |c| Ok(c.list_units().await?))?;
        let rows: Vec<_> = units
            .iter()
            .map(|u| {
                vec![
                    ("unit", cell(&u.unit)),
                    ("machine", cell(&u.machine)),
                    ("load", cell(&u.load)),
                    ("active", cell(&u.active)),
                    ("sub", cell(&u.sub)),
                    ("desired", cell(&u.desired)),
                    (
                        "pid",
                        if u.main_pid == 0 {
                            "-".to_owned()
                        } else {
                            u.main_pid.to_string()
                        },
                    ),
                    ("result", cell(&u.result)),
                    ("hash", hash(&u.hash, args.full)),
                ]
            })
            .collect();
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(units))
    }
}

/// `flotctl list-unit-files`.
pub(crate) mod list_unit_files {
    use super::*;

    const ALL: &[&str] = &["unit", "hash", "dstate", "state", "target", "reason"];
    const DEFAULT: &[&str] = &["unit", "hash", "dstate", "state", "target"];

    /// List the unit files of the cluster with their desired and current states
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        table: TableArgs,
        /// Do not shorten hashes
        #[arg(long)]
        full: bool,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let files: Vec<UnitFile> = with_client(global, async |c| Ok(c.list_unit_files().await?))?;
        let rows: Vec<_> = files
            .iter()
            .map(|f| {
                vec![
                    ("unit", cell(&f.unit)),
                    ("hash", hash(&f.hash, args.full)),
                    ("dstate", cell(&f.desired)),
                    ("state", cell(&f.state)),
                    ("target", cell(&f.machines.join(","))),
                    ("reason", cell(&f.unschedulable)),
                ]
            })
            .collect();
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(files))
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
        let machines = with_client(global, async |c| Ok(c.list_machines().await?))?;
        let rows: Vec<_> = machines
            .iter()
            .map(|m| {
                let id = if args.full {
                    cell(&m.machine_id)
                } else {
                    format!("{}...", m.machine_id.chars().take(8).collect::<String>())
                };
                let metadata: Vec<String> =
                    m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![
                    ("machine", id),
                    ("name", cell(&m.name)),
                    ("ip", cell(&m.addr)),
                    ("metadata", cell(&metadata.join(","))),
                    ("status", cell(&m.status)),
                ]
            })
            .collect();
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(machines))
    }
}

/// Prints what `systemctl status` or `journalctl` printed on the unit's machine.
fn print_output(global: &Global, out: &flotilla_dbus::agent1::UnitOutput) -> ExitCode {
    if global.output == Output::Json {
        println!("{}", json!(out));
    } else {
        print!("{}", out.output);
    }
    ExitCode::SUCCESS
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
        let out = with_client(global, async |c| Ok(c.unit_status(&name).await?))?;
        Ok(print_output(global, &out))
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
        /// Keep printing new entries as they come (until interrupted)
        #[arg(long, short = 'f')]
        follow: bool,
    }

    /// How often a follower asks for new entries.
    const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let name = UnitArg::parse(&args.unit)?.name;
        if !args.follow {
            let out = with_client(global, async |c| {
                Ok(c.journal_lines(&name, args.lines).await?)
            })?;
            return Ok(print_output(global, &out));
        }
        // Following: ask for what came after the last cursor, once a second (the journal is
        // read on the unit's machine, which may change when the unit moves).
        with_client(global, async |c| {
            let mut cursor = String::new();
            loop {
                let out = c.journal_after(&name, &cursor, args.lines).await?;
                let (text, next) = split_cursor(&out.output);
                if global.output == Output::Json {
                    for line in text.lines() {
                        println!("{}", json!({ "machine": out.machine, "line": line }));
                    }
                } else {
                    print!("{text}");
                }
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                if let Some(next) = next {
                    cursor = next;
                }
                tokio::time::sleep(FOLLOW_EVERY).await;
            }
        })
    }

    /// journalctl's output without its trailing `-- cursor: C` line, and that cursor.
    pub(super) fn split_cursor(output: &str) -> (String, Option<String>) {
        let mut text = String::new();
        let mut cursor = None;
        for line in output.lines() {
            match line.strip_prefix("-- cursor: ") {
                Some(c) => cursor = Some(c.trim().to_owned()),
                None if line == "-- No entries --" => {}
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        (text, cursor)
    }
}

/// `flotctl run --machine MACHINE IMAGE [CMD...]`: runs the command once on another machine,
/// as a oneshot image unit pinned there (`[X-Fleet] MachineID=`), prints its journal once it
/// ended and destroys it. Exits 0 when the command succeeded.
pub(crate) fn run_elsewhere(
    global: &Global,
    machine: &str,
    image: &str,
    command: &[String],
    name: Option<&str>,
) -> Result<ExitCode> {
    with_client(global, async |c| {
        let machines = c.list_machines().await?;
        let Some(target) = machines.iter().find(|m| m.name == machine) else {
            let known: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
            bail!(
                "no machine '{machine}' in the cluster (machines: {})",
                known.join(", ")
            );
        };
        let name = match name {
            Some(n) => n.to_owned(),
            None => format!("run-{:x}.service", run_id()),
        };
        let text = one_off_unit(image, command, &target.machine_id);
        c.submit_unit(&name, &text, false).await?;
        c.unit_verb(&name, Verb::Start).await?;
        let mut changes = c.unit_changes().await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let ended = loop {
            let row = c
                .list_units()
                .await?
                .into_iter()
                .find(|r| r.unit == name && r.machine == machine);
            if let Some(r) = row
                && (r.active == "failed" || (r.active == "active" && r.sub == "exited"))
            {
                break r;
            }
            if Instant::now() > deadline {
                let _ = c.destroy_unit(&name).await;
                bail!("{name} did not end on {machine} within 10 minutes; destroyed it");
            }
            changes.next(Duration::from_secs(1)).await;
        };
        let out = c.journal_lines(&name, MAX_RUN_LINES).await;
        c.destroy_unit(&name).await?;
        print!("{}", out?.output);
        Ok(if ended.active == "active" {
            ExitCode::SUCCESS
        } else {
            eprintln!("flotctl: {name} failed on {machine} ({})", ended.result);
            ExitCode::FAILURE
        })
    })
}

/// The most journal lines `run --machine` prints.
const MAX_RUN_LINES: u32 = 10_000;

/// A name for a one-off unit: unique enough for one cluster (time and process).
fn run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// The unit of a one-off run of `command` (the arguments after the image's entrypoint, as
/// `docker run` takes them; empty: the image's own cmd) in `image` on the machine `machine_id`:
/// a oneshot that stays active once it succeeded, so its end is visible.
fn one_off_unit(image: &str, command: &[String], machine_id: &str) -> String {
    let mut text = format!(
        "[Unit]\nDescription=flotctl run {image}\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n\n[X-Fleet]\nMachineID={machine_id}\n\n[X-Flotilla]\nImage={image}\n"
    );
    if !command.is_empty() {
        let words: Vec<String> = command.iter().map(|w| quote_word(w)).collect();
        text.push_str(&format!("Args={}\n", words.join(" ")));
    }
    text
}

/// `word` as one word of `[X-Flotilla] Args=`: double-quoted, with `\` and `"` escaped (the
/// words of `Args=` are taken literally: no variable or specifier expansion).
fn quote_word(word: &str) -> String {
    let mut out = String::from("\"");
    for c in word.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(machine: &str, load: &str, active: &str) -> UnitState {
        UnitState {
            unit: "hello.service".into(),
            machine: machine.into(),
            desired: "launched".into(),
            load: load.into(),
            active: active.into(),
            sub: String::new(),
            hash: String::new(),
            result: String::new(),
            main_pid: 0,
            since_ms: 0,
        }
    }

    #[test]
    fn active_means_active_on_every_assigned_machine() {
        let rows = [row("a", "loaded", "active")];
        assert!(reached(&rows, "hello.service", Ready::Active));
        assert!(!reached(&rows, "hello.service", Ready::Loaded));
        assert!(!reached(&rows, "hello.service", Ready::Gone));
        let half = [row("a", "loaded", "active"), row("b", "", "")];
        assert!(!reached(&half, "hello.service", Ready::Active));
        assert!(!reached(&[], "hello.service", Ready::Active));
        assert!(reached(&[], "hello.service", Ready::Gone));
        let stopped = [row("a", "loaded", "failed")];
        assert!(reached(&stopped, "hello.service", Ready::Loaded));
        assert!(reached(&rows, "other.service", Ready::Gone));
    }

    #[test]
    fn a_one_off_unit_runs_the_command_word_for_word() {
        let cmd: Vec<String> = ["/bin/sh", "-c", "echo \"$HOME\" 50% \\ done"]
            .map(String::from)
            .to_vec();
        let text = one_off_unit("r:5000/busybox:v1", &cmd, "abc");
        let v = flotilla_units::verify("run-1.service", &text, &[]);
        assert!(
            !flotilla_units::diagnostic::has_errors(&v.diagnostics),
            "{:?}",
            v.diagnostics
        );
        // The words arrive as they were given (the agent escapes `$` and `%` when it writes the
        // ExecStart= that runs them after the image's entrypoint).
        assert_eq!(v.flotilla.args.as_deref(), Some(&cmd[..]));
        assert!(v.unit.value("Service", "ExecStart").is_none());
        assert!(text.contains("MachineID=abc\n") && text.contains("Image=r:5000/busybox:v1\n"));
        // no command: the image's own
        assert!(!one_off_unit("i", &[], "abc").contains("Args"));
    }

    #[test]
    fn a_followed_journal_loses_its_cursor_line() {
        let (text, cursor) = journal::split_cursor("a\nb\n-- cursor: s=1;i=2\n");
        assert_eq!(
            (text.as_str(), cursor.as_deref()),
            ("a\nb\n", Some("s=1;i=2"))
        );
        let (text, cursor) = journal::split_cursor("-- No entries --\n");
        assert_eq!((text.as_str(), cursor), ("", None));
    }

    #[test]
    fn a_path_names_its_unit_by_file_name() {
        let u = UnitArg::parse("/nonexistent/dir/hello.service").unwrap();
        assert_eq!(u.name, "hello.service");
        assert!(u.file.is_none());
        // submitting it says the file is missing, not that the unit is unknown
        assert!(u.missing.is_some());
        assert!(UnitArg::parse("hello.service").unwrap().missing.is_none());
        // a Quadlet file is the service it becomes
        assert_eq!(
            UnitArg::parse("/nonexistent/web.container").unwrap().name,
            "web.service"
        );
    }

    #[test]
    fn hashes_are_shortened_unless_full_and_empty_cells_are_dashes() {
        assert_eq!(hash("0123456789abcdef", false), "0123456");
        assert_eq!(hash("0123456789abcdef", true), "0123456789abcdef");
        assert_eq!(hash("", false), "-");
        assert_eq!(cell(""), "-");
    }
}
