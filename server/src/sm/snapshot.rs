//! The snapshot format of a [`LeaseTable`]: versioned, streamed, checksummed.
//!
//! Format version 2 (see `proto/affinity/v1/storage.proto`):
//!
//! ```text
//! "AFFSNAP\0"  u32-le version  | len+SnapshotHeader | len+StoredLease x lease_count
//!                               | len+RememberedWrite x remembered_count | len+SnapshotTrailer
//! ```
//!
//! Version 1 is the same without the remembered writes (the outcomes of recent named
//! writes, [`super::once`]). A table that remembers none is written as version 1, so that a
//! backup of it stays readable by builds that know only version 1; both are read.
//!
//! Lengths are protobuf varints. The trailer holds the lease count and a CRC-32 of every byte
//! before it. Reading checks the magic, the version, each record (field rules, strictly
//! increasing keys), the counts, the checksum and that nothing follows the trailer: a damaged
//! or truncated snapshot is reported with what is wrong, never loaded.
//!
//! The header carries an opaque [`pb::SnapshotMeta`] that the storage layer fills in (the
//! log position and membership the snapshot covers), so that a snapshot file describes
//! itself, for example as a backup.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::Arc;

use affinity_proto::request::{check_endpoint, check_scope};
use affinity_proto::{ClientKey, pb};
use prost::Message;

use super::LeaseTable;
use super::layout::RestoredLease;
use super::lease::{Lease, prefix_from_pb};

/// First bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"AFFSNAP\0";
/// The newest format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// The version without remembered writes, still written when a table has none, and read.
pub const FORMAT_VERSION_1: u32 = 1;
/// Largest single record accepted when reading (a lease record is well under 1 KiB).
const MAX_RECORD_BYTES: u64 = 16 * 1024 * 1024;

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The underlying file or stream failed.
    #[error("snapshot I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The first bytes are not a snapshot's.
    #[error("not an affinity snapshot (bad magic bytes)")]
    BadMagic,
    /// Written by a newer (or unknown) format.
    #[error(
        "snapshot format version {found} is not supported by this build (it reads versions {FORMAT_VERSION_1} and {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
    },
    /// The content is damaged.
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// Size and content of a written snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Leases written.
    pub lease_count: u64,
    /// Bytes written, trailer included.
    pub bytes: u64,
    /// The checksum in the trailer.
    pub crc32: u32,
}

/// Write `table` with `meta`: format version 2, or 1 when it remembers no named write.
pub fn write<W: Write>(
    table: &LeaseTable,
    meta: pb::SnapshotMeta,
    out: W,
) -> Result<SnapshotStats, SnapshotError> {
    let remembered: Vec<pb::RememberedWrite> =
        table.remembered().filter_map(|r| r.to_stored()).collect();
    let version = if remembered.is_empty() {
        FORMAT_VERSION_1
    } else {
        FORMAT_VERSION
    };
    let mut out = Checksummed::new(out);
    out.write_all(MAGIC)?;
    out.write_all(&version.to_le_bytes())?;
    let lease_count = table.len() as u64;
    let header = pb::SnapshotHeader {
        meta: Some(meta),
        clock_ms: table.clock_ms(),
        lease_count,
        remembered_count: remembered.len() as u64,
    };
    let mut buf = Vec::with_capacity(256);
    write_record(&mut out, &header, &mut buf)?;
    for lease in table.iter() {
        write_record(&mut out, &lease.to_stored(), &mut buf)?;
    }
    for record in &remembered {
        write_record(&mut out, record, &mut buf)?;
    }
    let crc32 = out.hasher.clone().finalize();
    let trailer = pb::SnapshotTrailer { lease_count, crc32 };
    write_record(&mut out, &trailer, &mut buf)?;
    out.inner.flush()?;
    Ok(SnapshotStats {
        lease_count,
        bytes: out.bytes,
        crc32,
    })
}

/// A snapshot read back.
#[derive(Debug)]
pub struct Decoded {
    /// What the snapshot covers (as the storage layer wrote it).
    pub meta: pb::SnapshotMeta,
    /// The leases.
    pub table: LeaseTable,
    /// Its size, count and checksum.
    pub stats: SnapshotStats,
}

