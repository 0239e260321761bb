//! Writing a file that is appended to around the page cache (`O_DIRECT`).
//!
//! Buffered writes copy every byte into the page cache, and on the VMs
//! drd runs on that copy is most of what a replica's catch-up costs (a
//! profile of a 1 GiB catch-up: 53 % of the replica's CPU in the kernel's
//! `copy_folio_from_iter_atomic`). A [`WriteBehind`] gathers the bytes
//! appended to one file in an aligned buffer and writes whole blocks with
//! `O_DIRECT`: the device reads them straight from that buffer.
//!
//! `O_DIRECT` needs offsets, lengths and memory aligned to the device's
//! logical block size, so a file's last, incomplete block cannot go that
//! way. At a flush (before an fdatasync, a read, a seal) that tail is
//! written with an ordinary buffered write, which also gives the file its
//! true size; the tail's bytes stay in the buffer, and once appends fill
//! the block it is written again, whole, with `O_DIRECT` (the kernel
//! writes back and drops its cached copy first, so readers stay coherent).
//!
//! Where the file system refuses `O_DIRECT` (an older tmpfs, some FUSE
//! and network file systems), the file is written the ordinary way: the
//! same bytes, the same syncs, only the page-cache copy is back.
//!
//! Durability is unchanged: an `O_DIRECT` write is not durable on its own
//! (the allocation, the size and the device's volatile cache still need
//! the fdatasync the caller does), so nothing here syncs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of `O_DIRECT` offsets, lengths and buffers: 4 KiB covers the
/// logical block size of every disk drd is expected on (512 B or 4 KiB).
pub const ALIGN: usize = 4096;

/// Bytes gathered before a direct write: large enough that a write is a
/// few device requests rather than many, small enough per session.
pub const BUFFER_BYTES: usize = 1 << 20;

/// Opens `path` for `O_DIRECT` writes; None where the file system does not
/// support them (EINVAL), so that its caller writes the ordinary way.
pub fn open_direct(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A heap buffer whose usable part starts on an [`ALIGN`] boundary
/// (allocated a little larger and used from its first aligned byte).
pub struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    pub fn new() -> Self {
        let mem = vec![0u8; BUFFER_BYTES + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        assert!(start < ALIGN, "a byte pointer can always be aligned");
        Self { mem, start }
    }

    fn bytes(&self) -> &[u8] {
        &self.mem[self.start..self.start + BUFFER_BYTES]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + BUFFER_BYTES]
    }
}

impl Default for AlignedBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// The bytes appended to one file and not yet written to it whole (see
/// the module docs): `buf[..len]` belongs at file offset `at`, which is
/// aligned. After a flush only the incomplete last block is left, which
/// is in the file already and will be written again once it is whole.
pub struct WriteBehind {
    buf: AlignedBuf,
    at: u64,
    len: usize,
}

