//! A device backed by a regular file or a block device, using `pread`/`pwrite` through std's
//! `FileExt`, so no `unsafe` is needed here. `flush` is `fdatasync`.

use super::{Device, DeviceError};
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file or block device.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
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
        })
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
}
