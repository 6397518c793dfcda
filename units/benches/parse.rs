//! Parsing speed over the Debian corpus (every unit file under the system's unit directories,
//! read once at start): `cargo bench -p flotilla-units`. Criterion prints MB/s for the
//! `bytes` group and files/s (as elem/s) for the `files` group.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flotilla_units::{Unit, parse, verify};

#[path = "../tests/it/system_units.rs"]
mod system_units;

use system_units::ROOTS;

fn corpus() -> Vec<(String, String)> {
    system_units::files()
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            Some((p.to_string_lossy().into_owned(), text))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let files = corpus();
    assert!(!files.is_empty(), "no unit files found under {ROOTS:?}");
    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
    eprintln!("corpus: {} files, {bytes} bytes", files.len());
    for (unit, throughput) in [
        ("bytes", Throughput::Bytes(bytes as u64)),
        ("files", Throughput::Elements(files.len() as u64)),
    ] {
        let mut group = c.benchmark_group(unit);
        group.throughput(throughput);
        group.bench_function("parse", |b| {
            b.iter(|| {
                for (name, text) in &files {
                    black_box(parse(name, black_box(text)));
                }
            })
        });
        group.bench_function("parse+semantic", |b| {
            b.iter(|| {
                for (name, text) in &files {
                    black_box(Unit::from_file(&parse(name, black_box(text)).file));
                }
            })
        });
        group.bench_function("verify", |b| {
            b.iter(|| {
                for (name, text) in &files {
                    black_box(verify(name, black_box(text), &[]));
                }
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
