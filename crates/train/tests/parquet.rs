//! Parquet prompt files (fixture written by pyarrow: `scripts/make_parquet_fixture.sh`) read
//! through the same column mapping and skip policy as JSONL.

use std::path::PathBuf;

use aha_train::data::{read_jsonl, ColumnMap};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompts.parquet")
}

#[test]
fn parquet_rows_map_columns_and_skip_bad_rows_by_number() {
    let cols = ColumnMap { prompt: "question".into(), answer: "answer".into() };
    let (rows, skipped) = read_jsonl(&fixture(), &cols).expect("fixture reads");
    let prompts: Vec<&str> = rows.iter().map(|r| r.prompt.as_str()).collect();
    assert_eq!(prompts, ["Compute 3+4-1.", "Compute 2*5.", "Ünïcode: 7-2?"]);
    assert_eq!(rows[0].answer, "6");
    assert_eq!(rows[0].fields["numbers"], serde_json::json!([3, 4, 1]));
    let lines: Vec<usize> = skipped.0.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [3, 4], "null answer (row 3) and empty question (row 4): {skipped:?}");
    assert!(skipped.0[0].1.contains("answer"), "{:?}", skipped.0[0]);
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.parquet");
    std::fs::write(&path, b"{\"prompt\": \"not parquet\"}\n").expect("write");
    let err = read_jsonl(&path, &ColumnMap::default()).expect_err("must fail").to_string();
    assert!(err.contains("broken.parquet") && err.contains("Parquet"), "{err}");
}
