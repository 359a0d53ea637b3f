//! qubes-relay and the relay library (`src/relay/`).

mod api;
mod cli;
mod listen;
mod matrix;
mod prop;
mod robust;
