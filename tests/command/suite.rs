//! The command line's integration tests, in one test binary: each module is one promise of the
//! `stripestore` command (see its header). One binary rather than one per file: each test
//! binary links the whole library, its dependencies and the shared helpers again, and `cargo
//! test` runs binaries one after another, so sixteen small binaries cost build time and left a
//! core idle while a binary's last test ran. (Not `main.rs`: cargo would take a `main.rs` under
//! `tests/` for a test of the library's package as well.)

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/nbdkit.rs"]
mod nbdkit;

mod alert_rules;
mod bad_input;
mod cli;
mod control;
mod history;
mod identity;
mod io_backend;
mod looking;
mod monitoring;
mod nbd;
mod nbd_member;
mod operators;
mod signatures;
mod simulate_cli;
mod snapshots;
mod zabbix;