/// Read a snapshot: its meta and the table it holds.
pub fn read<R: Read>(input: R) -> Result<Decoded, SnapshotError> {
    let mut input = Checksummed::new(BufReader::with_capacity(256 * 1024, input));
    let mut magic = [0u8; 8];
    read_exact_or_corrupt(&mut input, &mut magic, "magic")?;
    if &magic != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut version = [0u8; 4];
    read_exact_or_corrupt(&mut input, &mut version, "version")?;
    let found = u32::from_le_bytes(version);
    if found != FORMAT_VERSION && found != FORMAT_VERSION_1 {
        return Err(SnapshotError::UnsupportedVersion { found });
    }
    let mut buf = Vec::new();
    let header: pb::SnapshotHeader = read_record(&mut input, &mut buf, "header")?;
    let meta = header
        .meta
        .ok_or_else(|| SnapshotError::Corrupt("header has no meta".into()))?;

    let mut table = read_leases(&mut input, &mut buf, header.clock_ms, header.lease_count)?;
    let remembered = if found == FORMAT_VERSION_1 {
        0
    } else {
        header.remembered_count
    };
    if remembered > super::once::MAX_REMEMBERED as u64 {
        return Err(SnapshotError::Corrupt(format!(
            "header counts {remembered} remembered writes (at most {} are kept)",
            super::once::MAX_REMEMBERED
        )));
    }
    let mut previous_ms = i64::MIN;
    for n in 0..remembered {
        let stored: pb::RememberedWrite = read_record(&mut input, &mut buf, "remembered write")?;
        let write = super::once::Remembered::from_stored(stored)
            .map_err(|e| SnapshotError::Corrupt(format!("remembered write #{n}: {e}")))?;
        if write.applied_ms < previous_ms {
            return Err(SnapshotError::Corrupt(format!(
                "remembered write #{n} was applied before the previous one: they must be oldest first"
            )));
        }
        previous_ms = write.applied_ms;
        table.remember(write);
    }
    let table = table.finish();
    let crc32 = input.hasher.clone().finalize();
    let trailer: pb::SnapshotTrailer = read_record(&mut input, &mut buf, "trailer")?;
    if trailer.lease_count != header.lease_count {
        return Err(SnapshotError::Corrupt(format!(
            "trailer counts {} leases, header {}",
            trailer.lease_count, header.lease_count
        )));
    }
    if trailer.crc32 != crc32 {
        return Err(SnapshotError::Corrupt(format!(
            "checksum mismatch: trailer says {:08x}, content is {crc32:08x}",
            trailer.crc32
        )));
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(SnapshotError::Corrupt("bytes follow the trailer".into()));
    }
    let stats = SnapshotStats {
        lease_count: header.lease_count,
        bytes: input.bytes,
        crc32,
    };
    Ok(Decoded { meta, table, stats })
}

/// Leases decoded (and checked) per batch handed to the thread that builds the table.
const BUILD_BATCH: usize = 4096;

/// What the reader hands the table builder, in order.
enum Step {
    /// The leases that follow are of this scope (it sorts after the one before).
    Scope(String),
    /// A new endpoint: the next number for [`RestoredLease::endpoint`], counting from 0.
    Endpoint(String),
    /// A lease of the current scope.
    Lease(RestoredLease),
}

/// Read `count` leases into a table whose clock is `clock_ms`. Decoding and checking the records
/// (this thread) and building the table from them (a second thread) overlap, which is
/// most of what a restart with millions of leases waits for.
fn read_leases<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    clock_ms: i64,
    count: u64,
) -> Result<super::Restorer, SnapshotError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Step>>(4);
    std::thread::scope(|scope| {
        let builder = std::thread::Builder::new()
            .name("affinity-restore".into())
            .spawn_scoped(scope, move || {
                let mut table = super::Restorer::new(clock_ms, count);
                // The reader's endpoint numbers, in the table's numbering.
                let mut endpoints: Vec<u32> = Vec::new();
                for batch in rx {
                    for step in batch {
                        let pushed = match step {
                            Step::Scope(name) => {
                                table.scope(&name);
                                true
                            }
                            Step::Endpoint(name) => {
                                endpoints.push(table.endpoint(&name));
                                true
                            }
                            Step::Lease(mut lease) => {
                                match endpoints.get(lease.endpoint as usize) {
                                    Some(&id) => {
                                        lease.endpoint = id;
                                        table.push(&lease)
                                    }
                                    None => false,
                                }
                            }
                        };
                        if !pushed {
                            return Err(SnapshotError::Io(io::Error::other(
                                "the snapshot reader handed on a lease out of order",
                            )));
                        }
                    }
                }
                Ok(table)
            })
            .map_err(SnapshotError::Io)?;
        let decoded = decode_leases(input, buf, count, &tx);
        drop(tx);
        let table = builder
            .join()
            .map_err(|_| SnapshotError::Io(io::Error::other("the table builder panicked")))?;
        // A reader's error says what is wrong with the file; the builder then only saw
        // the channel close.
        decoded.and(table)
    })
}

