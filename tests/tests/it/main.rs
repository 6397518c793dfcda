mod bus;
mod cluster;
mod dns;
mod images;
mod kv;
mod packaging;
mod systemd1;
mod testbed;
