//! OCaml list literals in ocaml-version's source (`[ v5_3; v5_4 ]`,
//! `[ of_string_exn "5.4.0~rc1" ]`, `[ ]`) as spans of the file's text,
//! and the smallest edits a person makes to them: one item inserted after
//! its predecessor on the same line (`; v5_4_1`), one removed with its
//! separator, the list emptied to `[ ]`. Nothing is re-wrapped, so the
//! rest of the file keeps its bytes.

use std::ops::Range;

/// One `let NAME = [ … ]` of the file.
#[derive(Debug, Clone)]
pub struct List {
    /// Byte range of the text between `[` and `]`.
    pub inner: Range<usize>,
    /// Byte ranges of the items, trimmed, in order.
    pub items: Vec<Range<usize>>,
}

/// A replacement of `range` by `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub range: Range<usize>,
    pub text: String,
}

impl Edit {
    pub fn apply(&self, s: &mut String) {
        s.replace_range(self.range.clone(), &self.text);
    }
}

/// Byte offset of the first line (within `within`) that reads
/// `let NAME =` after its indentation.
pub fn binding(text: &str, within: &Range<usize>, name: &str) -> Option<usize> {
    let head = format!("let {name} =");
    let mut at = within.start;
    for line in text[within.clone()].split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix(&head)
            && (rest.is_empty() || rest.starts_with([' ', '\n']))
        {
            return Some(at + (line.len() - trimmed.len()));
        }
        at += line.len();
    }
    None
}

/// The list bound by `let NAME = [`, or `None` when the file has no such
/// binding; `Err` (with the byte offset) when its `[` or `]` is missing.
pub fn find(text: &str, within: &Range<usize>, name: &str) -> Option<Result<List, usize>> {
    let at = binding(text, within, name)?;
    let after_eq = at + format!("let {name} =").len();
    let rest = &text[after_eq..within.end];
    let open = match rest.find(|c: char| !c.is_whitespace()) {
        Some(i) if rest[i..].starts_with('[') => after_eq + i,
        _ => return Some(Err(at)),
    };
    let Some(close) = text[open..within.end].find(']').map(|i| open + i) else {
        return Some(Err(at));
    };
    let inner = open + 1..close;
    let mut items = Vec::new();
    let mut start = inner.start;
    for piece in text[inner.clone()].split(';') {
        let lead = piece.len() - piece.trim_start().len();
        let body = piece.trim();
        if !body.is_empty() {
            items.push(start + lead..start + lead + body.len());
        }
        start += piece.len() + 1;
    }
    Some(Ok(List { inner, items }))
}

impl List {
    /// The items' texts.
    pub fn texts<'a>(&self, text: &'a str) -> Vec<&'a str> {
        self.items.iter().map(|r| &text[r.clone()]).collect()
    }

    /// Insert `item` after item `after` (its index), or first when `None`.
    pub fn insert(&self, after: Option<usize>, item: &str) -> Edit {
        match (after, self.items.first()) {
            (Some(i), _) => {
                let end = self.items[i].end;
                Edit {
                    range: end..end,
                    text: format!("; {item}"),
                }
            }
            (None, Some(first)) => Edit {
                range: first.start..first.start,
                text: format!("{item}; "),
            },
            (None, None) => Edit {
                range: self.inner.clone(),
                text: format!(" {item} "),
            },
        }
    }

    /// Remove item `i` with one separator.
    pub fn remove(&self, i: usize) -> Edit {
        let range = if i + 1 < self.items.len() {
            self.items[i].start..self.items[i + 1].start
        } else if i > 0 {
            self.items[i - 1].end..self.items[i].end
        } else {
            return Edit {
                range: self.inner.clone(),
                text: " ".into(),
            };
        };
        Edit {
            range,
            text: String::new(),
        }
    }

    /// Replace item `i` by `item`.
    pub fn replace(&self, i: usize, item: &str) -> Edit {
        Edit {
            range: self.items[i].clone(),
            text: item.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> List {
        find(s, &(0..s.len()), "l").unwrap().unwrap()
    }

    fn edited(s: &str, e: Edit) -> String {
        let mut s = s.to_string();
        e.apply(&mut s);
        s
    }

    #[test]
    fn items_span_lines() {
        let s = "  let l = [\n    a; b;\n    c ]\n";
        assert_eq!(list(s).texts(s), ["a", "b", "c"]);
        let e = "  let l = [ ]\n";
        assert!(list(e).items.is_empty());
    }

    #[test]
    fn insert_after_predecessor_keeps_the_line() {
        let s = "let l = [\n    a; b;\n    c ]\n";
        let l = list(s);
        assert_eq!(
            edited(s, l.insert(Some(1), "x")),
            "let l = [\n    a; b; x;\n    c ]\n"
        );
        assert_eq!(
            edited(s, l.insert(Some(2), "x")),
            "let l = [\n    a; b;\n    c; x ]\n"
        );
        assert_eq!(
            edited(s, l.insert(None, "x")),
            "let l = [\n    x; a; b;\n    c ]\n"
        );
        let e = "let l = [ ]\n";
        assert_eq!(edited(e, list(e).insert(None, "x")), "let l = [ x ]\n");
    }

    #[test]
    fn remove_takes_one_separator() {
        let s = "let l = [ a; b; c ]\n";
        let l = list(s);
        assert_eq!(edited(s, l.remove(0)), "let l = [ b; c ]\n");
        assert_eq!(edited(s, l.remove(2)), "let l = [ a; b ]\n");
        let one = "let l = [ of_string_exn \"5.4.0~rc1\" ]\n";
        assert_eq!(edited(one, list(one).remove(0)), "let l = [ ]\n");
    }

    #[test]
    fn a_binding_is_found_by_its_whole_name() {
        let s = "let all_patches = [ a ]\nlet all = [ b ]\n";
        let renamed = s.replace("all =", "l =");
        assert_eq!(list(&renamed).texts(&renamed), ["b"]);
        assert!(find(s, &(0..s.len()), "al").is_none());
    }
}
