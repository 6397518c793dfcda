//! The testbed itself: machines boot real systemd, are isolated from each other, take faults,
//! and leave nothing behind (after Drop, after SIGTERM, after their owner crashed).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_dbus::systemd1::{self, ManagerProxy, Mode, ServiceProxy, UnitProxy};
use flotilla_tests::testbed::instance::{Lock, ProcessId, Record};
use flotilla_tests::testbed::network::{self, NetworkError};
use flotilla_tests::testbed::{MachineError, Options, Testbed, wait_for, wait_for_async};
use zbus::Variant;
use zbus::proxy::CacheProperties;

const DEADLINE: Duration = Duration::from_secs(30);

/// Asserts that nothing `record` names exists any more: no process, network namespace, veth,
/// bridge, cgroup, directory, mount or state file. The caller holds the allocation [`Lock`], so
/// that no testbed of a test running in parallel takes the same names meanwhile.
fn assert_nothing_left(record: &Record) {
    for m in &record.machines {
        for p in m.init.iter().chain(&m.launcher) {
            assert!(
                !p.is_alive(),
                "process {} of {} is still running",
                p.pid,
                m.name
            );
        }
        assert!(
            !network::netns_exists(&m.netns),
            "netns {} is left",
            m.netns
        );
        assert!(!network::link_exists(&m.veth), "veth {} is left", m.veth);
        for cgroup in &m.cgroups {
            assert!(!cgroup.exists(), "cgroup {} is left", cgroup.display());
        }
    }
    if let Some(bridge) = &record.bridge {
        assert!(!network::link_exists(bridge), "bridge {bridge} is left");
    }
    assert!(!record.dir.exists(), "{} is left", record.dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = record.dir.to_string_lossy();
    assert!(
        !mounts.lines().any(|l| l.contains(dir.as_ref())),
        "a mount below {dir} is left"
    );
    assert!(
        !Record::path_of(record.id).exists(),
        "the state file of testbed {} is left",
        record.id
    );
}

/// Three plain machines shared by the tests that only start distinctly named units in them (no
/// faults): this module's smoke test and the systemd1 proxy tests.
pub(crate) fn shared_machines() -> &'static Testbed {
    Testbed::shared("plain machines", || Options::new(3)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_machines_boot_and_a_transient_unit_is_local_to_its_machine() {
    let tb = shared_machines();

    let mut names = Vec::new();
    let mut machine_ids = Vec::new();
    for node in tb.nodes() {
        let state = node.system_state().unwrap();
        if state == "degraded" {
            let failed = node
                .stdout(&["systemctl", "--failed", "--no-legend"])
                .unwrap();
            eprintln!("{} is degraded; failed units:\n{failed}", node.name());
        }
        assert!(
            state == "running" || state == "degraded",
            "{}: is-system-running says {state}",
            node.name()
        );
        names.push(node.stdout(&["hostname"]).unwrap());
        machine_ids.push(node.stdout(&["cat", "/etc/machine-id"]).unwrap());
        let addr = node
            .stdout(&["ip", "-4", "-br", "addr", "show", "eth0"])
            .unwrap();
        assert!(addr.contains(&format!("{}/24", node.addr())), "{addr}");
    }
    assert_eq!(names, ["node1", "node2", "node3"]);
    machine_ids.dedup();
    assert_eq!(
        machine_ids.len(),
        3,
        "machine ids are not distinct: {machine_ids:?}"
    );

    // Start a transient service on node2, over node2's own bus, through our proxy.
    let unit = "flotilla-smoke.service";
    let bus = tb.node(2).bus().await.unwrap();
    let manager = ManagerProxy::new(&bus).await.unwrap();
    assert_eq!(manager.virtualization().await.unwrap(), "container-other");
    manager
        .start_transient_unit(
            unit,
            Mode::Replace.as_str(),
            &[
                ("Description", Variant::from("flotilla testbed smoke test")),
                systemd1::exec_start(&["/bin/sleep", "infinity"]),
            ],
            &[],
        )
        .await
        .unwrap();
    let path = manager.get_unit(unit).await.unwrap();
    let unit_proxy = UnitProxy::builder(&bus)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    wait_for_async(
        DEADLINE,
        "the transient unit to be active on node2",
        || async {
            match unit_proxy.active_state().await {
                Ok(state) if state == "active" => Ok(()),
                Ok(state) => Err(Some(state)),
                Err(e) => Err(Some(e.to_string())),
            }
        },
    )
    .await
    .unwrap();
    assert!(unit_proxy.transient().await.unwrap());
    assert_eq!(unit_proxy.invocation_id().await.unwrap().len(), 16);
    let service = ServiceProxy::builder(&bus)
        .path(path)
        .build()
        .await
        .unwrap();
    assert!(service.main_pid().await.unwrap() > 1);
    assert_eq!(tb.node(2).unit_state(unit).unwrap(), "active");

    // The other machines have never heard of it.
    for i in [1, 3] {
        let node = tb.node(i);
        let bus = node.bus().await.unwrap();
        let manager = ManagerProxy::new(&bus).await.unwrap();
        let status = manager.list_units_by_names(&[unit]).await.unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(
            status[0].load_state,
            "not-found",
            "{}: {:?}",
            node.name(),
            status[0]
        );
        assert_eq!(status[0].active_state, "inactive", "{}", node.name());
        assert!(manager.get_unit(unit).await.is_err(), "{}", node.name());
        assert_eq!(node.unit_state(unit).unwrap(), "inactive");
    }
}

#[test]
fn nothing_is_left_after_drop() {
    let tb = Testbed::up(Options::new(2)).unwrap();
    let record = tb.record().clone();
    assert!(
        record
            .machines
            .iter()
            .all(|m| m.init.is_some_and(|p| p.is_alive()))
    );
    assert!(network::link_exists(record.bridge.as_deref().unwrap()));
    let _lock = Lock::take().unwrap();
    drop(tb);
    assert_nothing_left(&record);
}

#[test]
fn power_cycle_partition_and_slow_link() {
    let tb = Testbed::up(Options::new(2)).unwrap();
    let (node1, node2) = (tb.node(1), tb.node(2));

    // Its disk survives a power cut; the other machine has a disk of its own.
    node1
        .exec(&["sh", "-c", "echo kept > /var/lib/flotilla/mark"])
        .unwrap();
    let old_pid = node1.pid().unwrap();
    node1.power_off().unwrap();
    assert_eq!(node1.pid(), None);
    assert!(matches!(
        node1.exec(&["true"]),
        Err(MachineError::PoweredOff { .. })
    ));
    assert!(matches!(
        node2.system_state().unwrap().as_str(),
        "running" | "degraded"
    ));
    node1.power_on().unwrap();
    assert_ne!(node1.pid(), Some(old_pid));
    assert_eq!(
        node1.stdout(&["cat", "/var/lib/flotilla/mark"]).unwrap(),
        "kept"
    );
    assert!(
        !node2
            .exec(&["test", "-e", "/var/lib/flotilla/mark"])
            .unwrap()
            .status
            .success()
    );
    let boots = node1
        .stdout(&["journalctl", "--list-boots", "-q", "--no-pager"])
        .unwrap();
    assert_eq!(boots.lines().count(), 2, "{boots}");

    // node2 serves TCP; node1 reaches it, then not while partitioned, then again once healed.
    node2
        .exec(&[
            "systemd-run",
            "--unit=flotilla-http",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "7000",
            "-h",
            "/tmp",
        ])
        .unwrap();
    node2
        .wait_active("flotilla-http.service", DEADLINE)
        .unwrap();
    let target = format!("</dev/tcp/{}/7000", node2.addr());
    let connects = || {
        node1
            .exec(&["timeout", "2", "bash", "-c", &target])
            .unwrap()
            .status
            .success()
    };
    wait_for(DEADLINE, "node1 to connect to node2:7000", || {
        if connects() { Ok(()) } else { Err(None) }
    })
    .unwrap();
    node2.partition().unwrap();
    assert!(!node2.is_connected());
    assert!(!connects(), "node1 reached a partitioned node2");
    node2.heal().unwrap();
    assert!(node2.is_connected());
    wait_for(DEADLINE, "node1 to reach node2 again after heal", || {
        if connects() { Ok(()) } else { Err(None) }
    })
    .unwrap();

    // netem where the kernel has it, a clear error where it does not.
    match node2.slow_link(Duration::from_millis(20), Duration::from_millis(1)) {
        Ok(()) => {
            let qdisc = Command::new("tc")
                .args(["qdisc", "show", "dev", &node2.veth()])
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&qdisc.stdout).contains("netem"));
            node2.unslow_link().unwrap();
        }
        Err(MachineError::Network(NetworkError::NetemUnavailable { link })) => {
            eprintln!("no sch_netem in this kernel: slow_link on {link} is not exercised");
        }
        Err(e) => panic!("slow_link: {e}"),
    }
}

