//! Shared helpers for the model crate's integration tests: fixture locations and comparisons.

#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::Tensor;

/// The committed fixtures of this crate (`tests/fixtures`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
}

/// A fetched third-party fixture under `fixtures-cache/` (or `$AHA_FIXTURES`). Missing: the test
/// fails when `CI` is set and is skipped (with a note) otherwise.
pub fn fetched(rel: &str) -> Option<PathBuf> {
    let root = std::env::var_os("AHA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures-cache"));
    let path = root.join(rel);
    if path.exists() {
        return Some(path);
    }
    let msg = format!("fixture {} missing: run scripts/fetch-fixtures.sh", path.display());
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Max |a − b| over two f32 tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
