//! Kiln: the base-image factory for OCaml CI.
//!
//! Data flows catalogue → plan → builders → registry → publish → api.
//! See ARCHITECTURE.md for the codemap.

pub mod config;
pub mod doctor;
pub mod process;
