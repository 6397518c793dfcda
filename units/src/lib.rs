//! systemd unit files as flotilla understands them: parsing, validation and serialization.
