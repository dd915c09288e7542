//! The recipe template language: `{{name}}` replaced by a variable's value.
//! Unknown variables and unclosed braces are errors naming the line, so a
//! typo never reaches a build. The rendered bytes are what the build key
//! hashes.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{file}:{line}: unknown template variable {{{{{name}}}}}; known: {known}")]
    Unknown {
        file: String,
        line: usize,
        name: String,
        known: String,
    },
    #[error("{file}:{line}: unclosed '{{{{'")]
    Unclosed { file: String, line: usize },
}

pub fn render(
    file: &str,
    template: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut line = 1;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        line += rest[..start].matches('\n').count();
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed {
                file: file.into(),
                line,
            });
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(TemplateError::Unknown {
                    file: file.into(),
                    line,
                    name: name.into(),
                    known: vars.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_rejects() {
        let mut vars = BTreeMap::new();
        vars.insert("ocaml_version".to_string(), "5.5.0".to_string());
        assert_eq!(
            render("f", "a {{ ocaml_version }} b {{ocaml_version}}", &vars).unwrap(),
            "a 5.5.0 b 5.5.0"
        );
        let e = render("apt.Dockerfile", "x\ny {{opam}}", &vars).unwrap_err();
        assert_eq!(
            e.to_string(),
            "apt.Dockerfile:2: unknown template variable {{opam}}; known: ocaml_version"
        );
        assert!(matches!(
            render("f", "{{oops", &vars),
            Err(TemplateError::Unclosed { line: 1, .. })
        ));
    }
}