/// Decode `count` leases, checking each and their order, and send them on in batches. The
/// record is decoded into one reused message, and a scope or endpoint is checked and
/// copied once, when it first appears: leases repeat a few of them millions of times.
fn decode_leases<R: BufRead>(
    input: &mut R,
    buf: &mut Vec<u8>,
    count: u64,
    tx: &std::sync::mpsc::SyncSender<Vec<Step>>,
) -> Result<(), SnapshotError> {
    let mut stored = pb::StoredLease::default();
    let mut scope: Option<String> = None;
    let mut previous_key: Option<ClientKey> = None;
    let mut endpoints: HashMap<String, u32> = HashMap::new();
    let mut batch = Vec::with_capacity(BUILD_BATCH);
    for n in 0..count {
        stored.scope.clear();
        stored.endpoint.clear();
        stored.prefix = None;
        stored.created_at_ms = 0;
        stored.expires_at_ms = 0;
        stored.revision = 0;
        stored.idle_timeout_ms = None;
        stored.last_used_ms = 0;
        read_record_into(input, buf, "lease", &mut stored)?;
        let corrupt = |e: String| SnapshotError::Corrupt(format!("lease #{n}: {e}"));
        let same_scope = scope.as_deref() == Some(stored.scope.as_str());
        if !same_scope {
            check_scope("scope", &stored.scope).map_err(|e| corrupt(e.to_string()))?;
        }
        let endpoint = endpoints.get(stored.endpoint.as_str()).copied();
        if endpoint.is_none() {
            check_endpoint("endpoint", &stored.endpoint).map_err(|e| corrupt(e.to_string()))?;
        }
        let key = prefix_from_pb(stored.prefix.as_ref()).map_err(|e| corrupt(e.to_string()))?;
        if stored.expires_at_ms < stored.created_at_ms {
            return Err(corrupt(format!(
                "expires_at_ms {} is before created_at_ms {}",
                stored.expires_at_ms, stored.created_at_ms
            )));
        }
        let after = match (&scope, previous_key) {
            (Some(_), Some(previous)) if same_scope => key > previous,
            (Some(current), _) => stored.scope.as_str() > current.as_str(),
            (None, _) => true,
        };
        if !after {
            return Err(SnapshotError::Corrupt(format!(
                "lease #{n} ({} {key}) is not after the previous one: keys must increase",
                stored.scope
            )));
        }
        if !same_scope {
            scope = Some(stored.scope.clone());
            batch.push(Step::Scope(stored.scope.clone()));
        }
        previous_key = Some(key);
        let endpoint = if let Some(number) = endpoint {
            number
        } else {
            let number = u32::try_from(endpoints.len())
                .map_err(|_| corrupt("more distinct endpoints than a table can number".into()))?;
            endpoints.insert(stored.endpoint.clone(), number);
            batch.push(Step::Endpoint(stored.endpoint.clone()));
            number
        };
        batch.push(Step::Lease(RestoredLease {
            endpoint,
            key,
            created_at_ms: stored.created_at_ms,
            expires_at_ms: stored.expires_at_ms,
            idle_timeout_ms: stored.idle_timeout_ms,
            last_used_ms: stored.last_used_ms,
            revision: stored.revision,
        }));
        if batch.len() >= BUILD_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BUILD_BATCH));
            tx.send(full)
                .map_err(|_| SnapshotError::Io(io::Error::other("the table builder stopped")))?;
        }
    }
    if !batch.is_empty() {
        tx.send(batch)
            .map_err(|_| SnapshotError::Io(io::Error::other("the table builder stopped")))?;
    }
    Ok(())
}

/// Stored leases from the wire (an import, a restore), each checked; an error names the
/// lease as `leases[n]`.
pub fn leases_from_stored(
    stored: impl IntoIterator<Item = pb::StoredLease>,
) -> Result<Vec<Lease>, affinity_proto::ValidationError> {
    stored
        .into_iter()
        .enumerate()
        .map(|(n, s)| {
            lease_from_stored(s)
                .map_err(|rule| affinity_proto::ValidationError::new(format!("leases[{n}]"), rule))
        })
        .collect()
}

