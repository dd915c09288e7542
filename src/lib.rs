//! Kiln: the base-image factory for OCaml CI.
//!
//! Data flows catalogue → plan → builders → registry → publish → api.
//! See ARCHITECTURE.md for the codemap.

pub mod api;
pub mod builders;
pub mod catalogue;
pub mod config;
pub mod daemon;
pub mod doctor;
pub mod lockfile;
pub mod model;
pub mod pipeline;
pub mod plan;
pub mod process;
pub mod publish;
pub mod refresh;
pub mod registry;
pub mod sources;
pub mod state;
pub mod status;
