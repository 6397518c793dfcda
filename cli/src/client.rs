//! The one way commands reach an agent: `org.flotilla.Agent1` on the local system bus by default,
//! or any agent's HTTP API with `--endpoint URL` (`FLOTCTL_ENDPOINT`), e.g. from a laptop. Both
//! give the same types (`flotilla_dbus::agent1`'s), so a command prints the same either way.

use std::collections::HashMap;
use std::time::Duration;

use flotilla_dbus::agent1::{
    self, Agent1Proxy, KeyNode, MachineRecord, MemberRecord, UnitFile, UnitOutput, UnitState,
};
use futures::StreamExt;
use serde_json::{Value, json};
use zbus::Variant;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The agent could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The agent refused or failed the call: the error's name (`KeyNotFound`, ...) and a line
    /// for a person.
    #[error("{message}")]
    Refused {
        /// The error's short name (the last part of its D-Bus name).
        name: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    fn refused(name: &str, message: impl Into<String>) -> Self {
        Error::Refused {
            name: name.to_string(),
            message: message.into(),
        }
    }
}

impl From<agent1::Error> for Error {
    fn from(e: agent1::Error) -> Self {
        match e {
            agent1::Error::ZBus(e) => match bus_error(&e) {
                Some((name, desc)) if name == "org.freedesktop.DBus.Error.AccessDenied" => {
                    Error::Refused {
                        name: "AccessDenied".into(),
                        message: format!(
                            "the bus policy refuses this call: it changes the cluster and needs root or the group {} ({desc})",
                            agent1::GROUP
                        ),
                    }
                }
                Some((name, _))
                    if name == "org.freedesktop.DBus.Error.ServiceUnknown"
                        || name == "org.freedesktop.DBus.Error.NameHasNoOwner" =>
                {
                    Error::Unreachable(format!(
                        "no agent on the system bus ({} has no owner): is flotillad running here? Or give --endpoint URL",
                        agent1::NAME
                    ))
                }
                _ => Error::Unreachable(format!("the local agent did not answer over D-Bus: {e}")),
            },
            other => {
                let name = other.name();
                let short = name.rsplit('.').next().unwrap_or_default().to_string();
                Error::Refused {
                    name: short,
                    message: other.message(),
                }
            }
        }
    }
}

