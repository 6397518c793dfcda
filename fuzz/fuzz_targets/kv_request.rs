//! Fuzz target for etcd v2 keys requests as the agent's HTTP layer decodes them: the path
//! percent-decoded, the form body and the query through `form_urlencoded`, then
//! `flotilla_state::kv::v2::parse`; every write that parses is applied to one `Store`.
//!
//! Input: requests separated by an empty line, each `METHOD URI` on its first line and the form
//! body after it (`PUT /v2/keys/a?prevExist=false` + `value=1`). Checked: nothing panics, every
//! answer renders as JSON, a successful set is read back with its value, and the store's index
//! is the last event's.

#![no_main]

use flotilla_state::kv::v2::{self, Limits, V2Request};
use flotilla_state::kv::{Store, WriteOp};
use libfuzzer_sys::fuzz_target;

/// The agent's clock at the first request (2026); each request is a second later.
const START_MS: u64 = 1_780_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let limits = Limits::default();
    let mut store = Store::default();
    for (i, request) in text.split("\n\n").take(32).enumerate() {
        let now = START_MS + 1000 * i as u64;
        store.expire(now);
        let (line, body) = request.split_once('\n').unwrap_or((request, ""));
        let (method, uri) = line.split_once(' ').unwrap_or((line, "/v2/keys/"));
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        // As `agent/src/api/keys.rs` `handle`: body parameters first (not for GET or HEAD),
        // then the query.
        let mut params: Vec<(String, String)> = Vec::new();
        if method != "GET" && method != "HEAD" {
            params.extend(form_urlencoded::parse(body.as_bytes()).into_owned());
        }
        if let Some(q) = query {
            params.extend(form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        let key = key_of(path);
        let parsed = match v2::parse(method, &key, &params, now, &limits) {
            Ok(parsed) => parsed,
            Err(e) => {
                json(&e.render());
                continue;
            }
        };
        match parsed {
            V2Request::Get {
                key,
                recursive,
                sorted,
                ..
            } => match store.get(&key, recursive, sorted) {
                Ok(ev) => json(&ev.render(now, false)),
                Err(e) => json(&e.render()),
            },
            V2Request::Watch {
                key,
                recursive,
                wait_index,
                ..
            } => match store.watch_history(&key, recursive, wait_index.unwrap_or(0)) {
                Ok(Some(ev)) => json(&ev.render(now, false)),
                Ok(None) => {}
                Err(e) => json(&e.render()),
            },
            V2Request::Write(w) => match store.apply(&w) {
                Ok(ev) => {
                    json(&ev.render(now, w.no_value_on_success));
                    assert_eq!(ev.index(), store.index(), "{w:?} -> {ev:?}");
                    if matches!(
                        &w.op,
                        WriteOp::Set {
                            dir: false,
                            refresh: false,
                            ..
                        }
                    ) {
                        let read = store
                            .get(&ev.node.key, false, false)
                            .unwrap_or_else(|e| panic!("{w:?} -> {ev:?}, then {e:?}"));
                        assert_eq!(read.node.value, ev.node.value, "{w:?}");
                    }
                }
                Err(e) => json(&e.render()),
            },
        }
    }
});

/// The key path after `/v2/keys`, percent-decoded; `/` for the root. A copy of
/// `agent/src/api/keys.rs` `key_of` (the agent is a binary crate): keep the two the same.
fn key_of(path: &str) -> String {
    let rest = path.strip_prefix("/v2/keys").unwrap_or(path);
    let decoded: String =
        form_urlencoded::parse(format!("k={}", rest.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
    if decoded.is_empty() {
        "/".to_string()
    } else {
        decoded
    }
}

/// Every answer the agent sends is JSON. Without serde_json's recursion limit of 128: a listing
/// of keys 64 levels deep nests twice as deep, which Go's decoder (etcdctl's) takes.
fn json(text: &str) {
    use serde::Deserialize as _;
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    if let Err(e) = serde_json::Value::deserialize(&mut de).and_then(|_| de.end()) {
        panic!("answer is not JSON ({e}): {text}");
    }
}
