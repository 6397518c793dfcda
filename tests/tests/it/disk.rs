//! A full disk loses nothing: one member of a loopback cluster keeps its `data_dir` on a small
//! tmpfs that fills up while clients write; once as a follower, once as the leader.
//!
//! Checked: no panic; the full member never answers a quorum read with what it has; a write is
//! refused only with a 5xx status or no answer, never acknowledged and then lost; with a full
//! follower, the healthy members acknowledge every write throughout; with a full leader, they
//! acknowledge writes again once another member leads. Once the space is freed and the agent
//! restarted, the member opens its store, catches up, serves every acknowledged key and takes
//! new writes. The tests print what the full member did meanwhile (its log's errors, its
//! `/health`, its answers) and the writes refused.
//!
//! What it does: the log writer fails with ENOSPC, the state machine then refuses to apply,
//! openraft's core quits, and the agent ends with an error naming it (under systemd,
//! Restart=on-failure restarts it; it fails again until there is space). Checked: it exits.
//!
//! The tmpfs is mounted in a mount namespace of the test's own thread (the agents it spawns
//! inherit it; nothing is mounted on the host) and unmounted by [`Tmpfs`]'s `Drop`.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_tests::agents::Cluster;
use flotilla_tests::testbed::{wait_for, wait_until};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use crate::faults::{Failure, http};

/// The small file system's size.
const DISK_BYTES: u64 = 16 << 20;
/// What is left free of it once the filler file is written: a few dozen writes' worth.
const HEADROOM_BYTES: u64 = 1 << 20;
/// The size of each value written (64 KiB is the limit).
const VALUE_BYTES: usize = 16 << 10;
/// How long one write may take before it counts as unanswered.
const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// Writes the healthy member must acknowledge after the first failure.
const ACKS_AFTER_FAILURE: usize = 20;
/// Enough writes to fill the headroom several times over.
const MAX_WRITES: usize = 1000;
/// How long recovery (or an election) may take.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(60);

/// A tmpfs mounted at a directory, unmounted (lazily) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Tmpfs {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={bytes},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", path.display()));
        Tmpfs {
            path: path.to_owned(),
        }
    }

    fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.path)
            .unwrap_or_else(|e| panic!("statvfs {}: {e}", self.path.display()));
        st.blocks_available() * st.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            eprintln!("umount {}: {e}", self.path.display());
        }
    }
}

/// Gives the calling thread its own mount namespace in which nothing propagates to the host.
fn private_mounts() {
    unshare(CloneFlags::CLONE_NEWNS).expect("unshare the mount namespace");
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            fs::create_dir(&target).expect("create directory");
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// The value written as write `i`: `VALUE_BYTES` long, different for every write.
fn value(i: usize) -> String {
    let head = format!("v{i}-");
    let mut v = head.repeat(VALUE_BYTES / head.len() + 1);
    v.truncate(VALUE_BYTES);
    v
}

pub(crate) fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The value of `key` on `at` (a local read), if it answers with one.
fn read(at: SocketAddr, key: &str) -> Option<String> {
    match http(at, "GET", &format!("/v2/keys{key}"), "", WRITE_DEADLINE) {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body).ok()?["node"]["value"]
            .as_str()
            .map(str::to_owned),
        _ => None,
    }
}

/// Whether process `pid` has exited (a zombie its parent has not reaped, or gone).
fn exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// What the writes met while a member's log could not be written (a full disk, a failed fsync).
pub(crate) struct Seen {
    /// Writes acknowledged: `(key, value)`.
    pub(crate) acked: Vec<(String, String)>,
    /// Writes refused or not answered, with the answer.
    pub(crate) refused: Vec<String>,
    /// Writes through the failed member acknowledged after its log failed (committed by the
    /// quorum; the member itself cannot apply them).
    pub(crate) acked_by_full_after: usize,
    /// From the first refusal to the next acknowledgement through the healthy member.
    pub(crate) gap: Option<Duration>,
}

