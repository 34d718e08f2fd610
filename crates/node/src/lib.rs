//! TODO: see ARCHITECTURE.md for this crate's contract.
