//! Integration tests of flotilla-units: one binary, a module per area.

mod corpus;
mod debian;
mod round_trip;
mod systemd_analyze;
mod systemd_escape;