/// The name and description of an error reply from the bus or the agent.
fn bus_error(e: &zbus::Error) -> Option<(String, String)> {
    match e {
        zbus::Error::MethodError(name, desc, _) => {
            Some((name.to_string(), desc.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(e) => {
            let e: &zbus::fdo::Error = e;
            Some((
                zbus::DBusError::name(e).to_string(),
                zbus::DBusError::description(e)
                    .unwrap_or_default()
                    .to_string(),
            ))
        }
        _ => None,
    }
}

/// Options of a key write, as etcd v2 names them.
#[derive(Debug, Clone, Default)]
pub(crate) struct SetOptions {
    pub(crate) ttl: Option<u64>,
    pub(crate) dir: bool,
    pub(crate) prev_exist: Option<bool>,
    pub(crate) prev_value: Option<String>,
    pub(crate) prev_index: Option<u64>,
}

/// Options of a key deletion.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeleteOptions {
    pub(crate) dir: bool,
    pub(crate) recursive: bool,
    pub(crate) prev_value: Option<String>,
    pub(crate) prev_index: Option<u64>,
}

/// A connection to an agent.
pub(crate) enum Client {
    /// The local agent on the system bus.
    Bus(Agent1Proxy<'static>),
    /// An agent's HTTP API.
    Http {
        http: reqwest::Client,
        endpoint: String,
    },
}

impl Client {
    /// The agent `global` names: `--endpoint` over HTTP, else the local one over D-Bus.
    pub(crate) async fn connect(global: &crate::Global) -> Result<Client, Error> {
        match &global.endpoint {
            Some(endpoint) => {
                let builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(2));
                let http = crate::ca::trust(builder, global)
                    .map_err(Error::Unreachable)?
                    .build()
                    .map_err(|e| Error::Unreachable(format!("cannot build an HTTP client: {e}")))?;
                Ok(Client::Http {
                    http,
                    endpoint: endpoint.trim_end_matches('/').to_string(),
                })
            }
            None => {
                let hint = "is flotillad running here? Or give --endpoint URL (FLOTCTL_ENDPOINT) to use an agent's HTTP API";
                let bus = zbus::Connection::system().await.map_err(|e| {
                    Error::Unreachable(format!("cannot connect to the system bus: {e}; {hint}"))
                })?;
                let proxy = Agent1Proxy::builder(&bus)
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                    .map_err(|e| {
                        Error::Unreachable(format!("cannot reach {}: {e}; {hint}", agent1::NAME))
                    })?;
                Ok(Client::Bus(proxy))
            }
        }
    }

    /// A key or directory.
    pub(crate) async fn get_key(&self, key: &str, quorum: bool) -> Result<KeyNode, Error> {
        match self {
            Client::Bus(p) => Ok(p.get_key(key, quorum).await?),
            Client::Http { .. } => {
                let mut q = vec![("sorted", "true".to_string())];
                if quorum {
                    q.push(("quorum", "true".into()));
                }
                let body = self.keys(reqwest::Method::GET, key, &q).await?;
                Ok(node(&body["node"]))
            }
        }
    }

    /// What is under a directory (pre-order, sorted), or the key itself.
    pub(crate) async fn list_keys(
        &self,
        key: &str,
        recursive: bool,
        quorum: bool,
    ) -> Result<Vec<KeyNode>, Error> {
        match self {
            Client::Bus(p) => Ok(p.list_keys(key, recursive, quorum).await?),
            Client::Http { .. } => {
                let mut q = vec![("sorted", "true".to_string())];
                if recursive {
                    q.push(("recursive", "true".into()));
                }
                if quorum {
                    q.push(("quorum", "true".into()));
                }
                let body = self.keys(reqwest::Method::GET, key, &q).await?;
                let top = &body["node"];
                let mut out = Vec::new();
                if top["dir"] == true {
                    flatten(top, &mut out);
                } else {
                    out.push(node(top));
                }
                Ok(out)
            }
        }
    }

    /// Sets a key (or creates a directory); the node written.
    pub(crate) async fn set_key(
        &self,
        key: &str,
        value: &str,
        o: &SetOptions,
    ) -> Result<KeyNode, Error> {
        match self {
            Client::Bus(p) => {
                let mut m: HashMap<&str, Variant<'_>> = HashMap::new();
                if let Some(t) = o.ttl {
                    m.insert(agent1::options::TTL, t.into());
                }
                if o.dir {
                    m.insert(agent1::options::DIR, true.into());
                }
                if let Some(e) = o.prev_exist {
                    m.insert(agent1::options::PREV_EXIST, e.into());
                }
                if let Some(v) = &o.prev_value {
                    m.insert(agent1::options::PREV_VALUE, v.as_str().into());
                }
                if let Some(i) = o.prev_index {
                    m.insert(agent1::options::PREV_INDEX, i.into());
                }
                Ok(p.set_key(key, value, m).await?)
            }
            Client::Http { .. } => {
                let mut f = vec![("value", value.to_string())];
                f.extend(o.ttl.map(|t| ("ttl", t.to_string())));
                if o.dir {
                    f.push(("dir", "true".into()));
                }
                f.extend(o.prev_exist.map(|e| ("prevExist", e.to_string())));
                f.extend(o.prev_value.clone().map(|v| ("prevValue", v)));
                f.extend(o.prev_index.map(|i| ("prevIndex", i.to_string())));
                let body = self.keys(reqwest::Method::PUT, key, &f).await?;
                Ok(node(&body["node"]))
            }
        }
    }

    /// Deletes a key or directory; the node as it was.
    pub(crate) async fn delete_key(&self, key: &str, o: &DeleteOptions) -> Result<KeyNode, Error> {
        match self {
            Client::Bus(p) => {
                let mut m: HashMap<&str, Variant<'_>> = HashMap::new();
                if o.dir {
                    m.insert(agent1::options::DIR, true.into());
                }
                if o.recursive {
                    m.insert(agent1::options::RECURSIVE, true.into());
                }
                if let Some(v) = &o.prev_value {
                    m.insert(agent1::options::PREV_VALUE, v.as_str().into());
                }
                if let Some(i) = o.prev_index {
                    m.insert(agent1::options::PREV_INDEX, i.into());
                }
                Ok(p.delete_key(key, m).await?)
            }
            Client::Http { .. } => {
                let mut q = Vec::new();
                if o.dir {
                    q.push(("dir", "true".to_string()));
                }
                if o.recursive {
                    q.push(("recursive", "true".into()));
                }
                q.extend(o.prev_value.clone().map(|v| ("prevValue", v)));
                q.extend(o.prev_index.map(|i| ("prevIndex", i.to_string())));
                let body = self.keys(reqwest::Method::DELETE, key, &q).await?;
                let mut n = if body["prevNode"].is_object() {
                    node(&body["prevNode"])
                } else {
                    node(&body["node"])
                };
                n.modified_index = body["node"]["modifiedIndex"].as_u64().unwrap_or(0);
                Ok(n)
            }
        }
    }

    /// Calls `each(action, node)` for every change of `key` (or under it, with `recursive`)
    /// until it returns false. `after`: changes after this index (HTTP only: the bus gives live
    /// changes).
    pub(crate) async fn watch(
        &self,
        key: &str,
        recursive: bool,
        after: Option<u64>,
        mut each: impl FnMut(&str, &KeyNode) -> bool,
    ) -> Result<(), Error> {
        let key = normalize(key);
        match self {
            Client::Bus(p) => {
                if after.is_some() {
                    return Err(Error::refused(
                        "InvalidArgument",
                        "--after-index needs --endpoint URL: watches over D-Bus give live changes only",
                    ));
                }
                let mut changes = p.receive_key_changed().await.map_err(|e| {
                    Error::Unreachable(format!("cannot subscribe to KeyChanged: {e}"))
                })?;
                p.watch_keys(&key).await?;
                while let Some(signal) = changes.next().await {
                    let Ok(args) = signal.args() else { continue };
                    let changed = args.key();
                    let under = changed
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.is_empty() || key == "/" || rest.starts_with('/'));
                    let matches = if recursive { under } else { *changed == key };
                    if matches && !each(args.action(), args.node()) {
                        break;
                    }
                }
                let _ = p.unwatch_keys(&key).await;
                Ok(())
            }
            Client::Http { .. } => {
                let mut wait_index = after.map(|a| a + 1);
                loop {
                    let mut q = vec![("wait", "true".to_string())];
                    if recursive {
                        q.push(("recursive", "true".into()));
                    }
                    if let Some(i) = wait_index {
                        q.push(("waitIndex", i.to_string()));
                    }
                    let body = self.keys(reqwest::Method::GET, &key, &q).await?;
                    let n = node(&body["node"]);
                    wait_index = Some(n.modified_index + 1);
                    if !each(body["action"].as_str().unwrap_or(""), &n) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The members of the Raft group.
    pub(crate) async fn list_members(&self) -> Result<Vec<MemberRecord>, Error> {
        match self {
            Client::Bus(p) => Ok(p.list_members().await?),
            Client::Http { http, endpoint } => {
                let body = self
                    .json(http.get(format!("{endpoint}/v2/members")))
                    .await?;
                let leader = self
                    .json(http.get(format!("{endpoint}/v2/members/leader")))
                    .await
                    .ok()
                    .and_then(|l| l["id"].as_str().map(str::to_string));
                Ok(body["members"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|m| member(m, leader.as_deref()))
                    .collect())
            }
        }
    }

    /// Registers a member that will start with `[cluster] join`.
    pub(crate) async fn add_member(
        &self,
        name: &str,
        peer_url: &str,
    ) -> Result<MemberRecord, Error> {
        match self {
            Client::Bus(p) => Ok(p.add_member(name, peer_url).await?),
            Client::Http { http, endpoint } => {
                let req = http
                    .post(format!("{endpoint}/v2/members"))
                    .json(&json!({"name": name, "peerURLs": [peer_url]}));
                Ok(member(&self.json(req).await?, None))
            }
        }
    }

    /// Removes a member by id or name.
    pub(crate) async fn remove_member(&self, m: &str) -> Result<(), Error> {
        match self {
            Client::Bus(p) => Ok(p.remove_member(m).await?),
            Client::Http { http, endpoint } => self
                .json(http.delete(format!("{endpoint}/v2/members/{m}")))
                .await
                .map(drop),
        }
    }

    /// Sends an HTTP request; a non-2xx answer is `Refused` with the body's message.
    async fn json(&self, req: reqwest::RequestBuilder) -> Result<Value, Error> {
        let endpoint = match self {
            Client::Http { endpoint, .. } => endpoint.as_str(),
            Client::Bus(_) => "",
        };
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Unreachable(format!("cannot reach {endpoint}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| Error::Unreachable(format!("{endpoint}: {e}")))?;
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                Error::Unreachable(format!("{endpoint} sent a reply that is not JSON: {e}"))
            })?
        };
        if !status.is_success() {
            let message = body["message"].as_str().unwrap_or(status.as_str());
            let name = match status.as_u16() {
                404 => "MemberNotFound",
                409 => "Rejected",
                400 => "InvalidArgument",
                _ => "Failed",
            };
            return Err(Error::refused(name, message.to_lowercase()));
        }
        Ok(body)
    }

    /// An etcd v2 keys request; an etcd error is `Refused` with etcdctl's line.
    async fn keys(
        &self,
        method: reqwest::Method,
        key: &str,
        params: &[(&str, String)],
    ) -> Result<Value, Error> {
        let Client::Http { http, endpoint } = self else {
            return Err(Error::Unreachable("not an HTTP client".into()));
        };
        let url = format!("{endpoint}/v2/keys{}", normalize(key));
        let encoded = encode_pairs(params);
        let req = if method == reqwest::Method::PUT || method == reqwest::Method::POST {
            http.request(method, &url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(encoded)
        } else if encoded.is_empty() {
            http.request(method, url)
        } else {
            http.request(method, format!("{url}?{encoded}"))
        };
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Unreachable(format!("cannot reach {endpoint}: {e}")))?;
        let body: Value = resp.json().await.map_err(|e| {
            Error::Unreachable(format!("{endpoint} sent a reply that is not JSON: {e}"))
        })?;
        if let Some(code) = body["errorCode"].as_u64() {
            let name = match code {
                100 => "KeyNotFound",
                101 => "CompareFailed",
                102 => "NotAFile",
                104 => "NotADirectory",
                105 => "KeyExists",
                108 => "DirectoryNotEmpty",
                300 | 301 => "NoLeader",
                _ => "InvalidArgument",
            };
            // etcdctl's line: `100: Key not found (/foo) [12]`.
            let message = format!(
                "{code}: {} ({}) [{}]",
                body["message"].as_str().unwrap_or(""),
                body["cause"].as_str().unwrap_or(""),
                body["index"].as_u64().unwrap_or(0)
            );
            return Err(Error::refused(name, message));
        }
        Ok(body)
    }
}

/// How long one request of the unit API may take over HTTP (status and journal are forwarded to
/// the machine of the unit, which may take the agent up to 10 s).
const UNITS_DEADLINE: Duration = Duration::from_secs(30);

/// fleet's verbs, as the agent applies them to a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Load,
    Start,
    Stop,
    Unload,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Load => "load",
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Unload => "unload",
        }
    }
}

/// What wakes a command that waits for units: `UnitStateChanged` over D-Bus, a timer over
/// HTTP (which has no such notification).
pub(crate) enum UnitChanges {
    Bus(Box<agent1::UnitStateChangedStream>),
    Http,
}

impl UnitChanges {
    /// Waits until a unit's state changes (D-Bus), or `period` passes.
    pub(crate) async fn next(&mut self, period: Duration) {
        match self {
            UnitChanges::Bus(s) => {
                let _ = tokio::time::timeout(period, s.next()).await;
            }
            UnitChanges::Http => tokio::time::sleep(period).await,
        }
    }
}

/// The units: D-Bus methods, or `/flotilla/v1/units` over HTTP; the same types either way.
impl Client {
    /// Submits a unit file; whether it changed anything.
    pub(crate) async fn submit_unit(
        &self,
        name: &str,
        text: &str,
        replace: bool,
    ) -> Result<bool, Error> {
        match self {
            Client::Bus(p) => Ok(p.submit_unit(name, text, replace).await?),
            Client::Http { http, .. } => {
                let req = http
                    .put(self.units_url(&format!("/{name}")))
                    .json(&json!({ "text": text, "replace": replace }));
                let body = self.units_json(req).await?;
                Ok(body["changed"] == true)
            }
        }
    }

    /// Applies one of fleet's verbs; whether it changed anything.
    pub(crate) async fn unit_verb(&self, name: &str, verb: Verb) -> Result<bool, Error> {
        match self {
            Client::Bus(p) => Ok(match verb {
                Verb::Load => p.load_unit(name).await?,
                Verb::Start => p.start_unit(name).await?,
                Verb::Stop => p.stop_unit(name).await?,
                Verb::Unload => p.unload_unit(name).await?,
            }),
            Client::Http { http, .. } => {
                let req = http
                    .put(self.units_url(&format!("/{name}")))
                    .json(&json!({ "transition": verb.as_str() }));
                let body = self.units_json(req).await?;
                Ok(body["changed"] == true)
            }
        }
    }

    /// Starts a rolling restart; `false`: one is already under way.
    pub(crate) async fn restart_unit(&self, name: &str) -> Result<bool, Error> {
        match self {
            Client::Bus(p) => Ok(p.restart_unit(name).await?),
            Client::Http { http, .. } => {
                let req = http
                    .put(self.units_url(&format!("/{name}")))
                    .json(&json!({ "transition": "restart" }));
                let body = self.units_json(req).await?;
                Ok(body["changed"] == true)
            }
        }
    }

    /// Removes a unit from the cluster.
    pub(crate) async fn destroy_unit(&self, name: &str) -> Result<(), Error> {
        match self {
            Client::Bus(p) => Ok(p.destroy_unit(name).await?),
            Client::Http { http, .. } => {
                let req = http.delete(self.units_url(&format!("/{name}")));
                self.units_json(req).await.map(drop)
            }
        }
    }

    /// Every unit on every machine it is assigned to, with the state reported there.
    pub(crate) async fn list_units(&self) -> Result<Vec<UnitState>, Error> {
        match self {
            Client::Bus(p) => Ok(p.list_units().await?),
            Client::Http { .. } => Ok(self
                .http_units()
                .await?
                .iter()
                .flat_map(unit_states)
                .collect()),
        }
    }

    /// Every unit file of the cluster.
    pub(crate) async fn list_unit_files(&self) -> Result<Vec<UnitFile>, Error> {
        match self {
            Client::Bus(p) => Ok(p.list_unit_files().await?),
            Client::Http { .. } => Ok(self.http_units().await?.iter().map(unit_file).collect()),
        }
    }

    /// Every machine of the cluster.
    pub(crate) async fn list_machines(&self) -> Result<Vec<MachineRecord>, Error> {
        match self {
            Client::Bus(p) => Ok(p.list_machines().await?),
            Client::Http { http, endpoint } => {
                let req = http.get(format!("{endpoint}/flotilla/v1/machines"));
                let body = self.units_json(req).await?;
                Ok(body["machines"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(machine)
                    .collect())
            }
        }
    }

    /// `systemctl status` of a unit, from the machine that runs it.
    pub(crate) async fn unit_status(&self, name: &str) -> Result<UnitOutput, Error> {
        match self {
            Client::Bus(p) => Ok(p.unit_status(name).await?),
            Client::Http { http, .. } => {
                let req = http.get(self.units_url(&format!("/{name}/status")));
                Ok(unit_output(&self.units_json(req).await?))
            }
        }
    }

    /// The last `lines` lines of a unit's journal, from the machine that runs it.
    pub(crate) async fn journal_lines(&self, name: &str, lines: u32) -> Result<UnitOutput, Error> {
        match self {
            Client::Bus(p) => Ok(p.journal_lines(name, lines).await?),
            Client::Http { http, .. } => {
                let req = http.get(self.units_url(&format!("/{name}/journal?lines={lines}")));
                Ok(unit_output(&self.units_json(req).await?))
            }
        }
    }

    /// A unit's journal entries after `cursor` (empty: the last `lines`), ending with the
    /// `-- cursor: C` line to ask from next.
    pub(crate) async fn journal_after(
        &self,
        name: &str,
        cursor: &str,
        lines: u32,
    ) -> Result<UnitOutput, Error> {
        match self {
            Client::Bus(p) => Ok(p.journal_after(name, cursor, lines).await?),
            Client::Http { http, .. } => {
                let query =
                    encode_pairs(&[("lines", lines.to_string()), ("cursor", cursor.to_owned())]);
                let req = http.get(self.units_url(&format!("/{name}/journal?{query}")));
                Ok(unit_output(&self.units_json(req).await?))
            }
        }
    }

    /// A subscription to unit state changes, made before the changes a command waits for.
    pub(crate) async fn unit_changes(&self) -> Result<UnitChanges, Error> {
        match self {
            Client::Bus(p) => {
                let s = p.receive_unit_state_changed().await.map_err(|e| {
                    Error::Unreachable(format!("cannot subscribe to UnitStateChanged: {e}"))
                })?;
                Ok(UnitChanges::Bus(Box::new(s)))
            }
            Client::Http { .. } => Ok(UnitChanges::Http),
        }
    }

    fn units_url(&self, path: &str) -> String {
        match self {
            Client::Http { endpoint, .. } => format!("{endpoint}/flotilla/v1/units{path}"),
            Client::Bus(_) => String::new(),
        }
    }

    async fn http_units(&self) -> Result<Vec<Value>, Error> {
        let Client::Http { http, .. } = self else {
            return Err(Error::Unreachable("not an HTTP client".into()));
        };
        let body = self.units_json(http.get(self.units_url(""))).await?;
        Ok(body["units"].as_array().cloned().unwrap_or_default())
    }

    /// Sends a request of flotilla's own API; a non-2xx answer is `Refused`, named as the
    /// D-Bus interface names it, with the agent's message (and a malformed unit's
    /// diagnostics, one per line).
    async fn units_json(&self, req: reqwest::RequestBuilder) -> Result<Value, Error> {
        let endpoint = match self {
            Client::Http { endpoint, .. } => endpoint.as_str(),
            Client::Bus(_) => "",
        };
        let resp = req
            .timeout(UNITS_DEADLINE)
            .send()
            .await
            .map_err(|e| Error::Unreachable(format!("cannot reach {endpoint}: {e}")))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.map_err(|e| {
            Error::Unreachable(format!("{endpoint} sent a reply that is not JSON: {e}"))
        })?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let mut message = body["error"]
            .as_str()
            .unwrap_or("the agent refused the request")
            .to_owned();
        if let Some(d) = body["diagnostics"].as_array()
            && !message.contains('\n')
        {
            for line in d.iter().filter_map(Value::as_str) {
                message.push('\n');
                message.push_str(line);
            }
        }
        let name = match status {
            404 => "UnitNotFound",
            409 if body["error"]
                .as_str()
                .is_some_and(|e| e.contains("already exists")) =>
            {
                "UnitExists"
            }
            409 => "UnitNotRunning",
            400 if body["diagnostics"].is_array() => "InvalidUnit",
            400 => "InvalidArgument",
            502 => "MachineUnreachable",
            503 => "NoLeader",
            _ => "Failed",
        };
        Err(Error::refused(name, message))
    }
}

/// The rows of list-units for one unit of `/flotilla/v1/units`: one per assigned machine.
fn unit_states(u: &Value) -> Vec<UnitState> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let states = u["states"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    u["machines"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .map(|m| {
            let s = states
                .iter()
                .find(|s| s["machine"] == m)
                .unwrap_or(&Value::Null);
            UnitState {
                unit: text(&u["name"]),
                machine: m.to_owned(),
                desired: text(&u["desired"]),
                load: text(&s["load"]),
                active: text(&s["active"]),
                sub: text(&s["sub"]),
                hash: text(&u["hash"]),
                result: text(&s["result"]),
                main_pid: s["mainPid"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(0),
                since_ms: s["sinceMs"].as_u64().unwrap_or(0),
            }
        })
        .collect()
}

/// A row of list-unit-files from a unit of `/flotilla/v1/units`.
fn unit_file(u: &Value) -> UnitFile {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    UnitFile {
        unit: text(&u["name"]),
        hash: text(&u["hash"]),
        desired: text(&u["desired"]),
        state: text(&u["state"]),
        machines: u["machines"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        unschedulable: text(&u["unschedulable"]),
    }
}

/// A machine of `/flotilla/v1/machines`.
fn machine(m: &Value) -> MachineRecord {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    MachineRecord {
        name: text(&m["name"]),
        machine_id: text(&m["machineID"]),
        addr: text(&m["addr"]),
        metadata: m["metadata"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default(),
        status: text(&m["status"]),
        since_ms: m["sinceMs"].as_u64().unwrap_or(0),
    }
}

/// The answer of `/flotilla/v1/units/NAME/{status,journal}`.
fn unit_output(v: &Value) -> UnitOutput {
    UnitOutput {
        machine: v["machine"].as_str().unwrap_or_default().to_owned(),
        output: v["output"].as_str().unwrap_or_default().to_owned(),
        exit_code: v["exitCode"]
            .as_i64()
            .and_then(|c| i32::try_from(c).ok())
            .unwrap_or(-1),
    }
}

/// `/key` from `key` or `/key/`.
fn normalize(key: &str) -> String {
    let trimmed = key.trim_matches('/');
    format!("/{trimmed}")
}

/// A node of etcd's JSON.
fn node(v: &Value) -> KeyNode {
    KeyNode {
        key: v["key"].as_str().unwrap_or("/").to_string(),
        value: v["value"].as_str().unwrap_or("").to_string(),
        dir: v["dir"] == true,
        created_index: v["createdIndex"].as_u64().unwrap_or(0),
        modified_index: v["modifiedIndex"].as_u64().unwrap_or(0),
        ttl: v["ttl"].as_i64().unwrap_or(0),
    }
}

fn flatten(dir: &Value, out: &mut Vec<KeyNode>) {
    for n in dir["nodes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push(node(n));
        if n["dir"] == true {
            flatten(n, out);
        }
    }
}

/// A member of `/v2/members`' JSON.
fn member(m: &Value, leader: Option<&str>) -> MemberRecord {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = m["id"].as_str().unwrap_or("").to_string();
    MemberRecord {
        leader: leader == Some(id.as_str()),
        id,
        name: m["name"].as_str().unwrap_or("").to_string(),
        peer_url: strings(&m["peerURLs"]).join(","),
        client_urls: strings(&m["clientURLs"]),
        voter: m["isLearner"] != true,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_nodes_become_key_nodes_in_pre_order() {
        let dir = json!({"key": "/d", "dir": true, "nodes": [
            {"key": "/d/a", "value": "1", "modifiedIndex": 3, "createdIndex": 3},
            {"key": "/d/s", "dir": true, "nodes": [{"key": "/d/s/x", "value": "2", "ttl": 5}]}
        ]});
        let mut out = Vec::new();
        flatten(&dir, &mut out);
        let keys: Vec<&str> = out.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(keys, ["/d/a", "/d/s", "/d/s/x"]);
        assert_eq!(
            (out[0].modified_index, out[2].ttl, out[1].dir),
            (3, 5, true)
        );
    }

    #[test]
    fn http_units_become_the_rows_the_bus_gives() {
        let u = json!({
            "name": "hello.service", "hash": "abc", "desired": "launched", "state": "launched",
            "machines": ["n1", "n2"], "unschedulable": null,
            "states": [
                {"machine": "n1", "load": "loaded", "active": "active", "sub": "running",
                 "mainPid": 42, "result": "success", "sinceMs": 7},
                {"machine": "n3", "load": "loaded", "active": "inactive", "sub": "dead"}
            ]
        });
        let rows = unit_states(&u);
        let got: Vec<(&str, &str, u32)> = rows
            .iter()
            .map(|r| (r.machine.as_str(), r.active.as_str(), r.main_pid))
            .collect();
        assert_eq!(got, [("n1", "active", 42), ("n2", "", 0)]);
        assert_eq!(
            (rows[0].desired.as_str(), rows[0].since_ms),
            ("launched", 7)
        );
        let f = unit_file(&u);
        assert_eq!(
            (f.state.as_str(), f.machines.len(), f.unschedulable.as_str()),
            ("launched", 2, "")
        );
    }

    #[test]
    fn keys_are_normalized_and_forms_encoded() {
        assert_eq!(normalize("message/"), "/message");
        assert_eq!(normalize("/"), "/");
        assert_eq!(
            encode_pairs(&[("value", "Hello world!".into()), ("ttl", "5".into())]),
            "value=Hello%20world%21&ttl=5"
        );
    }
}
