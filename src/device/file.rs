//! A device backed by a regular file or a block device, using `pread`/`pwrite` through std's
//! `FileExt`, so no `unsafe` is needed here. `flush` is `fdatasync`.

use super::{Device, DeviceError};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A file or block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    /// Open an existing file or block device read-write, and take an exclusive advisory lock
    /// (`flock`) on it for as long as it stays open: two processes writing one pool would
    /// corrupt it (each keeps its own map), so the second is refused instead.
    ///
    /// # Errors
    /// [`Error::Open`] if it does not exist, cannot be opened read-write, or another open
    /// file description (another process, or this one) holds it.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Access::ReadWrite)
    }

    /// Open an existing file or block device for `access`. Read-only opens use `O_RDONLY`
    /// (so a write-protected member, an immutable file or a `losetup -r` device can still be
    /// examined) and take a *shared* lock: several lookers at once, never beside a writer.
    ///
    /// # Errors
    /// As [`FileDevice::open`].
    pub fn open_with(path: &Path, access: Access) -> Result<Self> {
        let read_only = access == Access::ReadOnly;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        lock(&file, path, read_only)?;
        // Block devices report a zero metadata length; seeking to the end works for both kinds.
        let size = file.seek(SeekFrom::End(0)).map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file,
            // Absolute: the name is recorded in the superblocks as where to find this member
            // again, and the next command may run from another directory.
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            size,
            read_only,
        })
    }

    /// Whether it was opened read-only.
    #[must_use]
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Open `path`, creating a regular file of `size` bytes if it does not exist, or growing a
    /// regular file that is smaller. Block devices are never resized.
    ///
    /// # Errors
    /// [`Error::Open`] on any failure.
    pub fn open_or_create(path: &Path, size: Option<u64>) -> Result<Self> {
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(size) = size {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() && meta.len() < size => {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(open_err)?;
                    file.set_len(size).map_err(open_err)?;
                }
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)
                        .map_err(open_err)?;
                    file.set_len(size).map_err(open_err)?;
                }
                Err(err) => return Err(open_err(err)),
            }
        }
        Self::open(path)
    }
}

/// A path's identity, for spotting one device named twice: the canonical path if it exists
/// (symbolic links and `..` resolved), else its directory's canonical path joined with its name.
/// A URI (an NBD member, see [`super::is_uri`]) is its own identity: it is returned as it is,
/// with no filesystem call, so two URIs are the same device only if they are the same string.
#[must_use]
pub fn canonical_path(path: &Path) -> PathBuf {
    if super::is_uri_path(path) {
        return path.to_path_buf();
    }
    if let Ok(canonical) = std::fs::canonicalize(path) {
        return canonical;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => {
            std::fs::canonicalize(dir).map_or_else(|_| absolute.clone(), |dir| dir.join(name))
        }
        _ => absolute,
    }
}

/// Refuse a list of paths that names one device twice, before anything is opened (opening
/// it twice would only report the second open as "in use").
///
/// # Errors
/// [`Error::InvalidConfig`] naming the path given twice.
pub fn refuse_duplicate_paths<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        if !seen.insert(canonical_path(path)) {
            return Err(Error::InvalidConfig(format!(
                "{} is given twice",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Files a command creates or grows while opening its devices, put back as they were when it
/// fails (dropped without [`CreatedFiles::keep`]): a created file is removed, a grown one is
/// cut back to its old length. A file that existed before is never removed.
#[derive(Debug, Default)]
pub struct CreatedFiles {
    created: Vec<PathBuf>,
    grown: Vec<(PathBuf, u64)>,
}

impl CreatedFiles {
    /// Nothing tracked yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// [`super::open_device`], remembering what it creates or grows.
    ///
    /// # Errors
    /// As [`super::open_device`].
    pub fn open_device(&mut self, path: &Path, size: Option<u64>) -> Result<super::SharedDevice> {
        self.track(path, size, || super::open_device(path, size))
    }

    /// [`FileDevice::open_or_create`], remembering what it creates or grows.
    ///
    /// # Errors
    /// As [`FileDevice::open_or_create`].
    pub fn open_file(&mut self, path: &Path, size: Option<u64>) -> Result<FileDevice> {
        self.track(path, size, || FileDevice::open_or_create(path, size))
    }

    fn track<T>(
        &mut self,
        path: &Path,
        size: Option<u64>,
        open: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if super::is_uri_path(path) {
            // An NBD export: nothing on this host is created or grown.
            return open();
        }
        let before = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => Some(Some(meta.len())),
            Ok(_) => Some(None), // a block device or a link: never resized, never removed
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(_) => Some(None),
        };
        let result = open();
        let after = std::fs::symlink_metadata(path).ok().map(|meta| meta.len());
        match (size, before, after) {
            (Some(_), None, Some(_)) => self.created.push(path.to_path_buf()),
            (Some(_), Some(Some(old)), Some(new)) if new > old => {
                self.grown.push((path.to_path_buf(), old));
            }
            _ => {}
        }
        result
    }

    /// The command succeeded: keep every file as it is now.
    pub fn keep(mut self) {
        self.created.clear();
        self.grown.clear();
    }
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for path in &self.created {
            if let Err(err) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), %err, "could not remove a file this command created");
            }
        }
        for (path, len) in &self.grown {
            let shrunk = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|file| file.set_len(*len));
            if let Err(err) = shrunk {
                tracing::warn!(path = %path.display(), %err, "could not restore the length of a file this command grew");
            }
        }
    }
}

