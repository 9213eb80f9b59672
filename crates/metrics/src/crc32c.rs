//! CRC-32C (Castagnoli), the checksum of TFRecord framing, and TensorFlow's "masked" variant of it.
//!
//! A 256-entry table built at compile time; TensorBoard files are small, so no SIMD is needed.

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// The byte-at-a-time lookup table, computed at compile time.
const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TensorFlow's masked CRC: rotate right by 15 bits and add a constant, so that a CRC stored next to the
/// data it covers does not checksum to a trivial value.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_of_the_standard_test_string() {
        // The catalogued check value of CRC-32/ISCSI (= CRC-32C).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn rfc3720_test_vectors() {
        // RFC 3720 (iSCSI), appendix B.4.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn masking_matches_tensorboard_reference_values() {
        // Values printed by TensorBoard 2.21's `pywrap_tensorflow.masked_crc32c` (pure-Python stub).
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
    }
}
