//! Split SSH (`src/agent/`): the filter with a real ssh-agent and sshd, the sys-backup agent
//! socket, and qubes-borg-keygen.

mod filter;
mod keygen;
mod socket;
