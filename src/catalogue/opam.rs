//! opam package names for a compiler, by the rules of opam-repository:
//! `ocaml-base-compiler.V`; variants before 4.12 as
//! `ocaml-variants.V+<variant>`; from 4.12 `ocaml-variants.V+options` plus
//! `ocaml-options-only-<opts>`; trunk as `ocaml-variants.X.Y.0+trunk`.

use super::{OcamlVersion, Status};

pub fn packages(v: &OcamlVersion, status: Status, variant: Option<&str>) -> Vec<String> {
    let base = v.release();
    if status == Status::Trunk {
        let mut out = vec![format!(
            "ocaml-variants.{}.{}.0+trunk",
            v.major_minor().0,
            v.major_minor().1
        )];
        if let Some(var) = variant {
            out.push(format!("ocaml-options-only-{}", var.replace('+', "-")));
        }
        return out;
    }
    let full = v.to_string();
    match variant {
        None => vec![format!("ocaml-base-compiler.{full}")],
        Some(var) if base < OcamlVersion::new(4, 12, 0) => {
            vec![format!("ocaml-variants.{full}+{var}")]
        }
        Some(var) => vec![
            format!("ocaml-variants.{full}+options"),
            format!("ocaml-options-only-{}", var.replace('+', "-")),
        ],
    }
}

impl OcamlVersion {
    fn major_minor(&self) -> (u32, String) {
        (self.major, self.minor.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let v = |s: &str| s.parse::<OcamlVersion>().unwrap();
        assert_eq!(
            packages(&v("5.5.0"), Status::Released, None),
            ["ocaml-base-compiler.5.5.0"]
        );
        assert_eq!(
            packages(&v("4.08.1"), Status::Released, Some("flambda")),
            ["ocaml-variants.4.08.1+flambda"]
        );
        assert_eq!(
            packages(&v("4.14.4"), Status::Released, Some("fp+flambda")),
            [
                "ocaml-variants.4.14.4+options",
                "ocaml-options-only-fp-flambda"
            ]
        );
        assert_eq!(
            packages(&v("5.6.0"), Status::Trunk, None),
            ["ocaml-variants.5.6.0+trunk"]
        );
        assert_eq!(
            packages(&v("5.5.0~beta1"), Status::Beta, None),
            ["ocaml-base-compiler.5.5.0~beta1"]
        );
    }
}