/// A stand-in for flotillad until the agent speaks sd_notify: reads its config, says READY=1.
const STAND_IN_AGENT: &str = "#!/bin/sh\n\
    # flotillad --config FILE, as far as the testbed can tell\n\
    [ \"$1\" = --config ] && [ -r \"$2\" ] || exit 64\n\
    systemd-notify --ready --pid=$$\n\
    exec sleep infinity\n";

#[test]
fn the_agent_runs_as_a_notify_service_with_its_own_config() {
    // Not in /tmp: every machine has a /tmp of its own.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let agent = dir.path().join("flotillad");
    std::fs::write(&agent, STAND_IN_AGENT).unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();

    let tb = Testbed::up(Options::new(2).agent(&agent)).unwrap();
    for node in tb.nodes() {
        assert_eq!(node.unit_state("flotillad.service").unwrap(), "active");
        let config = node
            .stdout(&["cat", "/etc/flotilla/flotilla.toml"])
            .unwrap();
        assert!(
            config.contains(&format!("name = \"{}\"", node.name())),
            "{config}"
        );
        assert!(
            config.contains(&format!("listen = [\"{}:2379\"", node.addr())),
            "{config}"
        );
        let peers = format!(
            "\"node1={}:2380\", \"node2={}:2380\"",
            tb.node(1).addr(),
            tb.node(2).addr()
        );
        assert!(config.contains(&peers), "{config}");
    }
    let node1 = tb.node(1);
    node1.stop_agent().unwrap();
    assert_eq!(node1.unit_state("flotillad.service").unwrap(), "inactive");
    assert_eq!(
        tb.node(2).unit_state("flotillad.service").unwrap(),
        "active"
    );
    node1.start_agent().unwrap();
    node1.power_off().unwrap();
    node1.power_on().unwrap();
    assert_eq!(node1.unit_state("flotillad.service").unwrap(), "active");
}