/// Writes through `vias` in turn until the log of member `full` has failed (its log shows
/// `marker`) and `healthy` acknowledged `ACKS_AFTER_FAILURE` more writes. `strict`: `healthy`
/// must never refuse one.
pub(crate) fn write_until_failed(
    cluster: &Cluster,
    full: usize,
    vias: &[SocketAddr],
    healthy: SocketAddr,
    strict: bool,
    marker: &str,
) -> Seen {
    let full_addr = addr(&cluster.agents()[full].client_url());
    let mut seen = Seen {
        acked: Vec::new(),
        refused: Vec::new(),
        acked_by_full_after: 0,
        gap: None,
    };
    let mut acks_after_failure = 0;
    let mut first_refusal: Option<Instant> = None;
    for i in 0..MAX_WRITES {
        let failed = cluster.agents()[full].log().contains(marker);
        if failed && acks_after_failure >= ACKS_AFTER_FAILURE {
            return seen;
        }
        let via = vias[i % vias.len()];
        let key = format!("/disk/k{i}");
        let v = value(i);
        let answer = http(
            via,
            "PUT",
            &format!("/v2/keys{key}"),
            &format!("value={v}"),
            WRITE_DEADLINE,
        );
        let refusal = match answer {
            Ok((200 | 201, _)) => {
                if failed && via == healthy {
                    acks_after_failure += 1;
                    if seen.gap.is_none() {
                        seen.gap = first_refusal.map(|t| t.elapsed());
                    }
                }
                if failed && via == full_addr {
                    seen.acked_by_full_after += 1;
                }
                seen.acked.push((key, v));
                continue;
            }
            Ok((status, body)) => {
                assert!(status >= 500, "{key}: http {status}: {body}");
                format!("{key}: http {status}: {}", body.trim())
            }
            Err(Failure::NotSent(why) | Failure::Lost(why)) => format!("{key}: {why}"),
        };
        assert!(
            !(strict && via == healthy),
            "the healthy member refused {refusal}"
        );
        seen.refused.push(refusal);
        if first_refusal.is_none() {
            first_refusal = Some(Instant::now());
            if !strict {
                wait_for_other_leader(cluster, full);
            }
        }
    }
    panic!(
        "no recovery after {MAX_WRITES} writes: {} acknowledged, {} after the log failed ({}), \
         the last refusals:\n{}\n{} bytes free",
        seen.acked.len(),
        acks_after_failure,
        if cluster.agents()[full].log().contains(marker) {
            "it did"
        } else {
            "it did not"
        },
        seen.refused[seen.refused.len().saturating_sub(3)..].join("\n"),
        nix::sys::statvfs::statvfs(cluster.agents()[full].data_dir())
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or_default()
    );
}

