//! The bridge from the model crate's tokenizer to the trainer's [`TextCodec`].

use aha_model::AhaTokenizer;

use crate::error::{Result, TrainError};
use crate::grpo::TextCodec;

impl TextCodec for AhaTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        AhaTokenizer::encode(self, text, false).map_err(TrainError::from)
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        let eos = self.eos_token_ids();
        let end = ids.iter().position(|id| eos.contains(id)).unwrap_or(ids.len());
        AhaTokenizer::decode(self, &ids[..end], false).map_err(TrainError::from)
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_ids().to_vec()
    }
}
