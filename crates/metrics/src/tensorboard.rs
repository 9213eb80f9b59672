//! TensorBoard event files, written by hand: TFRecord framing plus the few protobuf fields of `Event`
//! that scalar summaries need, so that no protobuf dependency is pulled in.
//!
//! A record is `u64 length (LE) · u32 masked CRC-32C of those 8 bytes · data · u32 masked CRC-32C of data`.
//! The data is a serialised `tensorflow.Event`:
//!
//! ```text
//! message Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! message Summary { repeated Value value = 1; }
//! message Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! The first record of a file carries `file_version = "brain.Event:2"`, as TensorFlow's writer does.
//! [`read_event_file`] parses such files back (checking both checksums) for tests and tools.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::crc32c::masked_crc32c;
use crate::error::{MetricsError, Result};

/// The `file_version` string TensorBoard expects in the first event of a file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// One decoded event: either the file-version header or a set of scalar values at a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// The global step.
    pub step: i64,
    /// Set only on the header event.
    pub file_version: Option<String>,
    /// Scalar summaries: (tag, value).
    pub scalars: Vec<(String, f32)>,
}

/// Appends TFRecord-framed events to one event file, flushing after every event.
pub struct EventFileWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventFileWriter {
    /// Creates `path` (failing if it exists) and writes the file-version header event.
    pub fn create(path: &Path, wall_time: f64) -> Result<Self> {
        let file = File::options().write(true).create_new(true).open(path).map_err(|e| MetricsError::io(path, e))?;
        let mut writer = EventFileWriter { path: path.to_path_buf(), out: BufWriter::new(file) };
        let header = Event { wall_time, step: 0, file_version: Some(FILE_VERSION.to_string()), scalars: Vec::new() };
        writer.write_event(&header)?;
        Ok(writer)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event as a record and flushes it to the operating system.
    pub fn write_event(&mut self, event: &Event) -> Result<()> {
        let data = encode_event(event);
        write_record(&mut self.out, &data).and_then(|()| self.out.flush()).map_err(|e| MetricsError::io(&self.path, e))
    }
}

/// Writes one TFRecord: length, masked CRC of the length, data, masked CRC of the data.
pub fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Splits a TFRecord stream into its records, checking both checksums of each.
pub fn read_records(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (header, after) = split(rest, 12, "record header")?;
        let len_bytes = &header[..8];
        if le_u32(&header[8..12]) != masked_crc32c(len_bytes) {
            return Err(MetricsError::Event("length checksum mismatch".into()));
        }
        let len = usize::try_from(u64::from_le_bytes(to_array(len_bytes)))
            .map_err(|_| MetricsError::Event("record length overflows usize".into()))?;
        let (data, after) = split(after, len, "record data")?;
        let (crc, after) = split(after, 4, "data checksum")?;
        if le_u32(crc) != masked_crc32c(data) {
            return Err(MetricsError::Event("data checksum mismatch".into()));
        }
        records.push(data);
        rest = after;
    }
    Ok(records)
}

/// Reads and decodes every event of an event file.
pub fn read_event_file(path: &Path) -> Result<Vec<Event>> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| MetricsError::io(path, e))?;
    read_records(&bytes)?.into_iter().map(decode_event).collect()
}

fn split<'a>(bytes: &'a [u8], n: usize, what: &str) -> Result<(&'a [u8], &'a [u8])> {
    if bytes.len() < n {
        return Err(MetricsError::Event(format!("truncated {what}")));
    }
    Ok(bytes.split_at(n))
}

fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0u8; N];
    array.copy_from_slice(&bytes[..N]);
    array
}

fn le_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(to_array(bytes))
}

// ---- protobuf encoding ----

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Serialises an event as a `tensorflow.Event` protobuf message.
pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    put_key(&mut out, 1, WIRE_FIXED64);
    out.extend_from_slice(&event.wall_time.to_le_bytes());
    put_key(&mut out, 2, WIRE_VARINT);
    // int64 is encoded as its two's-complement bit pattern.
    put_varint(&mut out, event.step as u64);
    if let Some(version) = &event.file_version {
        put_bytes(&mut out, 3, version.as_bytes());
    }
    if !event.scalars.is_empty() {
        put_bytes(&mut out, 5, &encode_summary(&event.scalars));
    }
    out
}

fn encode_summary(scalars: &[(String, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in scalars {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, tag.as_bytes());
        put_key(&mut entry, 2, WIRE_FIXED32);
        entry.extend_from_slice(&value.to_le_bytes());
        put_bytes(&mut summary, 1, &entry);
    }
    summary
}

// ---- protobuf decoding ----

/// A cursor over a protobuf message that yields (field number, value) pairs.
struct Fields<'a> {
    rest: &'a [u8],
}

