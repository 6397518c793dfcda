//! The replicated key space end to end: real `flotillad` clusters on loopback driven by the
//! real `etcdctl` (v2), compared with a real etcd 3.4, through leader crashes, restarts and
//! membership changes.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_tests::agents::Cluster;
use flotilla_tests::etcd::{EtcdCluster, EtcdConfig};
use flotilla_tests::testbed::{wait_for, wait_until};

/// Runs `etcdctl` (v2 API) against `endpoints`.
fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "2")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .expect("etcdctl (Debian package etcd-client) runs")
}

/// `stdout`, `stderr` and the exit code, with etcd indexes (`[12]`) and member ids masked.
fn transcript(out: &Output) -> String {
    let mask = |s: &str| -> String {
        let mut o = String::new();
        let mut rest = s;
        while let Some(start) = rest.find('[') {
            let (head, tail) = rest.split_at(start);
            o.push_str(head);
            match tail.find(']') {
                Some(end) if tail[1..end].chars().all(|c| c.is_ascii_digit()) && end > 1 => {
                    o.push_str("[N]");
                    rest = &tail[end + 1..];
                }
                _ => {
                    o.push('[');
                    rest = &tail[1..];
                }
            }
        }
        o.push_str(rest);
        o
    };
    format!(
        "stdout: {}stderr: {}exit: {}",
        mask(&String::from_utf8_lossy(&out.stdout)),
        mask(&String::from_utf8_lossy(&out.stderr)),
        out.status.code().unwrap_or(-1)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (at most 10 s) until `etcdctl ARGS` against `url` prints `want`: a plain read on a
/// member other than the one that took the write may be a moment behind (etcd allows it;
/// `--quorum` reads are checked by the fault test).
fn eventually(url: &str, args: &[&str], want: &str) {
    let what = format!("etcdctl {args:?} via {url} to print {want:?}");
    wait_for(Duration::from_secs(10), &what, || {
        let got = transcript(&etcdctl(url, args));
        if got == want { Ok(()) } else { Err(Some(got)) }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn set_on_one_member_get_on_another() {
    let cluster = Cluster::start(3).expect("3 agents start");
    let a = cluster.agents();
    let set = etcdctl(&a[0].client_url(), &["set", "/message", "Hello world!"]);
    assert!(set.status.success(), "{}", transcript(&set));
    assert_eq!(stdout(&set), "Hello world!\n");
    for agent in &a[1..] {
        let want = "stdout: Hello world!\nstderr: exit: 0";
        eventually(&agent.client_url(), &["get", "/message"], want);
    }
    let missing = etcdctl(&a[2].client_url(), &["get", "/nothing"]);
    assert_eq!(
        transcript(&missing),
        "stdout: stderr: Error:  100: Key not found (/nothing) [N]\nexit: 4"
    );
}

/// The commands of the issue, each run against etcd and against flotilla: same output, same
/// exit code (indexes masked).
#[test]
fn etcdctl_prints_what_etcd_prints() {
    let script: &[&[&str]] = &[
        &["set", "/a", "1"],
        &["get", "/a"],
        &["mk", "/a", "2"],
        &["mk", "/b", "2"],
        &["update", "/b", "3"],
        &["update", "/nope", "3"],
        &["set", "--swap-with-value", "3", "/b", "4"],
        &["set", "--swap-with-value", "x", "/b", "5"],
        &["mkdir", "/d"],
        &["mkdir", "/d"],
        &["set", "/d/x", "1"],
        &["set", "/d/e/y", "2"],
        // Unsorted listings come in Go map order from etcd: only sorted ones compare.
        &["ls", "--sort", "/d"],
        &["ls", "--recursive", "--sort", "/"],
        &["ls", "-p", "--sort", "/d"],
        &["ls", "/a"],
        &["get", "/d"],
        &["rm", "/d"],
        &["rmdir", "/d"],
        &["rm", "--recursive", "/d"],
        &["get", "/d/x"],
        &["rm", "--with-value", "nope", "/a"],
        &["rm", "--with-value", "1", "/a"],
        &["set", "--ttl", "100", "/t", "v"],
        &["get", "/t"],
        &["rm", "/b"],
        &["rm", "/b"],
        &["set", "--swap-with-index", "1", "/c", "x"],
        &["rm", "--dir", "/e"],
        &["mkdir", "/e"],
        &["rm", "--dir", "/e"],
        &["get", "/"],
        &["update", "/", "x"],
        &["rm", "/"],
    ];
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let etcd = rt
        .block_on(EtcdCluster::start(&EtcdConfig {
            members: 1,
            ..Default::default()
        }))
        .expect("etcd starts");
    let flotilla = Cluster::start(3).expect("3 agents start");
    let etcd_url = etcd.client_urls().join(",");
    let flotilla_url = flotilla.endpoints();
    for args in script {
        let want = transcript(&etcdctl(&etcd_url, args));
        let got = transcript(&etcdctl(&flotilla_url, args));
        assert_eq!(got, want, "etcdctl {}", args.join(" "));
    }
}

#[test]
fn watch_sees_a_later_write_and_the_history() {
    let cluster = Cluster::start(3).expect("3 agents start");
    let a = cluster.agents();
    // A first write, so the watched one has an index above 1 (after-index 0 means "from now").
    let warmup = etcdctl(&a[0].client_url(), &["set", "/x", "0"]);
    assert!(warmup.status.success(), "{}", transcript(&warmup));
    let first = etcdctl(&a[0].client_url(), &["set", "/w/k", "one"]);
    assert!(first.status.success(), "{}", transcript(&first));
    // From the history: the write happened at its modifiedIndex; watch from just before it.
    // etcdctl may have sent the write to any member (it syncs the member list): read through
    // the leader, as a plain read from another member may be a moment behind.
    let (_, body) = cluster
        .get(0, "/v2/keys/w/k?quorum=true")
        .expect("the key reads back");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    let index = body["node"]["modifiedIndex"]
        .as_u64()
        .expect("modifiedIndex");
    let after = (index - 1).to_string();
    let past = etcdctl(
        &a[1].client_url(),
        &["watch", "--after-index", &after, "--recursive", "/w"],
    );
    assert_eq!(
        transcript(&past),
        "stdout: [set] /w/k\none\nstderr: exit: 0"
    );
    // Live: the watch waits on one member, the write goes to another.
    let url = a[2].client_url();
    let watcher = std::thread::spawn(move || etcdctl(&url, &["watch", "/w/k"]));
    // Write until the watch (which may not be registered yet) fires.
    let mut n = 0;
    wait_until(Duration::from_secs(20), "the watch firing", || {
        n += 1;
        let set = etcdctl(&a[0].client_url(), &["set", "/w/k", &format!("two{n}")]);
        assert!(set.status.success(), "{}", transcript(&set));
        watcher.is_finished()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let out = watcher.join().expect("watch thread");
    assert!(out.status.success(), "{}", transcript(&out));
    assert!(stdout(&out).starts_with("two"), "{}", transcript(&out));
}

/// kill -9 of the leader under concurrent writes: every acknowledged write is still there, the
/// cluster serves again, and the killed member catches up when it comes back.
#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3).expect("3 agents start");
    let endpoints = cluster.endpoints();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (endpoints, acked, stop) = (endpoints.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("/load/w{w}-{seq}");
                    if etcdctl(&endpoints, &["set", &key, "v"]).status.success() {
                        acked.lock().expect("acked").insert(key);
                    }
                    seq += 1;
                }
            })
        })
        .collect();
    let wait_acks = |n: usize| {
        wait_until(Duration::from_secs(60), "writes being acknowledged", || {
            acked.lock().expect("acked").len() >= n
        })
        .unwrap_or_else(|e| panic!("{e}"));
    };
    wait_acks(20);
    let leader = cluster.wait_leader().expect("a leader");
    cluster.kill(leader);
    let after_kill = acked.lock().expect("acked").len();
    wait_acks(after_kill + 20);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let survivors: Vec<String> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| cluster.agents()[i].client_url())
        .collect();
    let acked = acked.lock().expect("acked").clone();
    // Through the leader (--quorum): a follower's plain read may be a moment behind.
    let listed = etcdctl(&survivors.join(","), &["ls", "--quorum", "/load"]);
    assert!(listed.status.success(), "{}", transcript(&listed));
    let present: BTreeSet<String> = stdout(&listed).lines().map(str::to_string).collect();
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    cluster.restart(leader).expect("the killed member restarts");
    let back = cluster.agents()[leader].client_url();
    wait_until(
        Duration::from_secs(30),
        "the restarted member catching up",
        || {
            let out = etcdctl(&back, &["ls", "/load"]);
            let seen: BTreeSet<String> = stdout(&out).lines().map(str::to_string).collect();
            acked.is_subset(&seen)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Five voters; a sixth machine joins as a learner and serves reads; a member is removed.
#[test]
fn members_join_and_leave_a_five_member_cluster() {
    let mut cluster = Cluster::start(5).expect("5 agents start");
    let set = etcdctl(&cluster.endpoints(), &["set", "/m", "x"]);
    assert!(set.status.success(), "{}", transcript(&set));
    let sixth = cluster.join_new().expect("a sixth agent joins");
    let url = cluster.agents()[sixth].client_url();
    let want = "stdout: x\nstderr: exit: 0";
    eventually(&url, &["get", "/m"], want);
    let (_, members) = cluster.get(0, "/v2/members").expect("members");
    let members: serde_json::Value = serde_json::from_str(&members).expect("members json");
    let list = members["members"].as_array().expect("member array");
    assert_eq!(list.len(), 6);
    assert_eq!(
        list.iter().filter(|m| m["isLearner"] == true).count(),
        1,
        "{members}"
    );

    let list = etcdctl(&cluster.endpoints(), &["member", "list"]);
    assert!(list.status.success(), "{}", transcript(&list));
    let victim = stdout(&list)
        .lines()
        .find(|l| l.contains("name=n5 "))
        .and_then(|l| l.split(':').next())
        .expect("n5 is listed")
        .to_string();
    let removed = etcdctl(&cluster.endpoints(), &["member", "remove", &victim]);
    assert!(removed.status.success(), "{}", transcript(&removed));
    cluster.kill(4);
    // The member list is served by whichever member etcdctl asks, from what it applied: the
    // removal shows everywhere once the others applied it.
    wait_for(
        Duration::from_secs(10),
        "n5 gone from the member list",
        || {
            let list = etcdctl(&cluster.endpoints(), &["member", "list"]);
            if list.status.success() && !stdout(&list).contains("name=n5 ") {
                Ok(())
            } else {
                Err(Some(transcript(&list)))
            }
        },
    )
    .unwrap();
    let set = etcdctl(&cluster.endpoints(), &["set", "/m", "y"]);
    assert!(set.status.success(), "{}", transcript(&set));
}

/// A key with a TTL disappears on every member once the leader commits its expiry, and the
/// watch history shows the `expire` action.
#[test]
fn ttl_keys_expire_everywhere() {
    let cluster = Cluster::start(3).expect("3 agents start");
    let a = cluster.agents();
    let set = etcdctl(&a[0].client_url(), &["set", "--ttl", "1", "/ttl/k", "v"]);
    assert!(set.status.success(), "{}", transcript(&set));
    let (_, body) = cluster
        .get(0, "/v2/keys/ttl/k?quorum=true")
        .expect("the key reads back");
    let body: serde_json::Value = serde_json::from_str(&body).expect("json");
    let index = body["node"]["modifiedIndex"]
        .as_u64()
        .expect("modifiedIndex");
    assert!(
        body["node"]["ttl"].as_i64().is_some_and(|t| t <= 1),
        "{body}"
    );
    for agent in a {
        let what = format!("/ttl/k expiring on {}", agent.name());
        let get = wait_for(Duration::from_secs(15), &what, || {
            let get = etcdctl(&agent.client_url(), &["get", "/ttl/k"]);
            if get.status.code() == Some(4) {
                Ok(get)
            } else {
                Err(Some(transcript(&get)))
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            transcript(&get).contains("100: Key not found (/ttl/k)"),
            "{}",
            transcript(&get)
        );
    }
    let after = index.to_string();
    let watch = etcdctl(
        &a[1].client_url(),
        &["watch", "--recursive", "--after-index", &after, "/ttl"],
    );
    assert_eq!(
        transcript(&watch),
        "stdout: [expire] /ttl/k\n\nstderr: exit: 0"
    );
}

/// Waits until `etcdctl ls /DIR` on `url` lists exactly `want`.
fn wait_for_listing(url: &str, dir: &str, want: &BTreeSet<String>) {
    let what = format!("{url} listing the {} keys under {dir}", want.len());
    wait_for(Duration::from_secs(30), &what, || {
        let out = etcdctl(url, &["ls", dir]);
        let seen: BTreeSet<String> = stdout(&out).lines().map(str::to_string).collect();
        if &seen == want {
            Ok(())
        } else {
            Err(Some(format!("{} keys", seen.len())))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

/// A member that was down while the others wrote (and snapshotted) catches up when it returns.
#[test]
fn a_restarted_member_catches_up() {
    let mut cluster = Cluster::start_with(3, "snapshot_entries = 20").expect("3 agents start");
    cluster.kill(2);
    let endpoints = format!(
        "{},{}",
        cluster.agents()[0].client_url(),
        cluster.agents()[1].client_url()
    );
    let mut keys = BTreeSet::new();
    for i in 0..120 {
        let key = format!("/snap/k{i:03}");
        let set = etcdctl(&endpoints, &["set", &key, "v"]);
        assert!(set.status.success(), "{}", transcript(&set));
        keys.insert(key);
    }
    cluster.restart(2).expect("the member restarts");
    wait_for_listing(&cluster.agents()[2].client_url(), "/snap", &keys);
}

/// A machine that joins after the members snapshotted and purged their logs gets the state
/// as a snapshot (its own log starts after it).
#[test]
fn a_new_member_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_with(3, "snapshot_entries = 20").expect("3 agents start");
    let endpoints = cluster.endpoints();
    let mut keys = BTreeSet::new();
    for i in 0..120 {
        let key = format!("/snap/k{i:03}");
        let set = etcdctl(&endpoints, &["set", &key, "v"]);
        assert!(set.status.success(), "{}", transcript(&set));
        keys.insert(key);
    }
    let new = cluster.join_new().expect("a fourth agent joins");
    wait_for_listing(&cluster.agents()[new].client_url(), "/snap", &keys);
    assert!(
        cluster.agents()[new]
            .data_dir()
            .join("snapshot.bin")
            .exists(),
        "the new member holds no snapshot"
    );
}

/// kill -9 of every member, then a restart of all: the acknowledged writes are all there
/// (replayed from each member's snapshot and log).
#[test]
fn a_whole_cluster_restart_keeps_every_write() {
    let mut cluster = Cluster::start_with(3, "snapshot_entries = 50").expect("3 agents start");
    let endpoints = cluster.endpoints();
    let mut keys = BTreeSet::new();
    for i in 0..80 {
        let key = format!("/keep/k{i:03}");
        let set = etcdctl(&endpoints, &["set", &key, "v"]);
        assert!(set.status.success(), "{}", transcript(&set));
        keys.insert(key);
    }
    for i in 0..3 {
        cluster.kill(i);
    }
    // Start all three before waiting: a single member has no quorum.
    for i in 0..3 {
        cluster.respawn(i).expect("the member starts");
    }
    for i in 0..3 {
        cluster.wait_ready(i).expect("the member is ready");
    }
    for a in cluster.agents() {
        wait_for_listing(&a.client_url(), "/keep", &keys);
    }
}

/// What a client controls is limited: a value over the limit is etcd's error, not a crash, and
/// the member serves on.
#[test]
fn oversized_values_are_refused() {
    let cluster = Cluster::start(3).expect("3 agents start");
    let url = cluster.agents()[0].client_url();
    let big = "x".repeat(100 * 1024);
    let set = etcdctl(&url, &["set", "/big", &big]);
    assert_eq!(set.status.code(), Some(4), "{}", transcript(&set));
    assert!(
        String::from_utf8_lossy(&set.stderr).starts_with("Error:  "),
        "{}",
        transcript(&set)
    );
    let set = etcdctl(&url, &["set", "/small", "ok"]);
    assert_eq!(transcript(&set), "stdout: ok\nstderr: exit: 0");

    // A body over `[api] max_body_bytes` (512 KiB by default) is etcd's answer to a form
    // over Go's limit: 400, 210 Invalid POST form, "http: POST too large".
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let http = reqwest::Client::new();
    let body = format!("value={}", "x".repeat(600 * 1024));
    let put = form(
        &http,
        reqwest::Method::PUT,
        &format!("{url}/v2/keys/huge"),
        body.clone(),
    );
    let (status, json) = rt.block_on(send(put)).expect("an answer");
    assert_eq!(
        (status, json["errorCode"].as_u64(), &json["message"]),
        (400, Some(210), &serde_json::json!("Invalid POST form")),
        "{json}"
    );
    assert!(
        json["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("http: POST too large")),
        "{json}"
    );
    let add = http.post(format!("{url}/v2/members")).body(body);
    let (status, json) = rt.block_on(send(add)).expect("an answer");
    assert_eq!(status, 413, "{json}");
    assert!(
        json["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_body_bytes")),
        "{json}"
    );
}

/// The status of machine `name` in `/flotilla/v1/machines` of agent `i`.
fn machine_status(cluster: &Cluster, i: usize, name: &str) -> Option<String> {
    let (_, body) = cluster.get(i, "/flotilla/v1/machines")?;
    let body: serde_json::Value = serde_json::from_str(&body).ok()?;
    body["machines"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["status"].as_str().map(str::to_string))
}

/// Liveness: every agent registers its machine; one that stops sending heartbeats is marked
/// lost by the leader (one committed entry, seen on every member), and up again when it returns.
#[test]
fn a_silent_machine_is_marked_lost_and_up_again() {
    let mut cluster = Cluster::start(3).expect("3 agents start");
    let wait_status = |cluster: &Cluster, i: usize, name: &str, status: &str| {
        let what = format!("machine {name} {status} on agent {i}");
        wait_until(Duration::from_secs(30), &what, || {
            machine_status(cluster, i, name).as_deref() == Some(status)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    };
    for name in ["n1", "n2", "n3"] {
        wait_status(&cluster, 0, name, "up");
    }
    // Kill a follower (a killed leader would take its soft state with it; the next leader
    // starts counting from its election, which the same wait covers).
    let leader = cluster.wait_leader().expect("a leader");
    let victim = (leader + 1) % 3;
    let name = cluster.agents()[victim].name().to_string();
    let observer = (leader + 2) % 3;
    cluster.kill(victim);
    wait_status(&cluster, observer, &name, "lost");
    cluster.restart(victim).expect("the machine comes back");
    wait_status(&cluster, observer, &name, "up");
}

/// What one client of [`writes_forwarded_through_leader_changes_are_applied_once`] saw.
#[derive(Default)]
struct Seen {
    /// In-order values whose POST was acknowledged.
    posted: Vec<String>,
    /// Compare-and-swaps that answered "Compare failed" although they took effect.
    false_failures: Vec<String>,
    /// Requests whose outcome is unknown (an error other than a failed compare).
    unknown: usize,
}

/// `(status, body)` of one request, or the transport error.
async fn send(request: reqwest::RequestBuilder) -> Result<(u16, serde_json::Value), String> {
    let resp = request.send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&body).map_err(|e| format!("{status} {body:?}: {e}"))?;
    Ok((status, json))
}

fn form(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: String,
) -> reqwest::RequestBuilder {
    http.request(method, url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
}

/// The value of `url` (a key), read through the leader (`quorum=true`), once the cluster
/// answers (within a minute; else nothing).
async fn read_back(http: &reqwest::Client, url: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Ok((200, json)) = send(http.get(format!("{url}?quorum=true"))).await
            && let Some(v) = json["node"]["value"].as_str()
        {
            return v.to_string();
        }
    }
    String::new()
}

/// Posts in-order keys with a unique value each until `stop`.
async fn post_until(
    http: reqwest::Client,
    url: String,
    client: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let value = format!("p{client}-{n}");
        let post = form(&http, reqwest::Method::POST, &url, format!("value={value}"));
        match send(post).await {
            Ok((201, _)) => {
                seen.posted.push(value);
                done.fetch_add(1, Ordering::Relaxed);
            }
            _ => seen.unknown += 1,
        }
    }
    seen
}

/// Swaps key `url` from the value it holds to a new unique one until `stop`; a swap that
/// answers "Compare failed" must not have taken effect.
async fn swap_until(
    http: reqwest::Client,
    url: String,
    client: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    let mut current = format!("s{client}-0");
    loop {
        let set = form(
            &http,
            reqwest::Method::PUT,
            &url,
            format!("value={current}"),
        );
        if matches!(send(set).await, Ok((200 | 201, _))) {
            break;
        }
    }
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let next = format!("s{client}-{n}");
        let swap = form(
            &http,
            reqwest::Method::PUT,
            &url,
            format!("prevValue={current}&value={next}"),
        );
        match send(swap).await {
            Ok((200, _)) => {
                current = next;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok((412, json)) if json["errorCode"] == 101 => {
                let before = std::mem::replace(&mut current, read_back(&http, &url).await);
                if current == next {
                    seen.false_failures
                        .push(format!("{before} -> {next}: {json}"));
                }
            }
            _ => {
                seen.unknown += 1;
                current = read_back(&http, &url).await;
            }
        }
    }
    seen
}

/// Whether agent `i` says it leads.
fn leads(cluster: &Cluster, i: usize) -> bool {
    cluster
        .get(i, "/v2/stats/self")
        .is_some_and(|(code, body)| code == 200 && body.contains("\"StateLeader\""))
}

/// Writes that a follower forwards to the leader while the leader stops (kill -STOP, then
/// -CONT) or dies (kill -9) are sent again to the next leader with the same request id and
/// applied once: no in-order key is created twice, no compare-and-swap that took effect
/// answers "Compare failed", and no acknowledged write is lost.
#[test]
fn writes_forwarded_through_leader_changes_are_applied_once() {
    let mut cluster = Cluster::start(3).expect("3 agents start");
    let first = cluster.wait_leader().expect("a leader");
    let via = (first + 1) % 3;
    let url = cluster.agents()[via].client_url();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (http, stop, done) = (http.clone(), stop.clone(), done.clone());
            if c % 2 == 0 {
                rt.spawn(post_until(
                    http,
                    format!("{url}/v2/keys/queue"),
                    c,
                    stop,
                    done,
                ))
            } else {
                let key = format!("{url}/v2/keys/swap/c{c}");
                rt.spawn(swap_until(http, key, c, stop, done))
            }
        })
        .collect();
    let more = |n: usize| {
        let want = done.load(Ordering::Relaxed) + n;
        wait_until(Duration::from_secs(60), "writes being acknowledged", || {
            done.load(Ordering::Relaxed) >= want
        })
        .unwrap_or_else(|e| panic!("{e}"));
    };
    let new_leader = |cluster: &Cluster, old: usize| {
        wait_for(Duration::from_secs(30), "another leader", || {
            (0..3)
                .find(|&i| i != old && cluster.agents()[i].pid().is_some() && leads(cluster, i))
                .ok_or(None)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    more(50);
    let pid = nix::unistd::Pid::from_raw(cluster.agents()[first].pid().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("kill -STOP");
    let second = new_leader(&cluster, first);
    more(50);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("kill -CONT");
    more(50);
    if second != via {
        cluster.kill(second);
        new_leader(&cluster, second);
        more(50);
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients
        .into_iter()
        .map(|c| rt.block_on(c).expect("client task"))
        .collect();

    let resent = cluster.agents()[via]
        .log()
        .matches("sending a write to the leader again")
        .count();
    assert!(
        resent > 0,
        "no write was sent again: the test proved nothing"
    );
    let false_failures: Vec<&String> = seen.iter().flat_map(|s| &s.false_failures).collect();
    assert!(false_failures.is_empty(), "{false_failures:?}");
    let listing = rt
        .block_on(send(http.get(format!(
            "{url}/v2/keys/queue?recursive=true&sorted=true&quorum=true"
        ))))
        .expect("the queue lists");
    let mut count: std::collections::BTreeMap<String, usize> = Default::default();
    for node in listing.1["node"]["nodes"]
        .as_array()
        .expect("in-order keys")
    {
        *count
            .entry(node["value"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "in-order keys created twice: {twice:?}");
    let lost: Vec<_> = seen
        .iter()
        .flat_map(|s| &s.posted)
        .filter(|v| !count.contains_key(*v))
        .collect();
    assert!(lost.is_empty(), "acknowledged posts lost: {lost:?}");
    let unknown: usize = seen.iter().map(|s| s.unknown).sum();
    eprintln!(
        "{} writes acknowledged, {unknown} unknown outcomes, {resent} sent again",
        done.load(Ordering::Relaxed)
    );
}

/// The shape of a JSON document: every string, number and boolean replaced by its type, the
/// member ids that key etcd's `followers` by `ID`, and the rates etcd leaves out when zero
/// (`omitempty`, so present or not depending on the last second's traffic) removed.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(_) => "string".into(),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Array(a) => a.iter().map(shape).collect(),
        Value::Null => Value::Null,
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| !k.ends_with("PkgRate") && !k.ends_with("BandwidthRate"))
            .map(|(k, v)| {
                // etcd prints member ids in hex without leading zeros (`%x`): 1 to 16 digits.
                let is_id = (1..=16).contains(&k.len()) && k.chars().all(|c| c.is_ascii_hexdigit());
                (if is_id { "ID".to_string() } else { k.clone() }, shape(v))
            })
            .collect(),
    }
}

/// `/v2/stats/self` and `/v2/stats/leader` have etcd 3.4's shapes, and count real traffic:
/// append requests sent, each follower's append round trips, the leader and its uptime.
#[test]
fn stats_have_etcds_shapes_and_count_real_traffic() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let http = reqwest::Client::new();
    let get = |url: String| {
        let (status, json) = rt.block_on(send(http.get(&url))).expect("stats answer");
        assert_eq!(status, 200, "{url}: {json}");
        json
    };
    let etcd = rt
        .block_on(EtcdCluster::start(&EtcdConfig::default()))
        .expect("etcd starts");
    let flotilla = Cluster::start(3).expect("3 agents start");
    let etcd_urls = etcd.client_urls();
    let flotilla_urls: Vec<String> = flotilla.agents().iter().map(|a| a.client_url()).collect();
    for url in etcd_urls.iter().chain(&flotilla_urls) {
        for i in 0..20 {
            let put = form(
                &http,
                reqwest::Method::PUT,
                &format!("{url}/v2/keys/s{i}"),
                "value=v".into(),
            );
            let (status, json) = rt.block_on(send(put)).expect("a write");
            assert!(status == 200 || status == 201, "{json}");
        }
    }
    let e_leader = rt
        .block_on(etcd.leader())
        .expect("etcd answers")
        .expect("an etcd leader");
    let f_leader = flotilla.wait_leader().expect("a leader");
    let (e_follower, f_follower) = ((e_leader + 1) % 3, (f_leader + 1) % 3);
    for (what, e, f) in [
        (
            "self, leader",
            &etcd_urls[e_leader],
            &flotilla_urls[f_leader],
        ),
        (
            "self, follower",
            &etcd_urls[e_follower],
            &flotilla_urls[f_follower],
        ),
    ] {
        let (e, f) = (
            get(format!("{e}/v2/stats/self")),
            get(format!("{f}/v2/stats/self")),
        );
        assert_eq!(
            shape(&f),
            shape(&e),
            "/v2/stats/self of a {what}: {f} vs etcd's {e}"
        );
    }
    let e = get(format!("{}/v2/stats/leader", etcd_urls[e_leader]));
    let f = get(format!("{}/v2/stats/leader", flotilla_urls[f_leader]));
    assert_eq!(shape(&f), shape(&e), "/v2/stats/leader: {f} vs etcd's {e}");

    let me = get(format!("{}/v2/stats/self", flotilla_urls[f_leader]));
    assert!(me["sendAppendRequestCnt"].as_u64() >= Some(20), "{me}");
    let follower = get(format!("{}/v2/stats/self", flotilla_urls[f_follower]));
    assert_eq!(follower["state"], "StateFollower", "{follower}");
    assert_eq!(follower["leaderInfo"]["leader"], me["id"], "{follower}");
    assert!(
        follower["leaderInfo"]["uptime"]
            .as_str()
            .is_some_and(|u| u.ends_with('s')),
        "{follower}"
    );
    for (id, stats) in f["followers"].as_object().expect("followers") {
        assert!(stats["counts"]["success"].as_u64() >= Some(1), "{id}: {f}");
        let latency = &stats["latency"];
        let (min, avg, max) = (
            latency["minimum"].as_f64().unwrap_or(-1.0),
            latency["average"].as_f64().unwrap_or(-1.0),
            latency["maximum"].as_f64().unwrap_or(-1.0),
        );
        assert!(0.0 < min && min <= avg && avg <= max, "{id}: {f}");
    }
}

/// `etcdctl member add NAME PEER_URL` sends the peer URL alone: the member is listed
/// unstarted, as etcd lists it, and the agent that joins at that peer URL takes its place.
#[test]
fn a_member_added_by_peer_url_alone_is_taken_over_when_it_joins() {
    let mut cluster = Cluster::start(3).expect("3 agents start");
    let [_, a, b, _] = cluster.agents()[0].ip().octets();
    // The harness gives the fourth agent the next address.
    let peer_url = format!("http://127.{a}.{b}.103:2380");
    let endpoints = cluster.endpoints();
    let added = etcdctl(&endpoints, &["member", "add", "n4", &peer_url]);
    assert!(added.status.success(), "{}", transcript(&added));
    let out = stdout(&added);
    let mut lines = out.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("Added member named n4 with ID ") && first.ends_with(" to cluster"),
        "{out}"
    );
    assert_eq!(lines.next(), Some(""), "{out}");
    assert_eq!(lines.next(), Some("ETCD_NAME=\"n4\""), "{out}");
    let initial = lines.next().unwrap_or_default();
    assert!(
        initial.starts_with("ETCD_INITIAL_CLUSTER=\"")
            && initial.contains(&format!("n4={peer_url}")),
        "{out}"
    );
    assert_eq!(
        lines.next(),
        Some("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{out}"
    );
    let list = etcdctl(&endpoints, &["member", "list"]);
    assert!(
        stdout(&list).contains(&format!("[unstarted]: peerURLs={peer_url}")),
        "{}",
        transcript(&list)
    );

    let joined = cluster.join_new().expect("the fourth agent joins");
    assert_eq!(
        cluster.agents()[joined].peer_addr(),
        peer_url.trim_start_matches("http://")
    );
    wait_for(Duration::from_secs(30), "n4 listed under its name", || {
        let list = etcdctl(&cluster.endpoints(), &["member", "list"]);
        let text = stdout(&list);
        if text.lines().count() == 4 && text.contains("name=n4 ") && !text.contains("unstarted") {
            Ok(())
        } else {
            Err(Some(transcript(&list)))
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.agents()[joined].client_url();
    let set = etcdctl(&url, &["set", "/joined", "yes"]);
    assert_eq!(transcript(&set), "stdout: yes\nstderr: exit: 0");
}

/// A leader stopped with SIGTERM (as `systemctl stop` does) hands its leadership over before
/// it exits: the member it asked stands for election and wins with the old leader's vote,
/// writes through the others go on, the old leader exits 0, and nothing acknowledged is lost.
#[test]
fn a_stopped_leader_hands_its_leadership_over() {
    let mut cluster = Cluster::start(3).expect("3 agents start");
    let leader = cluster.wait_leader().expect("a leader");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let via = cluster.agents()[others[0]].client_url();
    let out = etcdctl(&via, &["set", "/handover/before", "v1"]);
    assert!(out.status.success(), "{}", transcript(&out));

    let status = cluster
        .terminate(leader, Duration::from_secs(30))
        .expect("the leader exits on SIGTERM");
    assert!(status.success(), "the leader exited with {status}");
    let log = cluster.agents()[leader].log();
    let handed = log
        .lines()
        .find(|l| l.contains("handed leadership over to"))
        .unwrap_or_else(|| panic!("the leader did not hand over:\n{log}"));
    eprintln!("{handed}");
    let asked: Vec<usize> = others
        .iter()
        .copied()
        .filter(|&i| {
            cluster.agents()[i]
                .log()
                .contains("the leader hands its leadership over: standing for election")
        })
        .collect();
    assert_eq!(asked.len(), 1, "exactly one member is asked to stand");
    let new = wait_for(Duration::from_secs(30), "a new leader", || {
        others
            .iter()
            .copied()
            .find(|&i| leads(&cluster, i))
            .ok_or(None)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(new, asked[0], "the member asked to stand leads");

    let out = etcdctl(&via, &["set", "/handover/after", "v2"]);
    assert!(out.status.success(), "{}", transcript(&out));
    let out = etcdctl(&via, &["get", "--quorum", "/handover/before"]);
    assert_eq!(stdout(&out).trim(), "v1", "{}", transcript(&out));
}

/// `etcdctl member remove` of the member that leads succeeds, once: the leader removes itself
/// (and stops), and a removal sent again to the next leader finds it gone and is done.
#[test]
fn removing_the_leader_succeeds() {
    let mut cluster = Cluster::start(3).expect("3 agents start");
    let fourth = cluster.join_new().expect("a fourth agent joins");
    let leader = cluster.wait_leader().expect("a leader");
    let name = cluster.agents()[leader].name().to_owned();
    let others: Vec<String> = (0..cluster.agents().len())
        .filter(|i| *i != leader)
        .map(|i| cluster.agents()[i].client_url())
        .collect();
    let list = etcdctl(&others.join(","), &["member", "list"]);
    assert!(list.status.success(), "{}", transcript(&list));
    let victim = stdout(&list)
        .lines()
        .find(|l| l.contains(&format!("name={name} ")))
        .and_then(|l| l.split(':').next())
        .expect("the leader is listed")
        .to_string();
    let removed = etcdctl(&others.join(","), &["member", "remove", &victim]);
    assert!(removed.status.success(), "{}", transcript(&removed));
    wait_for(
        Duration::from_secs(30),
        "the removed leader gone from the member list",
        || {
            let list = etcdctl(&others.join(","), &["member", "list"]);
            if list.status.success() && !stdout(&list).contains(&format!("name={name} ")) {
                Ok(())
            } else {
                Err(Some(transcript(&list)))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let set = etcdctl(
        &cluster.agents()[fourth].client_url(),
        &["set", "/after", "v"],
    );
    assert!(set.status.success(), "{}", transcript(&set));
}
