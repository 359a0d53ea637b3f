//! Development machine (tests): the shared helpers of the integration tests, one place for each.
//!
//! - [`data`]: deterministic streams and checksums.
//! - [`dom0`]: dom0's fake Qubes set up step by step (expected calls, job answers).
//! - [`proc`]: running programs (input, time limit), waiting, signals, ptys.
//! - [`tmp`]: temporary directories and executable scripts.
//! - [`world`]: the qubes-borg.Ssh world (qrexec stand-in roots, policy, destinations, doubles).
//! - [`vault`]: the split-SSH fixtures (ssh-agent, filter front socket, sshd, agent frames).

pub mod data;
pub mod dom0;
pub mod proc;
pub mod tmp;
pub mod vault;
pub mod world;

pub use data::*;
pub use proc::*;
pub use tmp::*;
pub use vault::*;
pub use world::*;

use std::path::{Path, PathBuf};

pub const CLIENT: &str = env!("CARGO_BIN_EXE_qubes-ssh-client");
pub const SERVICE: &str = env!("CARGO_BIN_EXE_qubes-ssh-service");
pub const RELAY: &str = env!("CARGO_BIN_EXE_qubes-relay");
pub const FILTER: &str = env!("CARGO_BIN_EXE_qubes-agent-filter");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Runs a command with test directories shown over fixed paths (read-only overlays in a mount
/// namespace): the programs have no test-only path overrides.
pub const OVERLAY_NS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/support/overlay-ns");

/// The qrexec stand-in's qrexec-client-vm (tests/sim/README.md).
pub fn qrexec_client_vm() -> PathBuf {
    Path::new(REPO).join("tests/sim/qrexec-client-vm")
}