/// One field's payload, by wire type.
enum Payload<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (byte, rest) = split(self.rest, 1, "varint")?;
            self.rest = rest;
            value |= u64::from(byte[0] & 0x7F) << shift;
            if byte[0] & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(MetricsError::Event("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let (head, rest) = split(self.rest, n, "field")?;
        self.rest = rest;
        Ok(head)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Payload<'a>)>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let payload = match (key & 7) as u8 {
            WIRE_VARINT => Payload::Varint(self.varint()?),
            WIRE_FIXED64 => Payload::Fixed64(to_array(self.take(8)?)),
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| MetricsError::Event("field length overflows usize".into()))?;
                Payload::Bytes(self.take(len)?)
            }
            WIRE_FIXED32 => Payload::Fixed32(to_array(self.take(4)?)),
            other => return Err(MetricsError::Event(format!("unsupported wire type {other}"))),
        };
        Ok(Some((key >> 3, payload)))
    }
}

fn utf8(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| MetricsError::Event("tag is not UTF-8".into()))
}

/// Parses a `tensorflow.Event`, keeping the fields [`Event`] has and skipping all others.
pub fn decode_event(bytes: &[u8]) -> Result<Event> {
    let mut event = Event { wall_time: 0.0, step: 0, file_version: None, scalars: Vec::new() };
    let mut fields = Fields { rest: bytes };
    while let Some((field, payload)) = fields.next_field()? {
        match (field, payload) {
            (1, Payload::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
            (2, Payload::Varint(v)) => event.step = v as i64,
            (3, Payload::Bytes(b)) => event.file_version = Some(utf8(b)?),
            (5, Payload::Bytes(b)) => event.scalars.extend(decode_summary(b)?),
            _ => {}
        }
    }
    Ok(event)
}

fn decode_summary(bytes: &[u8]) -> Result<Vec<(String, f32)>> {
    let mut scalars = Vec::new();
    let mut fields = Fields { rest: bytes };
    while let Some((field, payload)) = fields.next_field()? {
        if let (1, Payload::Bytes(value)) = (field, payload) {
            if let Some(scalar) = decode_value(value)? {
                scalars.push(scalar);
            }
        }
    }
    Ok(scalars)
}

fn decode_value(bytes: &[u8]) -> Result<Option<(String, f32)>> {
    let (mut tag, mut value) = (None, None);
    let mut fields = Fields { rest: bytes };
    while let Some((field, payload)) = fields.next_field()? {
        match (field, payload) {
            (1, Payload::Bytes(b)) => tag = Some(utf8(b)?),
            (2, Payload::Fixed32(b)) => value = Some(f32::from_le_bytes(b)),
            _ => {}
        }
    }
    Ok(tag.zip(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar_event(step: i64, scalars: &[(&str, f32)]) -> Event {
        Event {
            wall_time: 1_700_000_000.25,
            step,
            file_version: None,
            scalars: scalars.iter().map(|(t, v)| (t.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn event_round_trips_through_protobuf() {
        let event = scalar_event(-3, &[("reward", 0.5), ("rewards/format/mean", -1.25e-7)]);
        assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
        let big = scalar_event(1 << 40, &[("kl", f32::NAN)]);
        let back = decode_event(&encode_event(&big)).unwrap();
        assert_eq!(back.step, 1 << 40);
        assert!(back.scalars[0].1.is_nan());
    }

    #[test]
    fn encoding_matches_protobuf_wire_format_bytes() {
        // Hand-assembled per the protobuf spec: tag 0x09 + f64, 0x10 + varint 300, 0x2a + summary.
        let event = scalar_event(300, &[("a", 1.0)]);
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1_700_000_000.25f64.to_le_bytes());
        expected.extend_from_slice(&[0x10, 0xAC, 0x02]);
        expected.extend_from_slice(&[0x2A, 0x0A, 0x0A, 0x08, 0x0A, 0x01, b'a', 0x15]);
        expected.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(encode_event(&event), expected);
    }

    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = encode_event(&scalar_event(7, &[("x", 2.0)]));
        // Field 4 (a varint) and field 6 (bytes) are not modelled and must be ignored.
        bytes.extend_from_slice(&[0x20, 0x05, 0x32, 0x02, 0xFF, 0xFF]);
        assert_eq!(decode_event(&bytes).unwrap().scalars, vec![("x".into(), 2.0)]);
    }

    #[test]
    fn records_round_trip_and_corruption_is_detected() {
        let mut stream = Vec::new();
        write_record(&mut stream, b"hello").unwrap();
        write_record(&mut stream, b"").unwrap();
        assert_eq!(read_records(&stream).unwrap(), vec![&b"hello"[..], &b""[..]]);
        let mut flipped = stream.clone();
        flipped[13] ^= 1;
        assert!(matches!(read_records(&flipped), Err(MetricsError::Event(_))));
        let mut bad_len = stream.clone();
        bad_len[0] ^= 1;
        assert!(read_records(&bad_len).is_err());
        assert!(read_records(&stream[..stream.len() - 1]).is_err());
    }

    #[test]
    fn writer_produces_a_readable_file_with_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.out.tfevents.test");
        let mut writer = EventFileWriter::create(&path, 10.0).unwrap();
        writer.write_event(&scalar_event(1, &[("loss", 0.75)])).unwrap();
        writer.write_event(&scalar_event(2, &[("loss", 0.5)])).unwrap();
        let events = read_event_file(&path).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(events[2].scalars, vec![("loss".into(), 0.5)]);
        assert!(EventFileWriter::create(&path, 10.0).is_err(), "must not clobber");
    }
}
