//! The digest API: serves pins from the published lockfile and refuses versions that are not complete.
