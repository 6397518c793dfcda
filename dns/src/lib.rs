//! Service discovery over DNS: a zone built from the cluster state, and its server.
