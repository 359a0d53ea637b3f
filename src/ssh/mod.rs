//! sys-backup-mnt and sys-backup: the `qubes-borg.Ssh` link, borg's ssh replaced by a qrexec call.
//!
//! - [`argv`]: the command line borg gives its ssh, vetted by an allowlist (both ends).
//! - [`header`]: the request header, client -> service.
//! - [`status`]: the status line, service -> client.
//! - [`destination`]: the destination configuration in sys-backup.
//! - [`command`]: the OpenSSH command line the service runs, and ssh's failures classified.
//! - [`client`]: `qubes-ssh-client`, borg's `BORG_RSH` in sys-backup-mnt.
//! - [`service`]: `qubes-ssh-service`, the `qubes-borg.Ssh` service in sys-backup.
//!
//! See docs/PROTOCOL.md.

pub mod argv;
pub mod client;
pub mod command;
pub mod destination;
pub mod header;
pub mod service;
pub mod status;