/// Waits until a member other than `full` says it leads.
pub(crate) fn wait_for_other_leader(cluster: &Cluster, full: usize) {
    let states = || {
        (0..cluster.agents().len())
            .map(|j| {
                let state = cluster.get(j, "/v2/stats/self").map(|(_, body)| {
                    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["state"]
                        .to_string()
                });
                format!("{}: {state:?}", cluster.agents()[j].name())
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    wait_until(RECOVERY_DEADLINE, "another member to lead", || {
        (0..cluster.agents().len()).any(|j| {
            j != full
                && cluster
                    .get(j, "/v2/stats/self")
                    .is_some_and(|(_, body)| body.contains("\"StateLeader\""))
        })
    })
    .unwrap_or_else(|e| panic!("{e}; the members say {}", states()));
}

/// What the agent logs when its log cannot be written.
const NO_SPACE: &str = "No space left on device";

/// A small file system under member `i`'s data, filled but for the headroom, and the filler
/// file that frees the space when removed. Restarts the member on it.
fn small_disk(cluster: &mut Cluster, i: usize) -> (Tmpfs, PathBuf) {
    let data = cluster.agents()[i].data_dir().to_path_buf();
    cluster.kill(i);
    let saved = data.with_extension("saved");
    fs::rename(&data, &saved).expect("move the data aside");
    fs::create_dir(&data).expect("create the mount point");
    let disk = Tmpfs::mount(&data, DISK_BYTES);
    copy_tree(&saved, &data);
    let filler_path = data.join("filler");
    let mut filler = fs::File::create(&filler_path).expect("create the filler");
    let chunk = vec![0u8; 64 << 10];
    while disk.free_bytes() > HEADROOM_BYTES + chunk.len() as u64 {
        filler.write_all(&chunk).expect("write the filler");
    }
    drop(filler);
    cluster
        .restart(i)
        .expect("the member starts on the small disk");
    (disk, filler_path)
}

/// What member `i` shows once its log failed, for the test's output; the checks that hold
/// whatever it does: no panic, no stale quorum read, and it exits saying why.
pub(crate) fn describe_failed(cluster: &Cluster, i: usize, pid: u32, seen: &Seen) -> String {
    let full = addr(&cluster.agents()[i].client_url());
    let (last_key, last_value) = seen
        .acked
        .last()
        .cloned()
        .expect("writes were acknowledged");
    let quorum = http(
        full,
        "GET",
        &format!("/v2/keys{last_key}?quorum=true"),
        "",
        WRITE_DEADLINE,
    );
    match &quorum {
        Ok((200, body)) => assert!(body.contains(&last_value), "stale quorum read: {body}"),
        Ok((status, _)) => assert!(*status >= 500, "quorum read: {quorum:?}"),
        Err(_) => {}
    }
    // A member whose Raft core stopped does not run on answering from a frozen state: it ends
    // with an error, for systemd's Restart=on-failure to bring it back.
    wait_until(RECOVERY_DEADLINE, "the failed member's agent exits", || {
        exited(pid)
    })
    .expect("the agent exits once its raft core stopped");
    let log = cluster.agents()[i].log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    assert!(
        log.contains("the raft core stopped"),
        "the agent does not say why it stopped:\n{log}"
    );
    format!(
        "{} writes acknowledged ({} through the failed member after its log failed), {} refused \
         or unanswered{}{}; the first acknowledgement after the first refusal came after {:?}\n\
         the failed member, process {}: /health {:?}, /v2/stats/self state {:?}; a plain read of {last_key}: {:?}; a quorum \
         read: {:?}\nits log's first errors:\n{}",
        seen.acked.len(),
        seen.acked_by_full_after,
        seen.refused.len(),
        if seen.refused.is_empty() { "" } else { ":\n" },
        seen.refused.join("\n"),
        seen.gap,
        if exited(pid) {
            "exited"
        } else {
            "still running"
        },
        http(full, "GET", "/health", "", WRITE_DEADLINE).map(|(_, b)| b),
        cluster.get(i, "/v2/stats/self").map(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["state"]
                .to_string()
        }),
        read(full, &last_key).map(|v| v.len()),
        quorum.map(|(status, body)| (status, body.len().min(200))),
        log.lines()
            .filter(|l| l.contains("ERROR"))
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Restarts member `i` (its cause of failure gone) and checks that every acknowledged write is
/// served by it and by `healthy`, and that it takes a new write.
pub(crate) fn recover(cluster: &mut Cluster, i: usize, healthy: SocketAddr, seen: &Seen) {
    let full = addr(&cluster.agents()[i].client_url());
    cluster
        .restart(i)
        .expect("the member starts again on its store");
    let (last_key, last_value) = seen
        .acked
        .last()
        .cloned()
        .expect("writes were acknowledged");
    wait_until(RECOVERY_DEADLINE, "the failed member catching up", || {
        read(full, &last_key).as_deref() == Some(last_value.as_str())
    })
    .expect("the member catches up");
    for (key, v) in &seen.acked {
        let got = wait_for(RECOVERY_DEADLINE, key, || read(full, key).ok_or(None))
            .unwrap_or_else(|e| panic!("acknowledged {key} lost on the failed member: {e}"));
        assert_eq!(&got, v, "{key} on the failed member");
        let got = read(healthy, key);
        assert_eq!(
            got.as_deref(),
            Some(v.as_str()),
            "{key} on a healthy member"
        );
    }
    let answer = http(
        full,
        "PUT",
        "/v2/keys/disk/after",
        "value=after",
        WRITE_DEADLINE,
    );
    assert!(
        matches!(answer, Ok((200 | 201, _))),
        "the member takes writes again: {answer:?}"
    );
}

#[test]
fn a_full_disk_on_a_follower_stops_it_and_loses_nothing() {
    private_mounts();
    let mut cluster = Cluster::start(3).expect("cluster starts");
    let leader = cluster.wait_leader().expect("a leader");
    let full = (0..3).find(|&i| i != leader).unwrap();
    let healthy = addr(&cluster.agents()[leader].client_url());
    let (disk, filler) = small_disk(&mut cluster, full);
    let pid = cluster.agents()[full].pid().expect("running");
    let full_addr = addr(&cluster.agents()[full].client_url());

    // Through the full member and a healthy one in turn: the healthy one never refuses.
    let seen = write_until_failed(
        &cluster,
        full,
        &[healthy, full_addr],
        healthy,
        true,
        NO_SPACE,
    );
    eprintln!(
        "follower's disk full: {}",
        describe_failed(&cluster, full, pid, &seen)
    );
    fs::remove_file(&filler).expect("remove the filler");
    recover(&mut cluster, full, healthy, &seen);
    // The mount goes first (lazily: the agents still hold files on it), then the agents and
    // the cluster's directory; a failed test drops them in the same order.
    drop(disk);
    drop(cluster);
}

#[test]
fn a_full_disk_on_the_leader_fails_over_and_loses_nothing() {
    private_mounts();
    let mut cluster = Cluster::start(3).expect("cluster starts");
    let full = cluster.wait_leader().expect("a leader");
    let (disk, filler) = small_disk(&mut cluster, full);
    // Restarting the member made another one leader: restart the leaders until it leads again.
    wait_for(RECOVERY_DEADLINE, "the small-disk member to lead", || {
        let leader = cluster.wait_leader().map_err(|e| Some(e.to_string()))?;
        if leader == full {
            return Ok(());
        }
        cluster
            .restart(leader)
            .map_err(|e| Some(format!("restart the leader: {e}")))?;
        Err(Some(format!("agent {leader} led")))
    })
    .expect("the member leads");
    let pid = cluster.agents()[full].pid().expect("running");
    let healthy = addr(&cluster.agents()[(full + 1) % 3].client_url());

    // Through a healthy member: refused (5xx or unanswered) while the leader fails, then
    // acknowledged again once another member leads.
    let seen = write_until_failed(&cluster, full, &[healthy], healthy, false, NO_SPACE);
    eprintln!(
        "leader's disk full: {}",
        describe_failed(&cluster, full, pid, &seen)
    );
    wait_for_other_leader(&cluster, full);
    fs::remove_file(&filler).expect("remove the filler");
    recover(&mut cluster, full, healthy, &seen);
    drop(disk);
    drop(cluster);
}
