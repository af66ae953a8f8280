//! A simulated disk for crash tests: files in memory that remember what was synced. At a
//! crash each file keeps its synced bytes plus an arbitrary prefix of the writes made
//! since (the last of them possibly cut short, as a torn write), and every handle opened
//! before the crash fails from then on, as the dead process's would.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use super::fs::{SegmentFile, Storage};

#[derive(Default)]
struct Data {
    /// What a reader sees now.
    current: Vec<u8>,
    /// What survives a crash for sure.
    durable: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

#[derive(Default)]
struct Disk {
    files: BTreeMap<String, Arc<Mutex<Data>>>,
    generation: u64,
    /// Crash right after this many more writes, choosing what survives with this seed.
    armed: Option<(u64, u64)>,
    /// Fail the next sync (the device reports an error; the unsynced writes are lost).
    fail_sync: bool,
}

impl Disk {
    fn crash(&mut self, mut pick: impl FnMut(usize) -> usize) {
        self.generation += 1;
        self.armed = None;
        self.fail_sync = false;
        for data in self.files.values() {
            let mut d = data.lock();
            let mut kept = d.durable.clone();
            let pending = std::mem::take(&mut d.pending);
            let whole = pick(pending.len());
            for (offset, bytes) in &pending[..whole] {
                write_into(&mut kept, *offset, bytes);
            }
            if let Some((offset, bytes)) = pending.get(whole) {
                let part = pick(bytes.len());
                write_into(&mut kept, *offset, &bytes[..part]);
            }
            d.current = kept.clone();
            d.durable = kept;
        }
    }
}

/// The simulated disk, as one process generation sees it. Clones share it; after a
/// crash, use [`SimDisk::handle`] for the next process.
#[derive(Clone, Default)]
pub struct SimDisk {
    disk: Arc<Mutex<Disk>>,
    generation: u64,
}

/// A file handle of one generation of the disk.
pub struct SimFile {
    data: Arc<Mutex<Data>>,
    disk: Arc<Mutex<Disk>>,
    generation: u64,
}

fn write_into(buf: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = offset + bytes.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset..end].copy_from_slice(bytes);
}

impl SimDisk {
    /// The disk as a process started now sees it.
    pub fn handle(&self) -> SimDisk {
        SimDisk {
            disk: self.disk.clone(),
            generation: self.disk.lock().generation,
        }
    }

    fn check(disk: &Disk, generation: u64) -> io::Result<()> {
        if disk.generation == generation {
            Ok(())
        } else {
            Err(io::Error::other("the simulated process crashed"))
        }
    }

    /// Crash: every file keeps what was synced and a prefix of what was not, chosen by
    /// `pick(n)` (a number in `0..=n`): how many pending writes survive whole, then how
    /// many bytes of the next one.
    pub fn crash(&self, pick: impl FnMut(usize) -> usize) {
        self.disk.lock().crash(pick);
    }

    /// Crash in the middle of the write after `writes` more, before it can be synced,
    /// keeping a part of it chosen by `seed`: the torn write of a real crash.
    pub fn arm(&self, writes: u64, seed: u64) {
        self.disk.lock().armed = Some((writes, seed | 1));
    }

    /// Make the next sync fail with an I/O error, as a failing device's `fdatasync` does,
    /// dropping what was written since the last one (the kernel may mark those pages clean
    /// without having written them).
    pub fn fail_next_sync(&self) {
        self.disk.lock().fail_sync = true;
    }

    /// Flip one bit of `name` at `offset`, as damage on the medium would.
    pub fn flip(&self, name: &str, offset: usize) {
        let disk = self.disk.lock();
        if let Some(data) = disk.files.get(name) {
            let mut d = data.lock();
            d.current[offset] ^= 0x10;
            d.durable[offset] ^= 0x10;
        }
    }
}

impl SimFile {
    /// Run `f` on the file's data, unless the process that opened it crashed. The disk
    /// stays locked meanwhile, so no write lands after a crash.
    fn with<T>(&self, f: impl FnOnce(&mut Data) -> io::Result<T>) -> io::Result<T> {
        let disk = self.disk.lock();
        SimDisk::check(&disk, self.generation)?;
        let mut d = self.data.lock();
        f(&mut d)
    }
}

impl Storage for SimDisk {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let disk = self.disk.lock();
        Self::check(&disk, self.generation)?;
        Ok(disk.files.keys().cloned().collect())
    }

    fn create(&self, name: &str, size: u64) -> io::Result<SimFile> {
        let mut disk = self.disk.lock();
        Self::check(&disk, self.generation)?;
        if disk.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let zeros = vec![0u8; usize::try_from(size).unwrap_or(0)];
        let data = Arc::new(Mutex::new(Data {
            current: zeros.clone(),
            durable: zeros,
            pending: Vec::new(),
        }));
        disk.files.insert(name.to_string(), data.clone());
        Ok(SimFile {
            data,
            disk: self.disk.clone(),
            generation: disk.generation,
        })
    }

    fn open(&self, name: &str) -> io::Result<SimFile> {
        let disk = self.disk.lock();
        Self::check(&disk, self.generation)?;
        let data = disk
            .files
            .get(name)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))?;
        Ok(SimFile {
            data,
            disk: self.disk.clone(),
            generation: disk.generation,
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut disk = self.disk.lock();
        Self::check(&disk, self.generation)?;
        disk.files.remove(name);
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("sim:{name}")
    }
}

impl SegmentFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        self.with(|d| Ok(d.current.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|d| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let src = d
                .current
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut disk = self.disk.lock();
        SimDisk::check(&disk, self.generation)?;
        {
            let mut d = self.data.lock();
            write_into(&mut d.current, offset, buf);
            d.pending.push((offset, buf.to_vec()));
        }
        match disk.armed {
            Some((0, mut seed)) => {
                // Keep every earlier pending write and a strict part of this one.
                let this = self.data.lock().pending.len();
                disk.crash(|n| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if n == this {
                        n - 1
                    } else {
                        usize::try_from(seed % (n as u64).max(1)).unwrap_or(0)
                    }
                });
                Err(io::Error::other("the simulated process crashed mid-write"))
            }
            Some((n, seed)) => {
                disk.armed = Some((n - 1, seed));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn sync(&self) -> io::Result<()> {
        let mut disk = self.disk.lock();
        SimDisk::check(&disk, self.generation)?;
        let mut d = self.data.lock();
        if std::mem::take(&mut disk.fail_sync) {
            d.current = d.durable.clone();
            d.pending.clear();
            return Err(io::Error::from_raw_os_error(5));
        }
        d.durable = d.current.clone();
        d.pending.clear();
        Ok(())
    }
}
