//! flotillad: the flotilla agent.
fn main() {}
