//! A [`Target`] made by hand, for the unit tests of the decisions taken
//! over targets (the tag rules here, the pipeline's decisions) without
//! loading a catalogue.

use std::collections::BTreeMap;

use super::{Target, Uses};
use crate::catalogue::{Arch, BuilderKind, Status};

/// A required, reproducible Debian 13 target of OCaml 5.5.0 on `arch`,
/// whose output goes into `opam:<tag>`.
pub(crate) fn target(tag: &str, arch: Arch) -> Target {
    Target {
        platform: "linux".into(),
        os: "debian-13".into(),
        distro: "debian".into(),
        tier: 1,
        version: Some("5.5.0".parse().expect("a valid version")),
        status: Some(Status::Released),
        variant: None,
        arch,
        native: true,
        builder: BuilderKind::Docker,
        recipes: vec![],
        parent: None,
        vars: BTreeMap::new(),
        opam_packages: vec![],
        repository: "opam".into(),
        tag: tag.into(),
        aliases: vec![],
        required: true,
        reproducible: true,
        source_date_epoch: 0,
        os_version: None,
        multi_os: None,
        uses: Uses::default(),
        smoke: vec![],
    }
}
