//! The file layer under the write-ahead log: a folder of segment files, each read and
//! written at offsets and synced whole. [`Dir`] is the real one (positioned I/O,
//! `fallocate`, `fdatasync`, the folder synced after every create and remove); tests put a
//! simulated one in its place that forgets, at a crash, whatever was not synced.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A folder of segment files.
pub trait Storage: Send + Sync + 'static {
    /// One open file.
    type File: SegmentFile;

    /// The names of the files in the folder.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Create `name` with `size` bytes of zeros, durably (the file and its name survive a
    /// crash once this returns).
    fn create(&self, name: &str, size: u64) -> io::Result<Self::File>;

    /// Open an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Self::File>;

    /// Remove `name`, durably.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Where `name` is, for messages.
    fn describe(&self, name: &str) -> String;
}

/// One segment file.
pub trait SegmentFile: Send + Sync + 'static {
    /// Its length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Whether it holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fill `buf` from `offset` (an error if the file ends first).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Make every write so far durable (`fdatasync`).
    fn sync(&self) -> io::Result<()>;
}

/// A real folder on disk.
#[derive(Debug, Clone)]
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    /// The folder at `path`, created if missing.
    pub fn new(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

impl Storage for Dir {
    type File = File;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str, size: u64) -> io::Result<File> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))?;
        let made = preallocate(&file, size).and_then(|()| file.sync_all());
        if let Err(e) = made {
            // A full disk, most often: leave no half-made segment behind.
            drop(file);
            let _ = std::fs::remove_file(self.path.join(name));
            return Err(e);
        }
        self.sync_dir()?;
        Ok(file)
    }

    fn open(&self, name: &str) -> io::Result<File> {
        File::options()
            .read(true)
            .write(true)
            .open(self.path.join(name))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))?;
        self.sync_dir()
    }

    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

/// Reserve real blocks, so that a later `fdatasync` of a write into them need not update
/// the file's allocation; where the file system cannot, a plain length (a sparse file).
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    let len = i64::try_from(size).map_err(|_| io::Error::other("segment size too large"))?;
    match nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EOPNOTSUPP) => file.set_len(size),
        Err(e) => Err(io::Error::from(e)),
    }
}

impl SegmentFile for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}
