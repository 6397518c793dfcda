//! Integration tests of flotilla-units: one binary, a module per area.

mod corpus;
mod debian;
mod round_trip;
mod system_units;
mod systemd_analyze;
mod systemd_escape;
