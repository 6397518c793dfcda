//! The scheduler's cost: `cargo bench -p flotilla-state --bench plan`. One plan for 1000
//! units across 3 and across 100 machines, in three situations: placing every unit (a fresh
//! cluster), re-planning a settled cluster (what the leader does after most changes), and
//! re-planning after one machine was lost (its units move).
//!
//! The units mix what real clusters use: most plain, some with `MemoryMax=`/`CPUQuota=`,
//! `MachineMetadata=`, `Conflicts=` between instances of a template, `MachineOf=`, and a few
//! global units.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use flotilla_state::machines::{Change as MachineChange, Machine, Status};
use flotilla_state::scheduler::{SchedulerConfig, plan};
use flotilla_state::units::{Change, Desired};
use flotilla_state::{Command, State};

fn cluster(machines: usize, units: usize) -> State {
    let mut state = State::default();
    for i in 0..machines {
        let name = format!("n{i:03}");
        let region = if i % 2 == 0 { "east" } else { "west" };
        state.apply(&Command::Machine(MachineChange::Up {
            machine: Machine {
                machine_id: format!("{name:0>32}"),
                name: name.clone(),
                addr: format!("10.213.{}.{}", i / 250, i % 250 + 1),
                metadata: BTreeMap::from([("region".to_owned(), region.to_owned())]),
                status: Status::Up,
                since_ms: 0,
            },
            now_ms: 0,
        }));
        state.apply(&Command::Machine(MachineChange::Capacity {
            name,
            memory_bytes: 64 << 30,
            cpus: 32,
        }));
    }
    for u in 0..units {
        let (name, fleet, service) = match u % 20 {
            0 => (format!("web@{u}.service"), "Conflicts=web@*.service", ""),
            1 => (
                format!("side{u}.service"),
                "",
                "MemoryMax=256M\nCPUQuota=25%",
            ),
            2 => (
                format!("east{u}.service"),
                "MachineMetadata=region=east",
                "",
            ),
            3 => (
                format!("log{u}.service"),
                "MachineOf=side{prev}.service",
                "",
            ),
            4 if u < 100 => (format!("global{u}.service"), "Global=true", ""),
            _ => (format!("app{u}.service"), "", "MemoryMax=128M"),
        };
        let fleet = fleet.replace("{prev}", &(u - 2).to_string());
        let text =
            format!("[Service]\nExecStart=/bin/sleep infinity\n{service}\n\n[X-Fleet]\n{fleet}\n");
        state.apply(&Command::Unit(Change::Submit {
            name: name.clone(),
            text: Some(text),
            replace: false,
        }));
        state.apply(&Command::Unit(Change::SetDesired {
            name,
            desired: Desired::Launched,
        }));
    }
    state
}

fn settled(mut state: State, config: &SchedulerConfig) -> State {
    for cmd in plan(&state, config).commands {
        state.apply(&cmd);
    }
    state
}

fn bench(c: &mut Criterion) {
    let config = SchedulerConfig::default();
    let mut group = c.benchmark_group("plan_1000_units");
    for machines in [3, 100] {
        let fresh = cluster(machines, 1000);
        let done = settled(fresh.clone(), &config);
        assert!(plan(&done, &config).commands.is_empty());
        let mut lost = done.clone();
        lost.apply(&Command::Machine(MachineChange::Lost {
            name: "n001".into(),
            now_ms: 1,
        }));
        group.bench_function(format!("{machines}_machines/fresh"), |b| {
            b.iter(|| plan(black_box(&fresh), &config))
        });
        group.bench_function(format!("{machines}_machines/settled"), |b| {
            b.iter(|| plan(black_box(&done), &config))
        });
        group.bench_function(format!("{machines}_machines/one_lost"), |b| {
            b.iter(|| plan(black_box(&lost), &config))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
