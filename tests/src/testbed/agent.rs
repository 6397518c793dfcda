//! What a testbed machine is given to run flotillad: its `/etc/flotilla/flotilla.toml` and a
//! `flotillad.service` for its `/run/systemd/system`. Pure text, no I/O.

use std::net::Ipv4Addr;
use std::path::Path;

/// The agent's client API port (etcd's client port).
pub const API_PORT: u16 = 2379;
/// The agent's peer (Raft) port.
pub const PEER_PORT: u16 = 2380;
/// The agent's DNS port (each machine has its own network namespace: no clash).
pub const DNS_PORT: u16 = 53;
/// The agent's unit in every machine.
pub const UNIT: &str = "flotillad.service";

/// A member of the cluster, as the agent's config lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The machine's name (its host name), e.g. `node1`.
    pub name: String,
    /// The machine's address on the testbed's bridge.
    pub addr: Ipv4Addr,
}

/// `/etc/flotilla/flotilla.toml` of member `me` of `members` (keys from DESIGN.md).
pub fn config(me: &Member, members: &[Member]) -> String {
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("\"{}={}:{PEER_PORT}\"", m.name, m.addr))
        .collect();
    format!(
        "# Written by the flotilla testbed for machine {name}.\n\
         name = \"{name}\"\n\
         data_dir = \"/var/lib/flotilla\"\n\
         \n\
         [cluster]\n\
         listen_peer = \"{addr}:{PEER_PORT}\"\n\
         advertise_peer = \"{addr}:{PEER_PORT}\"\n\
         initial_cluster = [{initial}]\n\
         # Short, so that tests see a powered-off machine lost and its units moved soon.\n\
         heartbeat_interval = \"500ms\"\n\
         machine_lost_after = \"5s\"\n\
         \n\
         [api]\n\
         listen = [\"{addr}:{API_PORT}\", \"127.0.0.1:{API_PORT}\"]\n\
         \n\
         [dns]\n\
         # Loopback for the machine's own resolver, the bridge address for the other machines.\n\
         listen = [\"127.0.0.1:{DNS_PORT}\", \"{addr}:{DNS_PORT}\"]\n\
         \n\
         [machine]\n\
         # Served as TXT at {name}.node.flotilla.internal; MachineMetadata=node={name} places on it.\n\
         metadata = {{ node = \"{name}\" }}\n",
        name = me.name,
        addr = me.addr,
        initial = initial.join(", "),
    )
}

/// `flotillad.service` running `agent` (a path on the shared root file system).
pub fn unit(agent: &Path) -> String {
    format!(
        "# Written by the flotilla testbed: the agent of this machine.\n\
         [Unit]\n\
         Description=flotilla agent (testbed)\n\
         # The agent talks to systemd over the system bus.\n\
         Requires=dbus.socket\n\
         After=dbus.socket\n\
         \n\
         [Service]\n\
         # READY=1 once its sockets are bound and its D-Bus objects are served.\n\
         Type=notify\n\
         ExecStart={agent} --config /etc/flotilla/flotilla.toml\n\
         Environment=RUST_BACKTRACE=1\n\
         # Faults are injected by the tests (stop-agent, power-off): no restarts behind their back.\n\
         Restart=no\n\
         TimeoutStartSec=30\n",
        agent = agent.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<Member> {
        (1..=3)
            .map(|i| Member {
                name: format!("node{i}"),
                addr: Ipv4Addr::new(10, 213, 7, 10 + i),
            })
            .collect()
    }

    #[test]
    fn config_lists_every_member_and_listens_on_the_machine_address() {
        let members = members();
        let text = config(&members[1], &members);
        assert_eq!(
            text,
            "# Written by the flotilla testbed for machine node2.\n\
             name = \"node2\"\n\
             data_dir = \"/var/lib/flotilla\"\n\
             \n\
             [cluster]\n\
             listen_peer = \"10.213.7.12:2380\"\n\
             advertise_peer = \"10.213.7.12:2380\"\n\
             initial_cluster = [\"node1=10.213.7.11:2380\", \"node2=10.213.7.12:2380\", \"node3=10.213.7.13:2380\"]\n\
             # Short, so that tests see a powered-off machine lost and its units moved soon.\n\
             heartbeat_interval = \"500ms\"\n\
             machine_lost_after = \"5s\"\n\
             \n\
             [api]\n\
             listen = [\"10.213.7.12:2379\", \"127.0.0.1:2379\"]\n\
             \n\
             [dns]\n\
             # Loopback for the machine's own resolver, the bridge address for the other machines.\n\
             listen = [\"127.0.0.1:53\", \"10.213.7.12:53\"]\n\
             \n\
             [machine]\n\
             # Served as TXT at node2.node.flotilla.internal; MachineMetadata=node=node2 places on it.\n\
             metadata = { node = \"node2\" }\n"
        );
    }

    #[test]
    fn unit_is_type_notify_and_runs_the_given_binary_with_its_config() {
        let text = unit(Path::new("/x/target/debug/flotillad"));
        assert!(text.contains("\nType=notify\n"));
        assert!(text.contains(
            "\nExecStart=/x/target/debug/flotillad --config /etc/flotilla/flotilla.toml\n"
        ));
    }
}
