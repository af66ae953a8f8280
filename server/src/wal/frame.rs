//! The on-disk format of the write-ahead log: segment files of frames, one frame per
//! group commit.
//!
//! A segment is preallocated and zero-filled; frames follow one another from offset 0 and
//! the first all-zero header ends the data. A frame is a 12-byte header, `magic` (u32),
//! `len` (u32, the payload's length) and `crc` (CRC-32 of `len` and the payload), then the
//! payload: a version byte and the frame's items, each a kind byte and its fields
//! (integers little-endian, byte strings as a u32 length and the bytes):
//!
//! | kind | item | fields |
//! | --- | --- | --- |
//! | 1 | an entry | index (u64), the entry's record |
//! | 2 | truncate | the first index removed (u64) |
//! | 3 | purge | the last index purged (u64), the purged log id's record |
//! | 4 | vote | the vote's record |
//! | 5 | committed | the committed log id's record (empty: none) |
//!
//! Records are opaque here (the store encodes them). The first frame of every segment
//! repeats the vote, committed and purge state, so older segments can be deleted whole.

use std::io;
use std::sync::Arc;

/// Marks the start of a frame ("AFWL").
pub const MAGIC: u32 = 0x4146_574c;
/// Bytes of a frame header.
pub const HEADER: usize = 12;
/// Version of the frame payload.
const PAYLOAD_V1: u8 = 1;
/// The largest payload accepted (a frame is one group commit).
pub const MAX_PAYLOAD: u32 = 256 << 20;

/// One item of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Log entry `index` with its record.
    Entry(u64, Arc<[u8]>),
    /// Remove the entries from this index on.
    Truncate(u64),
    /// Entries up to this index are purged; the purged log id's record.
    Purge(u64, Vec<u8>),
    /// The vote's record.
    Vote(Vec<u8>),
    /// The committed log id's record (empty: none).
    Committed(Vec<u8>),
}

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const PURGE: u8 = 3;
const VOTE: u8 = 4;
const COMMITTED: u8 = 5;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("record too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Where an entry's record is in a frame: (index, offset in the frame, length).
pub type Place = (u64, u32, u32);

/// Encode `items` as one frame. Also returns, for every entry, where its record starts in
/// the frame and how long it is.
pub fn encode(items: &[Item]) -> io::Result<(Vec<u8>, Vec<Place>)> {
    let mut out = vec![0u8; HEADER];
    out.push(PAYLOAD_V1);
    let mut places = Vec::new();
    for item in items {
        match item {
            Item::Entry(index, record) => {
                out.push(ENTRY);
                out.extend_from_slice(&index.to_le_bytes());
                let at = u32::try_from(out.len() + 4)
                    .map_err(|_| io::Error::other("frame too large"))?;
                put_bytes(&mut out, record)?;
                let len = u32::try_from(record.len())
                    .map_err(|_| io::Error::other("record too large"))?;
                places.push((*index, at, len));
            }
            Item::Truncate(from) => {
                out.push(TRUNCATE);
                out.extend_from_slice(&from.to_le_bytes());
            }
            Item::Purge(upto, record) => {
                out.push(PURGE);
                out.extend_from_slice(&upto.to_le_bytes());
                put_bytes(&mut out, record)?;
            }
            Item::Vote(record) => {
                out.push(VOTE);
                put_bytes(&mut out, record)?;
            }
            Item::Committed(record) => {
                out.push(COMMITTED);
                put_bytes(&mut out, record)?;
            }
        }
    }
    let len = u32::try_from(out.len() - HEADER)
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD)
        .ok_or_else(|| io::Error::other("frame too large"))?;
    let crc = checksum(len, &out[HEADER..]);
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok((out, places))
}

/// CRC-32 of a payload's length and bytes.
pub fn checksum(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// What a frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// All zeros: the end of the segment's data.
    End,
    /// A frame whose payload is `len` bytes with checksum `crc`.
    Frame {
        /// The payload's length.
        len: u32,
        /// Its checksum.
        crc: u32,
    },
    /// Not a frame header.
    Bad,
}

/// Read a frame header.
pub fn header(bytes: &[u8; HEADER]) -> Header {
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (magic, len, crc) = (word(0), word(4), word(8));
    if magic == 0 && len == 0 && crc == 0 {
        Header::End
    } else if magic == MAGIC && len <= MAX_PAYLOAD {
        Header::Frame { len, crc }
    } else {
        Header::Bad
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("an item runs past the frame's end at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| "short u64".to_string())?,
        ))
    }

    fn bytes(&mut self) -> Result<(usize, Vec<u8>), String> {
        let b = self.take(4)?;
        let len = u32::from_le_bytes(b.try_into().map_err(|_| "short length".to_string())?);
        let at = self.at;
        Ok((at, self.take(len as usize)?.to_vec()))
    }
}

/// The items of a payload whose checksum matched, each entry with where its record starts
/// in the payload. An error says what is wrong with it.
pub fn decode(payload: &[u8]) -> Result<Vec<(Item, usize)>, String> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    match r.take(1)? {
        [PAYLOAD_V1] => {}
        [v] => {
            return Err(format!(
                "frame version {v}, this build reads version {PAYLOAD_V1}"
            ));
        }
        _ => return Err("empty frame".into()),
    }
    let mut items = Vec::new();
    while r.at < payload.len() {
        let kind = r.take(1)?[0];
        let item = match kind {
            ENTRY => {
                let index = r.u64()?;
                let (at, record) = r.bytes()?;
                items.push((Item::Entry(index, record.into()), at));
                continue;
            }
            TRUNCATE => Item::Truncate(r.u64()?),
            PURGE => {
                let upto = r.u64()?;
                Item::Purge(upto, r.bytes()?.1)
            }
            VOTE => Item::Vote(r.bytes()?.1),
            COMMITTED => Item::Committed(r.bytes()?.1),
            other => return Err(format!("unknown item kind {other} at byte {}", r.at - 1)),
        };
        items.push((item, 0));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_with_its_entries_in_place() {
        let items = vec![
            Item::Vote(b"vote".to_vec()),
            Item::Entry(7, Arc::from(&b"seven"[..])),
            Item::Truncate(8),
            Item::Entry(8, Arc::from(&b"eight!"[..])),
            Item::Purge(3, b"p".to_vec()),
            Item::Committed(Vec::new()),
        ];
        let (frame, places) = encode(&items).unwrap();
        let head: [u8; HEADER] = frame[..HEADER].try_into().unwrap();
        let Header::Frame { len, crc } = header(&head) else {
            panic!("not a frame header");
        };
        let payload = &frame[HEADER..];
        assert_eq!(len as usize, payload.len());
        assert_eq!(checksum(len, payload), crc);
        let decoded = decode(payload).unwrap();
        assert_eq!(
            decoded.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
            items
        );
        for (index, at, len) in places {
            let record = &frame[at as usize..(at + len) as usize];
            let expected: &[u8] = if index == 7 { b"seven" } else { b"eight!" };
            assert_eq!(record, expected);
        }
        assert_eq!(header(&[0; HEADER]), Header::End);
        assert_eq!(header(&[1; HEADER]), Header::Bad);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let (frame, _) = encode(&[Item::Entry(1, Arc::from(vec![9u8; 40]))]).unwrap();
        let payload = &frame[HEADER..];
        for cut in 0..payload.len() {
            let _ = decode(&payload[..cut]);
        }
        assert!(decode(&[2]).unwrap_err().contains("version 2"));
        assert!(
            decode(&[1, 99])
                .unwrap_err()
                .contains("unknown item kind 99")
        );
    }
}
