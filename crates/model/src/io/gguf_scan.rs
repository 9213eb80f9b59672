//! A minimal GGUF header walker, used only to explain a file candle refuses: it finds the first
//! tensor whose ggml type candle cannot dequantise, so the error can name it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// ggml type ids candle 0.11 can read.
const SUPPORTED: [u32; 15] = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 30];

/// The ggml name of a type id.
pub fn ggml_type_name(ty: u32) -> &'static str {
    const NAMES: [&str; 31] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K",
        "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16",
        "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    match ty {
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        t => NAMES.get(t as usize).copied().unwrap_or("unknown"),
    }
}

/// The first tensor (name, type id) with a type candle cannot read, if any.
pub fn first_unsupported_tensor(path: &Path) -> std::io::Result<Option<(String, u32)>> {
    let mut r = Header { r: BufReader::new(File::open(path)?), wide: true };
    let _magic = r.u32()?;
    let version = r.u32()?;
    r.wide = version >= 2;
    let n_tensors = r.len()?;
    let n_kv = r.len()?;
    for _ in 0..n_kv {
        r.string()?;
        let ty = r.u32()?;
        r.skip_value(ty)?;
    }
    for _ in 0..n_tensors {
        let name = r.string()?;
        let dims = r.u32()?;
        for _ in 0..dims {
            r.len()?;
        }
        let ty = r.u32()?;
        r.skip(8)?;
        if !SUPPORTED.contains(&ty) {
            return Ok(Some((name, ty)));
        }
    }
    Ok(None)
}

/// A little-endian reader over the header; `wide` is false for GGUF v1 (32-bit lengths).
struct Header<R: Read> {
    r: R,
    wide: bool,
}

impl<R: Read> Header<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn len(&mut self) -> std::io::Result<u64> {
        if self.wide {
            Ok(u64::from_le_bytes(self.bytes()?))
        } else {
            self.u32().map(u64::from)
        }
    }

    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())?;
        if copied == n {
            Ok(())
        } else {
            Err(std::io::ErrorKind::UnexpectedEof.into())
        }
    }

    fn string(&mut self) -> std::io::Result<String> {
        let n = self.len()?;
        if n > 1 << 24 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "string too long"));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn skip_value(&mut self, ty: u32) -> std::io::Result<()> {
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => {
                let n = self.len()?;
                self.skip(n)
            }
            9 => {
                let item = self.u32()?;
                let n = self.len()?;
                for _ in 0..n {
                    self.skip_value(item)?;
                }
                Ok(())
            }
            _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "unknown metadata type")),
        }
    }
}
