//! Parquet datasets (the format of Hugging Face Hub dataset shards): each row becomes a JSON
//! object, so every reader that takes JSONL (prompts, SFT data, preference pairs) takes
//! Parquet too, with the same column mapping and the same skip-and-report policy.
//!
//! Snappy compression (the default of pyarrow and `datasets`) and uncompressed files are
//! supported; other codecs fail with an error naming the file.

use std::path::Path;

use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;

use crate::error::{io_err, Result, TrainError};

/// Whether `path` names a Parquet file (by extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Every row of `path` as a JSON object string (nested lists and structs included), or the
/// reason the row could not be decoded. Rows are numbered from 1 by their position.
pub fn json_rows(path: &Path) -> Result<Vec<std::result::Result<String, String>>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let bad = |e: parquet::errors::ParquetError| {
        TrainError::Other(format!("{}: not a readable Parquet file: {e}", path.display()))
    };
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    let rows = reader.get_row_iter(None).map_err(bad)?;
    Ok(rows
        .map(|row| match row {
            Ok(r) => {
                serde_json::to_string(&r.to_json_value()).map_err(|e| format!("row not representable as JSON: {e}"))
            }
            Err(e) => Err(format!("undecodable row: {e}")),
        })
        .collect())
}
