//! Development machine: the integration tests, one binary (`cargo test --test it`). Topic modules
//! per component (`relay`, `ssh`, `agent`, `dom0`) and for the exit-code table; shared helpers in
//! `support`.

mod agent;
mod dom0;
mod exit_codes;
mod layout;
mod relay;
mod ssh;
mod support;
