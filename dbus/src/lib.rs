//! flotilla's D-Bus contract: the `org.flotilla.Agent1` interface and proxies for systemd.
pub mod agent1;
pub mod systemd1;
