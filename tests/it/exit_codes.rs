//! The exit-code table (`src/exit.rs`) against every place that restates it.