fn testbed_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_testbed"))
}

/// Starts `testbed up --foreground` and returns it with the id it printed.
fn foreground_testbed() -> (std::process::Child, u8) {
    let mut child = testbed_bin()
        .args(["up", "--nodes", "1", "--no-agent", "--foreground"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("testbed up printed nothing").unwrap();
    let id: u8 = first
        .strip_prefix("testbed ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line of testbed up: {first}"));
    for line in lines {
        if line.unwrap().starts_with("press Ctrl-C") {
            break;
        }
    }
    (child, id)
}

#[test]
fn sigterm_takes_a_foreground_testbed_down() {
    let (mut child, id) = foreground_testbed();
    let record = Record::load(id).unwrap().unwrap();
    assert!(record.machines[0].init.unwrap().is_alive());
    let _lock = Lock::take().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    assert_nothing_left(&record);
}

#[test]
fn the_leftovers_of_a_crashed_testbed_are_removed_by_the_next_run() {
    let (mut child, id) = foreground_testbed();
    let record = Record::load(id).unwrap().unwrap();
    let init: ProcessId = record.machines[0].init.unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The owner is gone, its machine is not.
    assert!(init.is_alive());
    assert!(Record::load(id).unwrap().unwrap().is_leftover());

    let tb = Testbed::up(Options::new(1)).unwrap();
    assert!(!init.is_alive(), "the crashed testbed's systemd still runs");
    assert!(!record.machines[0].launcher.unwrap().is_alive());
    if tb.id() == id {
        // The id was free again and reused: its names are the new testbed's now.
        assert_eq!(tb.record().owner, Some(ProcessId::current()));
        return;
    }
    let _lock = Lock::take().unwrap();
    match Record::load(id).unwrap() {
        // A test running in parallel took the freed id before we took the lock: the names are
        // its testbed's now (the crashed testbed's processes are gone, checked above).
        Some(reused) => assert_ne!(reused.owner, record.owner),
        None => assert_nothing_left(&record),
    }
}
