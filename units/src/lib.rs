//! systemd unit files as flotilla understands them: parsing, validation and serialization.
//!
//! # Background
//!
//! flotilla schedules real systemd unit files (fleet's model). Everything systemd accepts must
//! be accepted and passed through unchanged; fleet's `[X-Fleet]` options and flotilla's
//! `[X-Flotilla]` options are read from the same files.
//!
//! # Design
//!
//! - [`syntax`]: the lossless layer. [`parse`] keeps every byte (comments, blank lines,
//!   continuation layout, line terminators), so [`UnitFile::serialize`] returns exactly the
//!   text parsed, for any input. Parsing never fails; it returns every diagnostic.
//! - [`mod@unit`]: the semantic view everyone else uses: [`Unit`] is sections (each once, in order
//!   of first appearance) of `Key=value` entries (repeated keys kept in order, continuations
//!   joined as systemd joins them, `Key=` resets kept). [`Unit::normalized`] is the normalized
//!   text form and [`Unit::content_hash`] the SHA-256 of it.
//! - [`name`]: unit names, types, templates and instances, `systemd-escape`;
//!   [`specifier`]: `%n %i %H …`; [`exec`]: `ExecStart=` command lines; [`dropin`]: which
//!   drop-ins apply in which order; [`check`]: systemd's load-time checks;
//!   [`fleet`] and [`flotilla`]: the typed scheduling and image options; [`verify`]: all of
//!   it for one file and its drop-ins.
//! - Diagnostics are `file:line:column: message`; errors are what makes systemd (or fleet)
//!   refuse a unit, warnings what systemd logs and ignores.
//!
//! **Architecture invariant**: pure. No I/O (the caller reads files and passes their text and
//! name), no async, no D-Bus, no knowledge of the cluster.
//!
//! # Current limitations
//!
//! - Known keys are systemd 252's (`keys.rs`, generated from `systemd
//!   --dump-configuration-items`): a key added by a later release gets an "unknown key"
//!   warning, never an error.
//! - Values are not type-checked except where systemd refuses the unit for a bad value
//!   (`Exec*=`, `WorkingDirectory=`, the service/socket/timer/path/mount checks).
//! - Nothing that needs the running system is checked (executables existing, dependencies
//!   existing, users), unlike `systemd-analyze verify`.
//! - Input is text (`&str`): a file that is not UTF-8 must be rejected or converted by the
//!   caller.
//!
//! # Tests, fuzzing, benchmark
//!
//! - `cargo test -p flotilla-units`: unit tests; snapshot tests over `tests/corpus/` (insta);
//!   property tests of the round trip (proptest); every unit file under `/lib/systemd`,
//!   `/usr/lib/systemd` and `/etc/systemd` must parse and verify without error; the files of
//!   `tests/corpus/systemd/` must be malformed for flotilla exactly when the real
//!   `systemd-analyze verify` says so; escaping must match the real `systemd-escape`.
//! - `scripts/fuzz SECONDS unit_file` (or `units/fuzz/run [SECONDS]`): libFuzzer on the parser
//!   (cargo-fuzz, stable toolchain with `RUSTC_BOOTSTRAP=1`).
//! - `cargo bench -p flotilla-units`: parsing speed over the system's unit files (MB/s and
//!   files/s).
//!
//! # Example
//!
//! ```
//! let text = "[Service]\nExecStart=/bin/echo \\\n  hello\n\n[X-Fleet]\nGlobal=true\n";
//! let parsed = flotilla_units::parse("hello.service", text);
//! assert_eq!(parsed.file.serialize(), text);
//! let unit = flotilla_units::Unit::from_file(&parsed.file);
//! assert_eq!(unit.value("Service", "ExecStart"), Some("/bin/echo    hello"));
//! let v = flotilla_units::verify("hello.service", text, &[]);
//! assert!(!v.has_errors());
//! assert!(v.fleet.global);
//! ```

pub mod check;
pub mod diagnostic;
pub mod dropin;
pub mod exec;
pub mod fleet;
pub mod flotilla;
mod keys;
pub mod name;
pub mod quadlet;
pub mod specifier;
pub mod syntax;
pub mod unit;
mod verify;

pub use diagnostic::{Diagnostic, Location, Severity};
pub use fleet::FleetOptions;
pub use flotilla::{Advertise, FlotillaOptions, ImageRef, Protocol};
pub use name::{UnitName, UnitType};
pub use syntax::{Parsed, UnitFile, parse};
pub use unit::{Entry, Section, Unit};
pub use verify::{Verified, base_name, verify};
