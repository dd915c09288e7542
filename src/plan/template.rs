//! The recipe template language: `{{name}}` replaced by a variable's value.
//! Unknown variables and unclosed braces are errors naming the line and
//! column of the `{{`, so a typo never reaches a build. The rendered bytes
//! are what the build key hashes. [`render`] stops at the first error;
//! [`problems`] lists them all (for `kiln catalogue validate`).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{file}:{line}:{column}: unknown variable {{{{{name}}}}} (known: {known})")]
    Unknown {
        file: String,
        line: usize,
        column: usize,
        name: String,
        known: String,
    },
    #[error("{file}:{line}:{column}: unclosed '{{{{'")]
    Unclosed {
        file: String,
        line: usize,
        column: usize,
    },
}

/// One `{{name}}` of a template: its byte range, its (trimmed) name, and
/// the 1-based line and column (in characters) of its `{{`.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: &'a str,
    line: usize,
    column: usize,
}

/// The placeholders of a template in order; an unclosed `{{` ends the
/// scan with its (line, column).
struct Scan<'a> {
    text: &'a str,
    /// Where the search for the next `{{` starts.
    pos: usize,
    /// Newlines are counted up to here: `line` is the line of this byte,
    /// `line_start` where that line starts.
    counted: usize,
    line: usize,
    line_start: usize,
    done: bool,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan {
            text,
            pos: 0,
            counted: 0,
            line: 1,
            line_start: 0,
            done: false,
        }
    }

    /// Count the newlines up to byte `to`.
    fn advance(&mut self, to: usize) {
        for (i, _) in self.text[self.counted..to].match_indices('\n') {
            self.line += 1;
            self.line_start = self.counted + i + 1;
        }
        self.counted = to;
    }
}

impl<'a> Iterator for Scan<'a> {
    type Item = Result<Placeholder<'a>, (usize, usize)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let Some(found) = self.text[self.pos..].find("{{") else {
            self.done = true;
            return None;
        };
        let start = self.pos + found;
        self.advance(start);
        let column = self.text[self.line_start..start].chars().count() + 1;
        let inner = start + 2;
        let Some(len) = self.text[inner..].find("}}") else {
            self.done = true;
            return Some(Err((self.line, column)));
        };
        self.pos = inner + len + 2;
        Some(Ok(Placeholder {
            start,
            end: self.pos,
            name: self.text[inner..inner + len].trim(),
            line: self.line,
            column,
        }))
    }
}

fn unknown(file: &str, p: &Placeholder<'_>, vars: &BTreeMap<String, String>) -> TemplateError {
    TemplateError::Unknown {
        file: file.into(),
        line: p.line,
        column: p.column,
        name: p.name.into(),
        known: vars.keys().cloned().collect::<Vec<_>>().join(", "),
    }
}

pub fn render(
    file: &str,
    template: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for p in Scan::new(template) {
        let p = p.map_err(|(line, column)| TemplateError::Unclosed {
            file: file.into(),
            line,
            column,
        })?;
        out.push_str(&template[last..p.start]);
        out.push_str(vars.get(p.name).ok_or_else(|| unknown(file, &p, vars))?);
        last = p.end;
    }
    out.push_str(&template[last..]);
    Ok(out)
}

/// Every error [`render`] could meet in `template`, in order (it stops at
/// the first): each unknown variable, and an unclosed `{{`.
pub fn problems(file: &str, template: &str, vars: &BTreeMap<String, String>) -> Vec<TemplateError> {
    Scan::new(template)
        .filter_map(|p| match p {
            Ok(p) if vars.contains_key(p.name) => None,
            Ok(p) => Some(unknown(file, &p, vars)),
            Err((line, column)) => Some(TemplateError::Unclosed {
                file: file.into(),
                line,
                column,
            }),
        })
        .collect()
}

/// A Dockerfile template up to the end of its stage `name` (`FROM … AS
/// name`, names compared as Docker does, ignoring case): everything before
/// the next `FROM` line, so the parser directives and earlier stages stay
/// and lines keep their numbers. `None` when no stage has that name.
pub fn through_stage<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let is_from = |line: &str| {
        line.split_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("FROM"))
    };
    let mut offset = 0;
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if found && is_from(line) {
            return Some(&text[..offset]);
        }
        if is_from(line) {
            let words: Vec<&str> = line.split_whitespace().collect();
            found = matches!(words.as_slice(), [.., r#as, n]
                if r#as.eq_ignore_ascii_case("AS") && n.eq_ignore_ascii_case(name));
        }
        offset += line.len();
    }
    found.then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_ends_before_the_next_from_and_keeps_what_precedes_it() {
        let df = "# escape=`\nFROM {{parent}} AS opam\nRUN a\n\nfrom opam as compiler\nRUN {{ocaml_version}}\n";
        assert_eq!(
            through_stage(df, "opam"),
            Some("# escape=`\nFROM {{parent}} AS opam\nRUN a\n\n")
        );
        assert_eq!(through_stage(df, "compiler"), Some(df));
        assert_eq!(through_stage(df, "OPAM").map(str::len), Some(42));
        assert_eq!(through_stage("FROM x\nRUN opam\n", "opam"), None);
    }

    #[test]
    fn renders_and_rejects() {
        let mut vars = BTreeMap::new();
        vars.insert("ocaml_version".to_string(), "5.5.0".to_string());
        assert_eq!(
            render("f", "a {{ ocaml_version }} b {{ocaml_version}}", &vars).unwrap(),
            "a 5.5.0 b 5.5.0"
        );
        let e = render("apt.Dockerfile", "x\ny  {{opam}}", &vars).unwrap_err();
        assert_eq!(
            e.to_string(),
            "apt.Dockerfile:2:4: unknown variable {{opam}} (known: ocaml_version)"
        );
        assert!(matches!(
            render("f", "{{oops", &vars),
            Err(TemplateError::Unclosed {
                line: 1,
                column: 1,
                ..
            })
        ));
    }

    #[test]
    fn problems_lists_every_error_with_line_and_column() {
        let vars = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let text = "{{a}} {{b}}\né {{\n c\n}} {{a}}\n\tx {{d}} {{e";
        let found: Vec<(usize, usize, String)> = problems("f", text, &vars)
            .into_iter()
            .map(|e| match e {
                TemplateError::Unknown {
                    line, column, name, ..
                } => (line, column, name),
                TemplateError::Unclosed { line, column, .. } => (line, column, "{{".into()),
            })
            .collect();
        assert_eq!(
            found,
            [
                (1, 7, "b".to_string()),
                (2, 3, "c".to_string()),
                (5, 4, "d".to_string()),
                (5, 10, "{{".to_string()),
            ]
        );
        assert!(problems("f", "{{a}} {{ a }}", &vars).is_empty());
        assert_eq!(render("f", "é{{a}}\n{{a}}", &vars).unwrap(), "é1\n1");
    }
}
