//! The replicated key space end to end: real `flotillad` clusters on loopback driven by the
//! real `etcdctl` (v2), compared with a real etcd 3.4, through leader crashes, restarts and
//! membership changes.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
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
