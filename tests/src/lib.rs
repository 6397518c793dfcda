//! The testbed: machines that run real systemd, in namespaces on this machine.
pub mod agents;
pub mod etcd;
pub mod history;
pub mod linearizability;
pub mod registry;
pub mod testbed;
