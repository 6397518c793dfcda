//! Replays etcd v2 keys requests against a [`Store`], one per line on stdin, printing etcd's
//! status and body for each: a way to compare the store with a real etcd, request by request.
//!
//! Input lines are JSON: `{"method":"PUT","path":"/message","params":[["value","hi"]]}`.
//! Output lines are `STATUS BODY` (BODY without its newline), or `WAIT` for a watch with no
//! event yet. `cargo run -p flotilla-state --example kv_replay < requests.jsonl`

use std::io::{BufRead, Write as _};

use flotilla_state::kv::Store;
use flotilla_state::kv::v2::{self, Limits, V2Request};

fn main() {
    let now_ms = 1_795_558_649_452;
    let limits = Limits::default();
    let mut store = Store::default();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin is readable");
        let request: serde_json::Value = serde_json::from_str(&line).expect("a JSON request");
        let method = request["method"].as_str().expect("method");
        let path = request["path"].as_str().expect("path");
        let params: Vec<(String, String)> = request["params"]
            .as_array()
            .expect("params")
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_owned(),
                    p[1].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let answer = match v2::parse(method, path, &params, now_ms, &limits) {
            Err(e) => format!("{} {}", e.http_status(), e.render()),
            Ok(V2Request::Get {
                key,
                recursive,
                sorted,
                ..
            }) => match store.get(&key, recursive, sorted) {
                Ok(e) => format!("{} {}", e.http_status(), e.render(now_ms, false)),
                Err(e) => format!("{} {}", e.http_status(), e.render()),
            },
            Ok(V2Request::Watch {
                key,
                recursive,
                wait_index,
                ..
            }) => match store.watch_history(&key, recursive, wait_index.unwrap_or(0)) {
                Ok(Some(e)) => format!("200 {}", e.render(now_ms, false)),
                Ok(None) => "WAIT".to_owned(),
                Err(e) => format!("{} {}", e.http_status(), e.render()),
            },
            Ok(V2Request::Write(w)) => match store.apply(&w) {
                Ok(e) => format!(
                    "{} {}",
                    e.http_status(),
                    e.render(now_ms, w.no_value_on_success)
                ),
                Err(e) => format!("{} {}", e.http_status(), e.render()),
            },
        };
        writeln!(out, "{}", answer.trim_end()).expect("stdout is writable");
    }
}