/// A stored lease, checked: scope, endpoint and prefix rules, and times in order.
pub fn lease_from_stored(s: pb::StoredLease) -> Result<Lease, String> {
    check_scope("scope", &s.scope).map_err(|e| e.to_string())?;
    check_endpoint("endpoint", &s.endpoint).map_err(|e| e.to_string())?;
    let key = prefix_from_pb(s.prefix.as_ref()).map_err(|e| e.to_string())?;
    if s.expires_at_ms < s.created_at_ms {
        return Err(format!(
            "expires_at_ms {} is before created_at_ms {}",
            s.expires_at_ms, s.created_at_ms
        ));
    }
    Ok(Lease {
        scope: Arc::from(s.scope),
        key,
        endpoint: Arc::from(s.endpoint),
        created_at_ms: s.created_at_ms,
        expires_at_ms: s.expires_at_ms,
        idle_timeout_ms: s.idle_timeout_ms,
        last_used_ms: s.last_used_ms,
        revision: s.revision,
    })
}

fn write_record<W: Write, M: Message>(
    out: &mut W,
    msg: &M,
    buf: &mut Vec<u8>,
) -> Result<(), SnapshotError> {
    buf.clear();
    msg.encode_length_delimited(buf)
        .map_err(|e| SnapshotError::Io(io::Error::other(e)))?;
    out.write_all(buf)?;
    Ok(())
}

fn read_record<R: BufRead, M: Message + Default>(
    input: &mut R,
    buf: &mut Vec<u8>,
    what: &str,
) -> Result<M, SnapshotError> {
    let mut msg = M::default();
    read_record_into(input, buf, what, &mut msg)?;
    Ok(msg)
}

/// Read one length-prefixed record into `msg`, whose fields the caller has reset (so that
/// strings keep their allocations from one record to the next).
fn read_record_into<R: BufRead, M: Message>(
    input: &mut R,
    buf: &mut Vec<u8>,
    what: &str,
    msg: &mut M,
) -> Result<(), SnapshotError> {
    let len = read_varint(input).map_err(|e| match e {
        SnapshotError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
            SnapshotError::Corrupt(format!("truncated before the {what} record"))
        }
        other => other,
    })?;
    if len > MAX_RECORD_BYTES {
        return Err(SnapshotError::Corrupt(format!(
            "{what} record claims {len} bytes (limit {MAX_RECORD_BYTES})"
        )));
    }
    // `len` is bounded above, so it fits in usize.
    let len = usize::try_from(len).unwrap_or(0);
    let decoded = match input.fill_buf()? {
        // Most records lie whole in the read buffer: decode them where they are.
        buffered if buffered.len() >= len => {
            let decoded = msg.merge(&buffered[..len]);
            input.consume(len);
            decoded
        }
        _ => {
            buf.resize(len, 0);
            read_exact_or_corrupt(input, buf, what)?;
            msg.merge(buf.as_slice())
        }
    };
    decoded.map_err(|e| SnapshotError::Corrupt(format!("{what} record does not decode: {e}")))
}

fn read_exact_or_corrupt<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    what: &str,
) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotError::Corrupt(format!("truncated inside the {what}"))
        } else {
            SnapshotError::Io(e)
        }
    })
}

fn read_varint<R: BufRead>(input: &mut R) -> Result<u64, SnapshotError> {
    // From the read buffer when the whole varint is there (the usual case).
    let buffered = input.fill_buf()?;
    if let Some(end) = buffered.iter().take(10).position(|byte| byte & 0x80 == 0) {
        let value = buffered[..=end]
            .iter()
            .zip((0..64).step_by(7))
            .fold(0u64, |value, (byte, shift)| {
                value | u64::from(byte & 0x7f) << shift
            });
        input.consume(end + 1);
        return Ok(value);
    }
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        input.read_exact(&mut byte)?;
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(SnapshotError::Corrupt(
        "record length varint is too long".into(),
    ))
}

/// A reader or writer that counts bytes and keeps a running CRC-32 of them.
struct Checksummed<T> {
    inner: T,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<T> Checksummed<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reading through the buffer: what is consumed is counted and checksummed.
impl<R: Read> BufRead for Checksummed<BufReader<R>> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        let buffered = self.inner.buffer();
        let amount = amount.min(buffered.len());
        self.hasher.update(&buffered[..amount]);
        self.bytes += amount as u64;
        self.inner.consume(amount);
    }
}

impl<R: Read> Read for Checksummed<R> {
    fn read(&mut self, data: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
