//! qubes-relay and the relay library (`src/relay/`).

mod api;
mod cli;
mod listen;
mod matrix;
mod pipes;
mod prop;
mod robust;
