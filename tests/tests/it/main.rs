mod cluster;
mod images;
mod kv;
mod systemd1;
mod testbed;