impl WriteBehind {
    /// Starts gathering appends at `offset` of the file `plain`: the bytes
    /// of its block before `offset` are read back (they are written again
    /// with the block); a file shorter than that reads as zeros, as the
    /// hole it is.
    pub fn start(mut buf: AlignedBuf, plain: &File, offset: u64) -> io::Result<Self> {
        let at = offset - offset % ALIGN as u64;
        let len = (offset - at) as usize;
        let head = &mut buf.bytes_mut()[..len];
        head.fill(0);
        let mut got = 0;
        while got < len {
            match plain.read_at(&mut head[got..], at + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self { buf, at, len })
    }

    /// The file offset the next appended byte belongs at.
    pub fn end(&self) -> u64 {
        self.at + self.len as u64
    }

    /// Appends `data` (which belongs at [`Self::end`]), writing each
    /// buffer that fills with `O_DIRECT`.
    pub fn append(&mut self, direct: &Direct<'_>, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(BUFFER_BYTES - self.len);
            self.buf.bytes_mut()[self.len..self.len + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == BUFFER_BYTES {
                direct.write(&self.buf.bytes()[..BUFFER_BYTES], self.at)?;
                self.at += BUFFER_BYTES as u64;
                self.len = 0;
            }
        }
        Ok(())
    }

    /// Writes what is gathered: the whole blocks with `O_DIRECT`, the
    /// incomplete last block with a buffered write (which sets the file's
    /// size). The tail stays gathered, to be written again whole.
    pub fn flush(&mut self, direct: &Direct<'_>) -> io::Result<()> {
        let whole = self.len - self.len % ALIGN;
        if whole > 0 {
            direct.write(&self.buf.bytes()[..whole], self.at)?;
        }
        let tail = self.len - whole;
        if tail > 0 {
            direct
                .plain
                .write_all_at(&self.buf.bytes()[whole..self.len], self.at + whole as u64)?;
            self.buf.bytes_mut().copy_within(whole..self.len, 0);
        }
        self.at += whole as u64;
        self.len = tail;
        Ok(())
    }

    /// The buffer, for the next file.
    pub fn into_buf(self) -> AlignedBuf {
        self.buf
    }
}

/// A file's two handles: `O_DIRECT` for whole blocks (None where the file
/// system refuses it), buffered for the rest and for the syncs.
pub struct Direct<'a> {
    pub direct: Option<&'a File>,
    pub plain: &'a File,
}

impl Direct<'_> {
    /// Writes `data` (whole blocks, from an aligned buffer) at `offset`
    /// (aligned): with `O_DIRECT` where the file has it, else buffered.
    /// A direct write refused with EINVAL (a file system whose blocks are
    /// larger than [`ALIGN`]) is done buffered instead.
    fn write(&self, data: &[u8], offset: u64) -> io::Result<()> {
        if let Some(d) = self.direct {
            match d.write_all_at(data, offset) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                r => return r,
            }
        }
        self.plain.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn handles(path: &Path) -> (File, Option<File>) {
        let plain = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        (plain, open_direct(path).unwrap())
    }

    #[test]
    fn appends_of_any_size_read_back_exactly_after_each_flush() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let (plain, direct) = handles(&path);
        // ext4 (this project's machines) supports O_DIRECT: the test is
        // about the direct path, so it must be taken.
        assert!(direct.is_some(), "O_DIRECT refused on {}", path.display());
        let io = Direct {
            direct: direct.as_ref(),
            plain: &plain,
        };
        let mut w = WriteBehind::start(AlignedBuf::new(), &plain, 0).unwrap();
        let mut want = Vec::new();
        // Sizes straddling blocks and the buffer, flushed at unaligned ends.
        for (i, n) in [1usize, 4095, 4096, 5000, 1 << 20, 3 * (1 << 19) + 7, 17]
            .into_iter()
            .enumerate()
        {
            let data = pattern(n, i as u8);
            w.append(&io, &data).unwrap();
            want.extend_from_slice(&data);
            w.flush(&io).unwrap();
            assert_eq!(plain.metadata().unwrap().len(), want.len() as u64);
            assert_eq!(std::fs::read(&path).unwrap(), want, "after {n} bytes");
            assert_eq!(w.end(), want.len() as u64);
        }
    }

    #[test]
    fn a_restart_mid_block_keeps_the_bytes_before_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let first = pattern(6000, 1);
        std::fs::write(&path, &first).unwrap();
        let (plain, direct) = handles(&path);
        let io = Direct {
            direct: direct.as_ref(),
            plain: &plain,
        };
        let mut w = WriteBehind::start(AlignedBuf::new(), &plain, 6000).unwrap();
        let more = pattern(10_000, 2);
        w.append(&io, &more).unwrap();
        w.flush(&io).unwrap();
        let mut want = first;
        want.extend_from_slice(&more);
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn without_o_direct_the_same_bytes_land() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let (plain, _) = handles(&path);
        let io = Direct {
            direct: None,
            plain: &plain,
        };
        let mut w = WriteBehind::start(AlignedBuf::new(), &plain, 0).unwrap();
        let data = pattern((1 << 20) + 123, 3);
        w.append(&io, &data).unwrap();
        w.flush(&io).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
