//! Waiting for a condition with a deadline, never a fixed sleep.
//!
//! The condition is checked at once, then again after growing pauses (10 ms doubling up to
//! 200 ms), until it holds or the deadline passes. The pauses only bound how often a condition is
//! re-checked; nothing assumes that anything is done after any of them.

use std::future::Future;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A condition did not hold before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {after:?} waiting for {what}{}", last_seen.as_deref().map(|s| format!(" (last seen: {s})")).unwrap_or_default())]
pub struct WaitError {
    /// What was waited for, as the caller described it.
    pub what: String,
    /// How long it was waited for.
    pub after: Duration,
    /// The last state observed, if the condition reported one.
    pub last_seen: Option<String>,
}

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// Waits until `condition` returns true, at most `deadline`.
pub fn wait_until(
    deadline: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) -> Result<(), WaitError> {
    wait_for(
        deadline,
        what,
        || if condition() { Ok(()) } else { Err(None) },
    )
}

/// Waits until `probe` returns `Ok`, at most `deadline`, and returns its value; `Err(Some(s))`
/// says what was seen instead and ends up in the timeout's message.
pub fn wait_for<T>(
    deadline: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, Option<String>>,
) -> Result<T, WaitError> {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last_seen = match probe() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(WaitError {
                what: what.to_owned(),
                after: deadline,
                last_seen,
            });
        }
        std::thread::sleep(pause.min(deadline - elapsed));
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Stops `child` as an init system would: SIGTERM, then waits for it to exit (a blocking wait,
/// no polling); if it has not exited after `grace`, SIGKILL. Returns its exit status, `None`
/// if it had to be killed.
pub fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<Option<ExitStatus>> {
    use nix::sys::signal::{Signal, kill};
    // Our own child, not reaped until `wait` returns below: its pid cannot be reused meanwhile.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let (exited, exit_seen) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        let killed = exit_seen.recv_timeout(grace).is_err();
        if killed {
            let _ = kill(pid, Signal::SIGKILL);
        }
        killed
    });
    let status = child.wait();
    let _ = exited.send(());
    let killed = killer.join().unwrap_or(true);
    Ok((!killed).then_some(status?))
}

/// The async form of [`wait_for`], for conditions checked over D-Bus.
pub async fn wait_for_async<T, F, Fut>(
    deadline: Duration,
    what: &str,
    mut probe: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Option<String>>>,
{
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last_seen = match probe().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return Err(WaitError {
                what: what.to_owned(),
                after: deadline,
                last_seen,
            });
        }
        tokio::time::sleep(pause.min(deadline - elapsed)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt as _;

    use super::*;

    #[test]
    fn terminate_sends_sigterm_and_kills_what_ignores_it() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let status = terminate(&mut sleeper, Duration::from_secs(30)).unwrap();
        assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGTERM));
        // It says when its trap is set: a SIGTERM before that would end it.
        let mut stubborn = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; read -r line"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Held open: `Child::wait` would close it, and `read` would end at the end of input.
        let _input = stubborn.stdin.take();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready, "ready\n");
        assert_eq!(
            terminate(&mut stubborn, Duration::from_millis(300)).unwrap(),
            None
        );
    }

    #[test]
    fn a_condition_that_holds_returns_at_once() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "a true condition", || {
            calls += 1;
            true
        })
        .unwrap();
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_condition_that_never_holds_names_what_was_awaited() {
        let err = wait_for::<()>(Duration::from_millis(30), "the moon to turn blue", || {
            Err(Some("grey".to_owned()))
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 30ms waiting for the moon to turn blue (last seen: grey)"
        );
    }

    #[test]
    fn the_value_of_the_probe_is_returned() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(5), "the third call", || {
            n += 1;
            if n == 3 { Ok(n) } else { Err(None) }
        })
        .unwrap();
        assert_eq!(got, 3);
    }
}
