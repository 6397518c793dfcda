//! The image commands: `pull`, `images`, `rmi` and `run`, against the image store of the local
//! agent over D-Bus (`PullImage` with its `ImagePullProgress` signals, `ListImages`,
//! `RemoveImage`), or of the agent at `--endpoint` through its HTTP API
//! (`/flotilla/v1/images`), as [`Client::connect`] chooses for every command.
//!
//! `run` starts a transient unit on this machine with the real `systemd-run`, with the
//! properties the agent gives (`/flotilla/v1/images/service`): the same root directory, sandbox,
//! environment, working directory and user as the agent's drop-ins for `Image=` units. It
//! therefore needs the agent of this machine: the image's root file system is a local path.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::Client;
use crate::units::{TableArgs, print_table};
use crate::{Global, Output};

/// How long a pull may take.
const PULL_DEADLINE: Duration = Duration::from_secs(3600);
/// How long any other request may take.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// The local agent's HTTP API, when `--endpoint` is not given.
const LOCAL_ENDPOINT: &str = "http://127.0.0.1:2379";

/// Where the image commands go: the local agent's bus object, or an agent's HTTP API.
enum Images {
    Bus(flotilla_dbus::agent1::Agent1Proxy<'static>),
    Http(Http),
}

impl Images {
    async fn connect(global: &Global) -> Result<Images> {
        Ok(match Client::connect(global).await? {
            Client::Bus(p) => Images::Bus(p),
            Client::Http { http, endpoint } => Images::Http(Http {
                client: http,
                endpoint,
            }),
        })
    }

    /// Every image of the store, in the HTTP API's JSON shape.
    async fn list(&self) -> Result<Vec<Value>> {
        match self {
            Images::Bus(p) => Ok(p
                .list_images()
                .await
                .map_err(crate::client::Error::from)?
                .iter()
                .map(record_json)
                .collect()),
            Images::Http(http) => {
                let body = http
                    .send(http.client.get(http.url("/flotilla/v1/images")))
                    .await?;
                Ok(body["images"].as_array().cloned().unwrap_or_default())
            }
        }
    }

    /// Pulls `image`, showing its layers' progress on `out`; the image as JSON.
    async fn pull(&self, image: &str, show: Show, out: &mut impl Write) -> Result<Value> {
        let p = match self {
            Images::Http(http) => return pull_image(http, image, show, out).await,
            Images::Bus(p) => p,
        };
        let mut signals = p
            .receive_image_pull_progress()
            .await
            .context("cannot subscribe to ImagePullProgress")?;
        let pull = p.pull_image(image);
        tokio::pin!(pull);
        let mut layers = Layers::default();
        let mut update = |args: flotilla_dbus::agent1::ImagePullProgressArgs<'_>| -> Result<()> {
            if args.reference() != &image {
                return Ok(());
            }
            let line = json!({
                "layer": args.layer(), "state": args.state(),
                "done": args.done(), "total": args.total(),
            });
            layers
                .update(out, show, &line)
                .context("cannot write the progress")
        };
        let record = loop {
            tokio::select! {
                biased;
                Some(signal) = futures::StreamExt::next(&mut signals) => {
                    if let Ok(args) = signal.args() {
                        update(args)?;
                    }
                }
                done = &mut pull => break done.map_err(crate::client::Error::from)?,
            }
        };
        // The signals sent before the reply, still queued.
        while let Some(Some(signal)) =
            futures::FutureExt::now_or_never(futures::StreamExt::next(&mut signals))
        {
            if let Ok(args) = signal.args() {
                update(args)?;
            }
        }
        Ok(record_json(&record))
    }

    /// Removes every image no unit on this machine uses; the API's `{"removed": [...]}`.
    async fn prune(&self) -> Result<Value> {
        match self {
            Images::Bus(p) => {
                let removed = p.prune_images().await.map_err(crate::client::Error::from)?;
                Ok(json!({ "removed": removed.iter().map(record_json).collect::<Vec<_>>() }))
            }
            Images::Http(http) => {
                let req = http
                    .client
                    .delete(http.url("/flotilla/v1/images?unused=true"));
                http.send(req).await
            }
        }
    }

