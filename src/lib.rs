//! Every qube: qubes-borg, BorgBackup for Qubes OS over qrexec (the library of every program).
//!
//! One library with small modules; the programs in `src/bin/` are thin wrappers around it.
//! Components are folders (`relay/`, `agent/`, `ssh/`); the files at the top are shared and
//! import no component. See `docs/ARCHITECTURE.md` for the map and the import rules.
#![forbid(unsafe_code)]

pub mod agent;
pub mod child;
pub mod codec;
pub mod dom0;
pub mod exit;
pub mod host_key;
pub mod job;
pub mod pipe;
pub mod relay;
pub mod safe_path;
pub mod ssh;
pub mod stderr_line;
pub mod tempdir;
pub mod validate;
