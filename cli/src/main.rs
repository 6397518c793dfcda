//! flotctl: the command-line client of a flotilla cluster.
fn main() {}