    /// Removes `image`; the API's `{"removed": ...}`.
    async fn remove(&self, image: &str) -> Result<Value> {
        match self {
            Images::Bus(p) => {
                let record = p
                    .remove_image(image)
                    .await
                    .map_err(crate::client::Error::from)?;
                Ok(json!({ "removed": record_json(&record) }))
            }
            Images::Http(http) => {
                let req = http
                    .client
                    .delete(http.url(&format!("/flotilla/v1/images?image={}", encode(image))));
                http.send(req).await
            }
        }
    }
}

/// A bus `ImageRecord` in the HTTP API's JSON shape.
fn record_json(r: &flotilla_dbus::agent1::ImageRecord) -> Value {
    json!({
        "reference": r.reference,
        "repository": r.repository,
        "tag": r.tag,
        "digest": r.digest,
        "config": r.config,
        "size": r.size,
        "pulledAt": r.pulled_ms,
    })
}

/// An agent's HTTP API.
struct Http {
    client: reqwest::Client,
    endpoint: String,
}

impl Http {
    /// The agent at `--endpoint`, else the local one, over HTTP.
    async fn connect(global: &Global) -> Result<Http> {
        let mut global = global.clone();
        global
            .endpoint
            .get_or_insert_with(|| LOCAL_ENDPOINT.to_owned());
        match Client::connect(&global).await? {
            Client::Http { http, endpoint } => Ok(Http {
                client: http,
                endpoint,
            }),
            Client::Bus(_) => bail!("the image commands need an agent's HTTP API"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    /// Sends `req`; a non-2xx answer is an error with the agent's message.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value> {
        let reply = req
            .timeout(REQUEST_DEADLINE)
            .send()
            .await
            .with_context(|| format!("cannot reach the agent at {}", self.endpoint))?;
        let status = reply.status();
        let body: Value = reply
            .json()
            .await
            .with_context(|| format!("{} sent a reply that is not JSON", self.endpoint))?;
        if !status.is_success() {
            bail!(
                "{}",
                body["error"]
                    .as_str()
                    .map_or_else(|| format!("the agent answered {status}"), str::to_owned)
            );
        }
        Ok(body)
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// How pull progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Show {
    /// Nothing (JSON output).
    Nothing,
    /// A line per layer state change (not a terminal).
    Lines,
    /// A line per layer, redrawn in place (a terminal).
    Bars,
}

/// The layers of a pull as shown so far.
#[derive(Default)]
struct Layers {
    order: Vec<String>,
    state: BTreeMap<String, (String, u64, u64)>,
    drawn: usize,
}

impl Layers {
    fn update(&mut self, out: &mut impl Write, show: Show, line: &Value) -> std::io::Result<()> {
        let digest = line["layer"].as_str().unwrap_or_default().to_owned();
        let state = line["state"].as_str().unwrap_or_default().to_owned();
        let done = line["done"].as_u64().unwrap_or(0);
        let total = line["total"].as_u64().unwrap_or(0);
        if !self.state.contains_key(&digest) {
            self.order.push(digest.clone());
        }
        let previous = self
            .state
            .insert(digest.clone(), (state.clone(), done, total));
        match show {
            Show::Nothing => Ok(()),
            Show::Lines => {
                if previous.is_none_or(|(s, _, _)| s != state) {
                    writeln!(out, "{}: {state} ({})", short(&digest), size(total))?;
                }
                Ok(())
            }
            Show::Bars => self.draw(out),
        }
    }

    fn draw(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.drawn > 0 {
            // Back to the first layer's line.
            write!(out, "\x1b[{}F", self.drawn)?;
        }
        for d in &self.order {
            let (state, done, total) = &self.state[d];
            let width = 30;
            let filled = if *total == 0 {
                width
            } else {
                (*done as usize * width / *total as usize).min(width)
            };
            writeln!(
                out,
                "\x1b[2K{}: {:<11} [{}{}] {} / {}",
                short(d),
                state,
                "=".repeat(filled),
                " ".repeat(width - filled),
                size(*done),
                size(*total)
            )?;
        }
        self.drawn = self.order.len();
        out.flush()
    }
}

/// `text` percent-encoded for a query string (everything but RFC 3986's unreserved bytes).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// `sha256:0123456789ab` (12 hex digits, as `docker images` shows ids).
fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    hex.chars().take(12).collect()
}

/// Bytes for people: `812 B`, `1.4 kB`, `3.2 MB`.
fn size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Asks the agent to pull `image`, showing progress on `out`; the image as the API shows it.
async fn pull_image(http: &Http, image: &str, show: Show, out: &mut impl Write) -> Result<Value> {
    let mut reply = http
        .client
        .post(http.url("/flotilla/v1/images/pull"))
        .timeout(PULL_DEADLINE)
        .json(&json!({ "image": image }))
        .send()
        .await
        .with_context(|| format!("cannot reach the agent at {}", http.endpoint))?;
    if !reply.status().is_success() {
        let status = reply.status();
        let body: Value = reply.json().await.unwrap_or(Value::Null);
        bail!(
            "{}",
            body["error"]
                .as_str()
                .map_or_else(|| format!("the agent answered {status}"), str::to_owned)
        );
    }
    let mut layers = Layers::default();
    let mut pending = Vec::new();
    loop {
        let chunk = reply
            .chunk()
            .await
            .with_context(|| format!("the pull of {image} was cut off by the agent"))?;
        let Some(chunk) = chunk else { break };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line: Value = serde_json::from_slice(&line)
                .with_context(|| format!("{} sent a line that is not JSON", http.endpoint))?;
            if let Some(e) = line["error"].as_str() {
                bail!("{e}");
            }
            if !line["image"].is_null() {
                return Ok(line["image"].clone());
            }
            layers
                .update(out, show, &line)
                .context("cannot write the progress")?;
        }
    }
    bail!("the agent ended the pull of {image} without a result")
}

fn show(global: &Global) -> Show {
    match global.output {
        Output::Json => Show::Nothing,
        Output::Text if std::io::stdout().is_terminal() => Show::Bars,
        Output::Text => Show::Lines,
    }
}

/// `flotctl pull`.
pub(crate) mod pull {
    use super::*;

