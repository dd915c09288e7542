//! Two factories, one namespace: merging the lockfile another factory
//! published into this one's, a pure function of the two lockfiles.
//!
//! Each entry is one tag's publication, and the later publication of a
//! tag wins: a tag never moves back to a build that an other factory has
//! since replaced, and no factory loses the entries only the other has.
//! The replaced build stays in the winner's history, as a rebuild's would.

use super::lockfile::{Entry, HistoryEntry, Lockfile};

/// Why an entry taken from the other factory replaced this one's.
pub const SUPERSEDED: &str = "superseded by a later publication of another factory";

/// What a merge took from the other lockfile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// Entries only the other lockfile had.
    pub added: Vec<String>,
    /// Entries the other lockfile published later than this one.
    pub replaced: Vec<String>,
}

impl Merged {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty()
    }
}

/// Merge `theirs` into `ours`: an entry only they have is added; one they
/// published later (at another digest) replaces ours, which goes into its
/// history; everything else of ours stays.
pub fn merge(ours: &mut Lockfile, theirs: &Lockfile) -> Merged {
    let mut m = Merged::default();
    for (key, t) in &theirs.entries {
        match ours.entries.get(key) {
            None => {
                ours.entries.insert(key.clone(), t.clone());
                m.added.push(key.clone());
            }
            Some(o) if t.digest != o.digest && t.published_at > o.published_at => {
                let replaced = superseding(t, o);
                ours.entries.insert(key.clone(), replaced);
                m.replaced.push(key.clone());
            }
            Some(_) => {}
        }
    }
    m
}

/// `winner`, with `loser`'s build in its history unless it is there.
fn superseding(winner: &Entry, loser: &Entry) -> Entry {
    let mut e = winner.clone();
    if !e.history.iter().any(|h| h.digest == loser.digest) {
        e.history.push(HistoryEntry {
            digest: loser.digest.clone(),
            build_key: loser.build_key.clone(),
            published_at: loser.published_at,
            replaced_because: SUPERSEDED.into(),
        });
        e.history.sort_by_key(|h| std::cmp::Reverse(h.published_at));
    }
    e
}

/// Whether `theirs` already holds everything of `ours` that a merge
/// would keep: publishing `ours` again would add nothing.
pub fn covers(theirs: &Lockfile, ours: &Lockfile) -> bool {
    ours.entries.iter().all(|(k, o)| {
        theirs
            .entries
            .get(k)
            .is_some_and(|t| t.digest == o.digest || t.published_at > o.published_at)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    fn entry(tag: &str, digest: &str, age_days: i64) -> Entry {
        let json = serde_json::json!({
            "kind": "image",
            "platform": "linux",
            "os": "debian-13",
            "ocaml": "5.5.0",
            "repository": "kiln/opam",
            "tag": tag,
            "immutable_tag": format!("{tag}-{digest}"),
            "digest": format!("sha256:{digest}"),
            "arches": {},
            "build_key": format!("sha256:key-{digest}"),
            "inputs": {},
            "published_at": (Utc::now() - Duration::days(age_days)).to_rfc3339(),
        });
        serde_json::from_value(json).unwrap()
    }

    fn lock(entries: &[Entry]) -> Lockfile {
        let mut l = Lockfile::default();
        for e in entries {
            l.entries.insert(e.key(), e.clone());
        }
        l
    }

    #[test]
    fn an_entry_only_they_have_is_added_and_ours_stay() {
        let mut ours = lock(&[entry("a", "1", 1)]);
        let theirs = lock(&[entry("b", "2", 1)]);
        let m = merge(&mut ours, &theirs);
        assert_eq!(m.added, vec!["kiln/opam:b".to_string()]);
        assert!(m.replaced.is_empty());
        assert_eq!(ours.entries.len(), 2);
        assert_eq!(ours.entries["kiln/opam:a"].digest, "sha256:1");
    }

    #[test]
    fn their_later_publication_wins_and_ours_goes_into_its_history() {
        let mut ours = lock(&[entry("a", "old", 3)]);
        let theirs = lock(&[entry("a", "new", 1)]);
        let m = merge(&mut ours, &theirs);
        assert_eq!(m.replaced, vec!["kiln/opam:a".to_string()]);
        let e = &ours.entries["kiln/opam:a"];
        assert_eq!(e.digest, "sha256:new");
        assert_eq!(e.history.len(), 1);
        assert_eq!(e.history[0].digest, "sha256:old");
        assert_eq!(e.history[0].replaced_because, SUPERSEDED);
        // Merged twice: the history does not grow.
        let again = merge(&mut ours, &lock(&[entry("a", "new", 1)]));
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn their_earlier_publication_never_moves_ours_back() {
        let mut ours = lock(&[entry("a", "new", 1)]);
        let theirs = lock(&[entry("a", "old", 3)]);
        let m = merge(&mut ours, &theirs);
        assert!(m.is_empty(), "{m:?}");
        assert_eq!(ours.entries["kiln/opam:a"].digest, "sha256:new");
        assert!(ours.entries["kiln/opam:a"].history.is_empty());
    }

    #[test]
    fn the_same_digest_keeps_ours() {
        let mine = entry("a", "same", 3);
        let mut ours = lock(std::slice::from_ref(&mine));
        let m = merge(&mut ours, &lock(&[entry("a", "same", 1)]));
        assert!(m.is_empty());
        assert_eq!(ours.entries["kiln/opam:a"], mine);
    }

    #[test]
    fn covers_is_false_while_they_lack_or_hold_older_entries_of_ours() {
        let ours = lock(&[entry("a", "new", 1), entry("b", "x", 1)]);
        assert!(!covers(&lock(&[entry("a", "new", 1)]), &ours));
        assert!(!covers(
            &lock(&[entry("a", "old", 3), entry("b", "x", 1)]),
            &ours
        ));
        assert!(covers(
            &lock(&[entry("a", "newer", 0), entry("b", "x", 1)]),
            &ours
        ));
        assert!(covers(&ours, &ours));
        assert!(covers(&ours, &Lockfile::default()));
    }
}
