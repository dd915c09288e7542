//! Reading upstream's Dockerfiles and Kiln's renderings at one grain, for
//! the tests that compare them (`conformance_dockerfiles.rs`,
//! `recipes_upstream.rs`): [`builds`] cuts docker-base-images'
//! builds.expected into its Dockerfiles, [`facts`] reduces a Dockerfile to
//! facts, [`lcs`] matches two lists of facts in order.
//!
//! Each test file includes this with `mod upstream;`, so not every file
//! uses every piece.
#![allow(dead_code)]

pub mod builds;
pub mod deviations;
pub mod facts;
pub mod infra;

use std::collections::BTreeSet;

/// Indices of a longest common subsequence of `a` and `b`.
pub fn lcs(a: &[String], b: &[String]) -> (BTreeSet<usize>, BTreeSet<usize>) {
    let (n, m) = (a.len(), b.len());
    let mut t = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            t[i][j] = if a[i] == b[j] {
                t[i + 1][j + 1] + 1
            } else {
                t[i + 1][j].max(t[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut ia, mut ib) = (BTreeSet::new(), BTreeSet::new());
    while i < n && j < m {
        if a[i] == b[j] {
            ia.insert(i);
            ib.insert(j);
            i += 1;
            j += 1;
        } else if t[i + 1][j] >= t[i][j + 1] {
            i += 1;
        } else {
            j += 1;
        }
    }
    (ia, ib)
}