    /// Pull an image into this machine's store (like `docker pull`)
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// The image: [HOST[:PORT]/]NAME[:TAG][@DIGEST]
        image: String,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let image = runtime()?.block_on(async {
            let images = Images::connect(global).await?;
            images
                .pull(&args.image, show(global), &mut std::io::stdout())
                .await
        })?;
        if global.output == Output::Json {
            println!("{image}");
        } else {
            println!(
                "Pulled {} ({})",
                image["reference"].as_str().unwrap_or(&args.image),
                image["digest"].as_str().unwrap_or("-")
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `flotctl images`.
pub(crate) mod list {
    use super::*;

    const ALL: &[&str] = &["repository", "tag", "digest", "size", "reference", "pulled"];
    const DEFAULT: &[&str] = &["repository", "tag", "digest", "size"];

    /// List the images in this machine's store
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        #[command(flatten)]
        table: TableArgs,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        let images = runtime()?.block_on(async { Images::connect(global).await?.list().await })?;
        let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let rows: Vec<_> = images
            .iter()
            .map(|i| {
                vec![
                    ("repository", text(&i["repository"])),
                    ("tag", text(&i["tag"])),
                    ("digest", short(i["digest"].as_str().unwrap_or("-"))),
                    ("size", size(i["size"].as_u64().unwrap_or(0))),
                    ("reference", text(&i["reference"])),
                    (
                        "pulled",
                        i["pulledAt"].as_u64().map_or("-".into(), |t| t.to_string()),
                    ),
                ]
            })
            .collect();
        print_table(global, &args.table, ALL, DEFAULT, &rows, json!(images))
    }
}

/// `flotctl rmi`.
pub(crate) mod rmi {
    use super::*;

    /// Remove images from this machine's store (refused while a unit here uses one)
    #[derive(Debug, clap::Args)]
    pub(crate) struct Args {
        /// Images: references, digests or digest prefixes
        #[arg(required_unless_present = "unused", value_name = "IMAGE")]
        images: Vec<String>,
        /// Remove every image no unit on this machine uses (garbage collection)
        #[arg(long, conflicts_with = "images")]
        unused: bool,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        runtime()?.block_on(async {
            let images = Images::connect(global).await?;
            if args.unused {
                let body = images.prune().await?;
                if global.output == Output::Json {
                    println!("{body}");
                } else {
                    for i in body["removed"].as_array().into_iter().flatten() {
                        println!("Removed {}", i["reference"].as_str().unwrap_or("-"));
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            for image in &args.images {
                let body = images.remove(image).await?;
                if global.output == Output::Json {
                    println!("{body}");
                } else {
                    println!(
                        "Removed {}",
                        body["removed"]["reference"].as_str().unwrap_or(image)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// `flotctl run`.
pub(crate) mod run {
    use super::*;

    /// Run a command in an image as a transient unit on this machine (like `docker run`), or
    /// once on another machine with --machine
    #[derive(Debug, clap::Args)]
    #[command(trailing_var_arg = true)]
    pub(crate) struct Args {
        /// Remove the unit when it ends, even if it failed
        #[arg(long)]
        pub(super) rm: bool,
        /// Keep standard input open (with -t: an interactive terminal)
        #[arg(short = 'i', long)]
        pub(super) interactive: bool,
        /// Give the command a terminal (systemd-run --pty)
        #[arg(short = 't', long)]
        pub(super) tty: bool,
        /// The unit's name (default: chosen by systemd)
        #[arg(long, value_name = "UNIT")]
        pub(super) name: Option<String>,
        /// Run it on this machine of the cluster instead (a oneshot unit placed there, its
        /// journal printed once it ended, then destroyed; not with -i or -t)
        #[arg(long, value_name = "MACHINE", conflicts_with_all = ["interactive", "tty"])]
        pub(super) machine: Option<String>,
        /// The image: [HOST[:PORT]/]NAME[:TAG][@DIGEST]
        pub(super) image: String,
        /// The arguments after the image's entrypoint, in place of its cmd, as with `docker
        /// run` (an image without an entrypoint runs them as its command; none: its cmd)
        #[arg(allow_hyphen_values = true, value_name = "CMD")]
        pub(super) command: Vec<String>,
    }

    pub(crate) fn run(global: &Global, args: Args) -> Result<ExitCode> {
        if let Some(machine) = &args.machine {
            return crate::units::run_elsewhere(
                global,
                machine,
                &args.image,
                &args.command,
                args.name.as_deref(),
            );
        }
        let spec = runtime()?.block_on(async {
            let http = Http::connect(global).await?;
            let show = if std::io::stderr().is_terminal() {
                Show::Bars
            } else {
                Show::Nothing
            };
            pull_image(&http, &args.image, show, &mut std::io::stderr()).await?;
            http.send(
                http.client
                    .post(http.url("/flotilla/v1/images/service"))
                    .json(&json!({ "image": args.image, "command": args.command })),
            )
            .await
        })?;
        let argv = systemd_run_args(&spec, &args)?;
        let mut systemd_run = std::process::Command::new("systemd-run");
        systemd_run.args(&argv);
        if !args.interactive && !args.tty {
            systemd_run.stdin(std::process::Stdio::null());
        }
        let status = systemd_run
            .status()
            .context("cannot run systemd-run (is systemd installed?)")?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => ExitCode::FAILURE,
        })
    }

    /// The arguments of `systemd-run` for `spec` (the agent's `ServiceSpec`).
    pub(super) fn systemd_run_args(spec: &Value, args: &Args) -> Result<Vec<String>> {
        let root = spec["root_directory"]
            .as_str()
            .context("the agent gave no root directory")?;
        let mut argv = vec!["--quiet".to_owned()];
        if args.tty {
            argv.push("--pty".into());
        } else {
            // The command's output to this terminal (its input too, with -i).
            argv.extend(["--pipe".into(), "--wait".into()]);
        }
        if args.rm {
            argv.push("--collect".into());
        }
        if let Some(n) = &args.name {
            argv.push(format!("--unit={n}"));
        }
        argv.push(format!(
            "--description=flotctl run {}",
            spec["image"].as_str().unwrap_or(&args.image)
        ));
        argv.push(format!("--property=RootDirectory={root}"));
        for kv in spec["sandbox"].as_array().into_iter().flatten() {
            let (Some(k), Some(v)) = (kv[0].as_str(), kv[1].as_str()) else {
                continue;
            };
            argv.push(format!("--property={k}={v}"));
        }
        for e in spec["environment"].as_array().into_iter().flatten() {
            if let Some(e) = e.as_str() {
                argv.push(format!("--setenv={e}"));
            }
        }
        if let Some(w) = spec["working_directory"].as_str() {
            argv.push(format!("--working-directory={w}"));
        }
        if let Some(u) = spec["user"].as_str() {
            argv.push(format!("--uid={u}"));
        }
        if let Some(g) = spec["group"].as_str() {
            argv.push(format!("--gid={g}"));
        }
        let command: Vec<String> = spec["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        if command.is_empty() {
            bail!("the agent gave no command to run");
        }
        // The command is not an option of systemd-run's own.
        argv.push("--".into());
        argv.extend(command);
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ids_for_people() {
        assert_eq!(size(812), "812 B");
        assert_eq!(size(1_430), "1.4 kB");
        assert_eq!(size(3_200_000), "3.2 MB");
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(encode("h:5000/a/b:v1@x"), "h%3A5000%2Fa%2Fb%3Av1%40x");
    }

    #[test]
    fn run_passes_the_agents_properties_to_systemd_run() {
        let spec = json!({
            "image": "10.0.0.1:5000/busybox:v1",
            "root_directory": "/var/lib/flotilla/images/rootfs/abc",
            "sandbox": [["ProtectSystem", "strict"], ["PrivateTmp", "yes"]],
            "environment": ["PATH=/bin", "GREETING=hello world"],
            "working_directory": "/data",
            "user": null,
            "group": null,
            "command": ["/bin/sh", "-c", "echo $GREETING"],
        });
        let args = run::Args {
            rm: true,
            interactive: false,
            tty: false,
            name: None,
            machine: None,
            image: "busybox".into(),
            command: vec![],
        };
        let argv = run::systemd_run_args(&spec, &args).unwrap();
        assert_eq!(
            argv,
            [
                "--quiet",
                "--pipe",
                "--wait",
                "--collect",
                "--description=flotctl run 10.0.0.1:5000/busybox:v1",
                "--property=RootDirectory=/var/lib/flotilla/images/rootfs/abc",
                "--property=ProtectSystem=strict",
                "--property=PrivateTmp=yes",
                "--setenv=PATH=/bin",
                "--setenv=GREETING=hello world",
                "--working-directory=/data",
                "--",
                "/bin/sh",
                "-c",
                "echo $GREETING",
            ]
        );
    }

    #[test]
    fn terminal_progress_redraws_a_line_per_layer() {
        let mut out = Vec::new();
        let mut layers = Layers::default();
        for (layer, done) in [
            ("sha256:aaaaaaaaaaaaaaaa", 5),
            ("sha256:bbbbbbbbbbbbbbbb", 10),
        ] {
            let line = json!({ "layer": layer, "state": "downloading", "done": done, "total": 10 });
            layers.update(&mut out, Show::Bars, &line).unwrap();
        }
        let shown = String::from_utf8(out).unwrap();
        let frames: Vec<&str> = shown.split("\x1b[1F").collect();
        assert_eq!(frames.len(), 2, "{shown:?}");
        assert!(
            frames[1].starts_with(
                "\x1b[2Kaaaaaaaaaaaa: downloading [===============               ] 5 B / 10 B\n"
            ) && frames[1].ends_with(
                "bbbbbbbbbbbb: downloading [==============================] 10 B / 10 B\n"
            ),
            "{shown:?}"
        );
    }

    #[test]
    fn plain_progress_is_a_line_per_state_change() {
        let mut out = Vec::new();
        let mut layers = Layers::default();
        for (state, done) in [("downloading", 0), ("downloading", 5), ("downloaded", 10)] {
            let line = json!({ "layer": "sha256:aaaaaaaaaaaaaaaa", "state": state, "done": done, "total": 10 });
            layers.update(&mut out, Show::Lines, &line).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "aaaaaaaaaaaa: downloading (10 B)\naaaaaaaaaaaa: downloaded (10 B)\n"
        );
    }
}
