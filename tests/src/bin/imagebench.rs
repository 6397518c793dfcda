//! imagebench: pull + unpack of one multi-layer image from a local `docker-registry`, flotilla
//! against `skopeo copy` + `umoci unpack`, on the same machine and registry.
//!
//! Each run starts from an empty store (flotilla) or an empty OCI layout and bundle (skopeo +
//! umoci); the two sides alternate so that a busy machine hurts both alike.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use flotilla_images::{PullOptions, Puller, Store};
use flotilla_tests::registry::{self, Entry, Format, Layer, Registry, Scratch};

/// Pull and unpack one multi-layer image N times per side; print mean, median and their ratio.
#[derive(Parser)]
struct Args {
    /// Runs per side.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Layers of the image (besides the busybox one).
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Uncompressed MiB per layer.
    #[arg(long, default_value_t = 8)]
    layer_mib: usize,
}

/// Files of varied sizes and compressibility: text-like runs mixed with pseudo-random bytes.
fn layer(index: usize, mib: usize) -> Layer {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut entries = vec![Entry::Dir(format!("layer{index}"), 0o755)];
    let mut left = mib << 20;
    let mut n = 0;
    while left > 0 {
        let size = ((next() % (256 << 10)) as usize + 512).min(left);
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            if next() % 2 == 0 {
                data.extend_from_slice(b"the quick brown fox jumps over the lazy dog 0123456789\n");
            } else {
                data.extend_from_slice(&next().to_le_bytes());
            }
        }
        data.truncate(size);
        let dir = format!("layer{index}/d{}", n % 16);
        if n < 16 {
            entries.push(Entry::Dir(dir.clone(), 0o755));
        }
        entries.push(Entry::File(format!("{dir}/f{n}"), 0o644, data));
        if n % 10 == 0 {
            entries.push(Entry::Symlink(format!("{dir}/l{n}"), format!("f{n}")));
        }
        left -= size;
        n += 1;
    }
    Layer(entries)
}

fn stats(samples: &[Duration]) -> (f64, f64) {
    let mut s: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (mean, median)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let registry = Registry::start().context("starting docker-registry")?;
    let mut spec = registry::busybox_image();
    spec.layers.truncate(1);
    for i in 0..args.layers {
        spec.layers.push(layer(i, args.layer_mib));
    }
    let layout = Scratch::new("bench-layout")?;
    registry::write_layout(layout.path(), "latest", &[spec])?;
    registry.push(layout.path(), "latest", "bench", Format::Oci)?;
    let reference = format!("{}/bench:latest", registry.host());
    println!(
        "image {reference}: {} layers ({} x {} MiB + busybox), {} runs per side",
        args.layers + 1,
        args.layers,
        args.layer_mib,
        args.runs
    );

    let runtime = tokio::runtime::Runtime::new()?;
    let puller = Puller::new(PullOptions {
        insecure_registries: vec![registry.host()],
        ..PullOptions::default()
    })?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let flotilla = || -> anyhow::Result<Duration> {
            let dir = Scratch::new("bench-store")?;
            let start = Instant::now();
            let store = Store::open(dir.path().join("images"))?;
            runtime.block_on(puller.pull(&store, &reference, None))?;
            Ok(start.elapsed())
        };
        let pair = || -> anyhow::Result<Duration> {
            let dir = Scratch::new("bench-umoci")?;
            let oci = dir.path().join("oci");
            let bundle: PathBuf = dir.path().join("bundle");
            let src = format!("docker://{reference}");
            let dest = format!("oci:{}:latest", oci.display());
            let image = format!("{}:latest", oci.display());
            let start = Instant::now();
            registry::run(
                "skopeo",
                &["copy", "--quiet", "--src-tls-verify=false", &src, &dest],
            )?;
            registry::run(
                "umoci",
                &["unpack", "--image", &image, bundle.to_str().unwrap_or("")],
            )?;
            Ok(start.elapsed())
        };
        let (a, b) = if run % 2 == 0 {
            let a = flotilla()?;
            (a, pair()?)
        } else {
            let b = pair()?;
            (flotilla()?, b)
        };
        println!(
            "run {}: flotilla {:.3} s, skopeo+umoci {:.3} s",
            run + 1,
            a.as_secs_f64(),
            b.as_secs_f64()
        );
        ours.push(a);
        theirs.push(b);
    }
    let (om, omed) = stats(&ours);
    let (tm, tmed) = stats(&theirs);
    println!("flotilla pull+unpack: mean {om:.3} s, median {omed:.3} s");
    println!("skopeo copy + umoci unpack: mean {tm:.3} s, median {tmed:.3} s");
    println!(
        "ratio (skopeo+umoci / flotilla): mean {:.2}x, median {:.2}x",
        tm / om,
        tmed / omed
    );
    Ok(())
}
