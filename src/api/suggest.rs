//! "Did you mean": the closest known image names to an unknown one.
//!
//! Names are compared per token (`debian-13-ocaml-5.5` → `debian`, `13`,
//! `ocaml`, `5.5`) so a wrong OS release or series still finds its
//! neighbours, with edit distance on the whole name as the tie-break.

/// Up to `n` known `basename:tag` names closest to `name:tag`.
pub fn closest(known: &[String], name: &str, tag: &str, n: usize) -> Vec<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let wanted = format!("{base}:{tag}");
    let want_tokens: Vec<&str> = tokens(&wanted);
    let mut scored: Vec<(usize, usize, &String)> = known
        .iter()
        .map(|k| {
            let kt = tokens(k);
            let shared = want_tokens.iter().filter(|t| kt.contains(t)).count();
            let unshared = want_tokens.len() + kt.len() - 2 * shared;
            (unshared, levenshtein(&wanted, k), k)
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .filter(|(unshared, dist, _)| {
            *unshared < want_tokens.len() * 2 || *dist <= wanted.len() / 2
        })
        .take(n)
        .map(|(_, _, k)| k.clone())
        .collect()
}

fn tokens(s: &str) -> Vec<&str> {
    s.split([':', '-']).filter(|t| !t.is_empty()).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_neighbours() {
        let known: Vec<String> = [
            "opam:debian-13-ocaml-5.5",
            "opam:debian-12-ocaml-5.5",
            "opam:alpine-3.22-ocaml-5.5",
            "opam:debian-13-ocaml-4.14",
            "macos:macos-homebrew-ocaml-5.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let s = closest(&known, "ocaml/opam", "debian-14-ocaml-5.5", 2);
        assert_eq!(s, ["opam:debian-12-ocaml-5.5", "opam:debian-13-ocaml-5.5"]);
        let s = closest(&known, "ocaml/opam", "debain-13-ocaml-5.5", 1);
        assert_eq!(s, ["opam:debian-13-ocaml-5.5"]);
        assert!(closest(&known, "x", "zzzzzzzzzzzzzzzzzzzzzz", 3).is_empty());
    }
}
