mod bus;
mod cluster;
mod dns;
mod images;
mod kv;
mod systemd1;
mod testbed;