/// How a device is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// Read and write, with an exclusive lock (a pool that may change).
    #[default]
    ReadWrite,
    /// Read only, with a shared lock (status, check, metrics, read, check-only scrub).
    ReadOnly,
}

/// How long [`lock`] keeps trying before it calls a device "in use".
///
/// `flock` belongs to the open file description, and a child forked by any thread of this
/// process shares our descriptors until it `exec`s (close-on-exec only acts then). So a pool
/// closed just as another thread spawns a process stays "locked" for that short window, and
/// opening it again at once would be refused though nobody uses it. A genuine holder keeps the
/// lock far longer than this, so the grace costs only a slower "in use" error.
const LOCK_GRACE: Duration = Duration::from_secs(2);

/// Take the advisory lock on `file` (shared for a read-only open, else exclusive), retrying
/// for [`LOCK_GRACE`] (see there).
fn lock(file: &File, path: &Path, shared: bool) -> Result<()> {
    let deadline = Instant::now() + LOCK_GRACE;
    loop {
        let attempt = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Open {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::ResourceBusy,
                        "in use: another stripestore pool holds this device open (stop it first; monitor a running pool through its metrics endpoint)",
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(Error::Open {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

pub(crate) fn classify(err: std::io::Error) -> DeviceError {
    // ENODEV / ENXIO mean the device itself is gone, not a bad sector.
    match err.raw_os_error() {
        Some(19 | 6) => DeviceError::Gone(err.to_string()),
        _ => DeviceError::Io(err),
    }
}

impl FileDevice {
    /// The open file (for the io_uring backend, which shares it).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

impl Device for FileDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.file.read_exact_at(buf, offset).map_err(classify)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.file.write_all_at(buf, offset).map_err(classify)
    }
    fn flush(&self) -> Result<(), DeviceError> {
        self.file.sync_data().map_err(classify)
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn name(&self) -> String {
        self.path.display().to_string()
    }
    fn io_backend(&self) -> &'static str {
        "pread"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_roundtrip_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        let dev = FileDevice::open_or_create(&path, Some(1 << 20)).unwrap();
        assert_eq!(dev.size(), 1 << 20);
        dev.write_at(4096, b"hello").unwrap();
        dev.flush().unwrap();
        let mut buf = [0u8; 5];
        dev.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Reading past the end is an I/O error, not a panic.
        let mut big = vec![0u8; 10];
        assert!(dev.read_at((1 << 20) - 5, &mut big).is_err());
        assert!(FileDevice::open(&dir.path().join("missing")).is_err());
    }

    /// A holder that lets go within the grace (as a forked child does when it execs) does not
    /// make the open fail; one that keeps the lock does, with "in use".
    #[test]
    fn a_lock_released_within_the_grace_is_taken_and_a_kept_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev0");
        drop(FileDevice::open_or_create(&path, Some(1 << 16)).unwrap());
        let holder = FileDevice::open(&path).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(holder);
        });
        let started = Instant::now();
        let reopened = FileDevice::open(&path).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        release.join().unwrap();

        let started = Instant::now();
        let err = FileDevice::open(&path).unwrap_err();
        assert!(started.elapsed() >= LOCK_GRACE);
        assert!(err.to_string().contains("in use") || format!("{err:?}").contains("in use"));
        drop(reopened);
        FileDevice::open(&path).unwrap();
    }
}
