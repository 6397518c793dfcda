//! Times the key space at the sizes the agent is benchmarked at (run with `--release`):
//! `cargo run --release -p flotilla-state --example kv_load -- 100000`.

use std::time::Instant;

use flotilla_state::kv::{Preconditions, Store, Write, WriteOp};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let now_ms = 1_795_558_649_452;
    let mut store = Store::default();
    let put = |value: String| WriteOp::Set {
        value,
        dir: false,
        ttl: None,
        refresh: false,
        prev: Preconditions::default(),
    };

    let t = Instant::now();
    for i in 0..n {
        let key = format!("/bench/dir{:03}/key{i:07}", i % 100);
        store
            .apply(&Write::new(key, put(format!("value-{i}")), now_ms))
            .expect("set succeeds");
    }
    report("set (new key, 100 dirs)", n, t);

    let t = Instant::now();
    for i in 0..n {
        let key = format!("/bench/dir{:03}/key{i:07}", i % 100);
        store.get(&key, false, false).expect("key exists");
    }
    report("get", n, t);

    let t = Instant::now();
    for i in 0..n {
        let key = format!("/bench/dir{:03}/key{i:07}", i % 100);
        store
            .apply(&Write::new(key, put(format!("again-{i}")), now_ms))
            .expect("set succeeds");
    }
    report("set (replace)", n, t);

    let t = Instant::now();
    let listed = store.get("/bench/dir042", false, true).expect("dir exists");
    println!(
        "list one dir of {} keys: {:?}",
        listed.node.nodes.map_or(0, |n| n.len()),
        t.elapsed()
    );
    let t = Instant::now();
    let body = store
        .get("/", true, true)
        .expect("root")
        .render(now_ms, false);
    println!(
        "recursive listing of everything rendered to {} bytes: {:?}",
        body.len(),
        t.elapsed()
    );

    let t = Instant::now();
    let snapshot = postcard::to_allocvec(&store).expect("serializes");
    println!(
        "postcard snapshot: {} bytes in {:?}",
        snapshot.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let back: Store = postcard::from_bytes(&snapshot).expect("deserializes");
    println!("postcard restore: {:?}", t.elapsed());
    assert_eq!(back, store);
}

fn report(what: &str, n: usize, t: Instant) {
    let elapsed = t.elapsed();
    println!(
        "{what}: {n} in {elapsed:?} ({:.2} µs each)",
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}
