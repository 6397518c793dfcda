mod systemd1;
mod testbed;
