//! The testbed: machines that run real systemd, in namespaces on this machine.
pub mod testbed;
