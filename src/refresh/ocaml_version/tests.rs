//! The edits on a miniature `Releases` module written for these tests in
//! the layout of ocaml-version's (upstream's own history is replayed by
//! tests/ocaml_version_history.rs).

use super::*;

const ML_TEXT: &str = "let x = 1

module Releases = struct
  let v4_14_0 = of_string_exn \"4.14.0\"
  let v4_14 = v4_14_0

  let v5_0_0 = of_string_exn \"5.0.0\"
  let v5_0 = v5_0_0

  let v5_1_0 = of_string_exn \"5.1.0\"
  let v5_1 = v5_1_0

  let all_patches = [
    v4_14_0; v5_0_0 ]

  let all = [ v4_14;
              v5_0 ]

  let recent = [ v4_14; v5_0 ]

  let latest = v5_0

  let unreleased_betas = [ of_string_exn \"5.1.0~alpha1\" ]
  let dev = [ v5_1 ]

  let trunk = List.hd dev
end

let y = 2
";

const MLI_TEXT: &str = "module Releases : sig

  val v4_14_0 : t
  (** Version 4.14.0 *)

  val v4_14 : t
  (** Latest release in the 4.14.x series *)

  val v5_0_0 : t
  (** Version 5.0.0 *)

  val v5_0 : t
  (** Latest release in the 5.0.x series *)

  val all_patches : t list
end
";

fn v(s: &str) -> OcamlVersion {
    s.parse().unwrap()
}

fn vs(s: &[&str]) -> Vec<OcamlVersion> {
    s.iter().map(|x| v(x)).collect()
}

/// The miniature's own state.
fn now() -> Wanted {
    Wanted {
        released: vs(&["4.14.0", "5.0.0"]),
        dev: vs(&["5.1.0"]),
        unreleased_betas: vs(&["5.1.0~alpha1"]),
        latest: Some(v("5.0")),
        recent: vs(&["4.14", "5.0"]),
        significant: vec![],
    }
}

fn files() -> Files {
    Files {
        ml: ML_TEXT.into(),
        mli: Some(MLI_TEXT.into()),
        changes: None,
    }
}

#[test]
fn the_files_own_state_changes_nothing() {
    assert_eq!(patch(&files(), &now()).unwrap().files, files());
}

#[test]
fn a_patch_release_goes_after_its_predecessor_and_moves_the_alias() {
    let mut w = now();
    w.released = vs(&["4.14.0", "4.14.1", "5.0.0"]);
    let out = patch(&files(), &w).unwrap().files;
    let want_ml = ML_TEXT
        .replace(
            "  let v4_14 = v4_14_0\n",
            "  let v4_14_1 = of_string_exn \"4.14.1\"\n  let v4_14 = v4_14_1\n",
        )
        .replace("v4_14_0; v5_0_0 ]", "v4_14_0; v4_14_1; v5_0_0 ]");
    assert_eq!(out.ml, want_ml);
    let want_mli = MLI_TEXT.replace(
        "  val v4_14 : t\n",
        "  val v4_14_1 : t\n  (** Version 4.14.1 *)\n\n  val v4_14 : t\n",
    );
    assert_eq!(out.mli.unwrap(), want_mli);
}

#[test]
fn a_release_of_the_dev_series_moves_every_list() {
    let mut w = now();
    w.released = vs(&["4.14.0", "5.0.0", "5.1.0"]);
    w.dev = vec![];
    w.unreleased_betas = vec![];
    w.latest = Some(v("5.1"));
    w.recent = vs(&["4.14", "5.0", "5.1"]);
    let out = patch(&files(), &w).unwrap().files;
    let want_ml = ML_TEXT
        .replace("v4_14_0; v5_0_0 ]", "v4_14_0; v5_0_0; v5_1_0 ]")
        .replace("              v5_0 ]", "              v5_0; v5_1 ]")
        .replace("[ v4_14; v5_0 ]", "[ v4_14; v5_0; v5_1 ]")
        .replace("latest = v5_0", "latest = v5_1")
        .replace("[ of_string_exn \"5.1.0~alpha1\" ]", "[ ]")
        .replace("dev = [ v5_1 ]", "dev = [ ]");
    assert_eq!(out.ml, want_ml);
    let want_mli = MLI_TEXT.replace(
        "  val all_patches",
        "  val v5_1_0 : t\n  (** Version 5.1.0 *)\n\n  val v5_1 : t\n  (** Latest release in the 5.1.x series *)\n\n  val all_patches",
    );
    assert_eq!(out.mli.unwrap(), want_mli);
}

#[test]
fn a_new_trunk_gets_a_block_and_joins_dev() {
    let mut w = now();
    w.dev = vs(&["5.1.0", "5.2.0"]);
    let out = patch(&files(), &w).unwrap().files;
    let want = ML_TEXT
        .replace(
            "  let v5_1 = v5_1_0\n",
            "  let v5_1 = v5_1_0\n\n  let v5_2_0 = of_string_exn \"5.2.0\"\n  let v5_2 = v5_2_0\n",
        )
        .replace("dev = [ v5_1 ]", "dev = [ v5_1; v5_2 ]");
    assert_eq!(out.ml, want);
    assert_eq!(out.mli.unwrap(), MLI_TEXT, "dev versions are not exposed");
}

#[test]
fn a_newer_prerelease_replaces_the_older_in_place() {
    let mut w = now();
    w.unreleased_betas = vs(&["5.1.0~rc1"]);
    let out = patch(&files(), &w).unwrap().files;
    assert_eq!(out.ml, ML_TEXT.replace("5.1.0~alpha1", "5.1.0~rc1"));
}

#[test]
fn a_release_the_catalogue_lacks_stays() {
    let mut w = now();
    w.released = vs(&["5.0.0"]);
    w.recent = vs(&["4.14", "5.0"]);
    assert_eq!(patch(&files(), &w).unwrap().files.ml, ML_TEXT);
    assert_eq!(released_in(ML_TEXT).unwrap(), vs(&["4.14.0", "5.0.0"]));
}

#[test]
fn a_file_without_the_module_is_refused_naming_it() {
    let e = patch(
        &Files {
            ml: "let x = 1\n".into(),
            mli: None,
            changes: None,
        },
        &now(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ocaml_version.ml:1: no `module Releases = struct`"
    );
    let no_list = ML_TEXT.replace("let recent = [ v4_14; v5_0 ]", "let recent = v4_14");
    let e = ml::patch(&no_list, &now()).unwrap_err();
    assert_eq!(e.line, 19, "{e}");
    assert!(e.message.contains("`let recent =` is not a list"), "{e}");
}

#[test]
fn names_follow_upstream() {
    assert_eq!(ident(&v("4.08.1")), "v4_08_1");
    assert_eq!(ident(&v("5.4.0")), "v5_4_0");
    assert_eq!(ident(&v("3.07")), "v3_07_0");
    assert_eq!(ident(&v("3.07+2")), "v3_07_2");
    assert_eq!(series_ident(&v("4.14.3")), "v4_14");
}

#[test]
fn changes_entry_in_upstreams_words() {
    let e = entry(&[
        (v("5.4.1"), Status::Released),
        (v("4.14.3"), Status::Released),
    ]);
    assert_eq!(e.as_deref(), Some("Add OCaml 4.14.3 and 5.4.1"));
    let t = entry(&[(v("5.5.0"), Status::Trunk)]);
    assert_eq!(t.as_deref(), Some("Add OCaml 5.5 trunk version"));
    let old = "## v4.0.4 (2026-03-20)\n\n * Add OCaml 4.14.3 and 5.4.1 (@someone #86)\n";
    let new = add_entry(old, "Add OCaml 5.5.0");
    assert_eq!(new, format!("## unreleased\n\n * Add OCaml 5.5.0\n\n{old}"));
    assert_eq!(add_entry(&new, "Add OCaml 5.5.0"), new, "once only");
    let more = add_entry(&new, "Add OCaml 4.14.4");
    assert_eq!(
        more,
        format!("## unreleased\n\n * Add OCaml 5.5.0\n * Add OCaml 4.14.4\n\n{old}")
    );
    assert_eq!(add_entry(old, "Add OCaml 4.14.3 and 5.4.1"), old);
}
