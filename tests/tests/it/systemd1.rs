//! flotilla-dbus's systemd1 proxies against a real systemd (a testbed machine): the reconciler's
//! flow of write unit file, `Reload`, `StartUnit`/`StopUnit` and follow `JobRemoved`.

use std::time::Duration;

use flotilla_dbus::systemd1::{ManagerProxy, Mode, ServiceProxy, UnitProxy};
use futures::StreamExt;
use zbus::OwnedObjectPath;
use zbus::proxy::CacheProperties;

const DEADLINE: Duration = Duration::from_secs(30);
const UNIT: &str = "flotilla-hello.service";

/// Waits for the `JobRemoved` of `job` and returns its result.
async fn job_result(
    jobs: &mut flotilla_dbus::systemd1::JobRemovedStream,
    job: &OwnedObjectPath,
) -> String {
    let wait = async {
        while let Some(signal) = jobs.next().await {
            let args = signal.args().unwrap();
            if &args.job == job {
                assert_eq!(args.unit, UNIT);
                return args.result;
            }
        }
        panic!("the JobRemoved stream ended");
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .unwrap_or_else(|_| panic!("no JobRemoved for {job} within {DEADLINE:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_file_is_reloaded_started_and_stopped_through_jobs_and_signals() {
    let node = crate::testbed::shared_machines().node(1);
    let unit_file = format!(
        "/proc/{}/root/run/systemd/system/{UNIT}",
        node.pid().unwrap()
    );
    std::fs::write(
        &unit_file,
        "[Unit]\nDescription=flotilla hello\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .unwrap();

    let bus = node.bus().await.unwrap();
    let manager = ManagerProxy::new(&bus).await.unwrap();
    assert!(
        manager
            .version()
            .await
            .unwrap()
            .starts_with(char::is_numeric)
    );
    manager.subscribe().await.unwrap();
    let mut jobs = manager.receive_job_removed().await.unwrap();
    manager.reload().await.unwrap();

    // Uncached: a cached property follows PropertiesChanged, which may arrive after JobRemoved.
    let unit = UnitProxy::builder(&bus)
        .path(manager.load_unit(UNIT).await.unwrap())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(unit.load_state().await.unwrap(), "loaded");
    assert_eq!(unit.active_state().await.unwrap(), "inactive");
    assert_eq!(
        unit.fragment_path().await.unwrap(),
        format!("/run/systemd/system/{UNIT}")
    );

    let job = manager
        .start_unit(UNIT, Mode::Replace.as_str())
        .await
        .unwrap();
    assert_eq!(job_result(&mut jobs, &job).await, "done");
    assert_eq!(unit.active_state().await.unwrap(), "active");
    assert_eq!(unit.sub_state().await.unwrap(), "running");
    assert!(unit.active_enter_timestamp().await.unwrap() > 0);
    assert_eq!(unit.job().await.unwrap().0, 0);
    let path = manager.get_unit(UNIT).await.unwrap();
    let service = ServiceProxy::builder(&bus)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(service.service_type().await.unwrap(), "simple");
    let main_pid = service.main_pid().await.unwrap();
    assert!(main_pid > 1);
    assert_eq!(
        manager.get_unit_by_pid(main_pid).await.unwrap().as_str(),
        unit.inner().path().as_str()
    );
    let active = manager.list_units_filtered(&["active"]).await.unwrap();
    let row = active
        .iter()
        .find(|u| u.name == UNIT)
        .expect("not listed as active");
    assert_eq!(row.sub_state, "running");
    assert!(
        manager
            .list_units()
            .await
            .unwrap()
            .iter()
            .any(|u| u.name == UNIT)
    );

    let job = manager
        .stop_unit(UNIT, Mode::Replace.as_str())
        .await
        .unwrap();
    assert_eq!(job_result(&mut jobs, &job).await, "done");
    assert_eq!(unit.active_state().await.unwrap(), "inactive");
    assert_eq!(service.result().await.unwrap(), "success");

    let absent = UnitProxy::builder(&bus)
        .path(manager.load_unit("flotilla-absent.service").await.unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(absent.load_state().await.unwrap(), "not-found");
}
