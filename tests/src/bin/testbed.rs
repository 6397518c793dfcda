//! `testbed`: bring a cluster of systemd machines up and down.
fn main() {}
