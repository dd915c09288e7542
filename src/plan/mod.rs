//! Expanding the catalogue into targets, build keys and tags.
