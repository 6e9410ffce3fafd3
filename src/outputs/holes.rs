//! Reading a sparse file without reading its holes: `SEEK_DATA` and
//! `SEEK_HOLE` tell where its data lies, and a hole's zeros are given
//! without a read. Storing an output and comparing one already in place
//! both read this way.

use std::fs::File;
use std::io;

use rustix::fs as rfs;
use rustix::io::Errno;

/// Reads a file from start to end, giving the zeros of its holes without
/// reading them: reading a hole has the kernel fill page after page with
/// zeros (capturing a 4 GiB image with 4 bytes of data took 2.5-2.8 s of
/// system time). Where the filesystem cannot tell holes from data,
/// `SEEK_DATA` calls all of it data.
struct Holes {
    /// Where the next read starts.
    at: u64,
    /// Whether `at` is in a hole, and where that hole or data ends.
    in_hole: bool,
    region_end: u64,
    /// The size when opened: a hole found reaching the end of the file
    /// ends there.
    size: u64,
    /// Off after an error of `lseek`: plain reads for the rest.
    seeking: bool,
}

impl Holes {
    /// For a file of `size` bytes (as `fstat` saw it), read from its start.
    fn new(size: u64) -> Holes {
        Holes {
            at: 0,
            in_hole: false,
            region_end: 0,
            size,
            seeking: true,
        }
    }

    /// The next bytes of `file` into `buf`, as a `read` would give them.
    fn read(&mut self, file: &File, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.seeking && self.at >= self.region_end && self.find_region(file).is_err() {
            self.seeking = false;
        }
        let left = usize::try_from(self.region_end - self.at).unwrap_or(usize::MAX);
        if self.seeking && self.in_hole {
            let n = buf.len().min(left);
            buf[..n].fill(0);
            self.at += n as u64;
            return Ok(n);
        }
        let len = if self.seeking {
            buf.len().min(left)
        } else {
            buf.len()
        };
        let n = file.read_at(&mut buf[..len], self.at)?;
        self.at += n as u64;
        Ok(n)
    }

    /// Whether `at` is in a hole or in data, and where that ends.
    fn find_region(&mut self, file: &File) -> io::Result<()> {
        // Past the size seen, or nothing the filesystem can say: plain reads
        // to the end of the file.
        (self.in_hole, self.region_end) = (false, u64::MAX);
        if self.at >= self.size {
            return Ok(());
        }
        let data = match rfs::seek(file, rfs::SeekFrom::Data(self.at)) {
            Ok(data) => data,
            // No data from here on: the rest, to the size, is a hole.
            Err(Errno::NXIO) => {
                (self.in_hole, self.region_end) = (true, self.size);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if data > self.at {
            (self.in_hole, self.region_end) = (true, data);
        } else {
            let hole = rfs::seek(file, rfs::SeekFrom::Hole(self.at))?;
            if hole > self.at {
                self.region_end = hole;
            }
        }
        Ok(())
    }
}

/// `file` read through [`Holes`].
pub struct Sparse<'a> {
    file: &'a File,
    holes: Holes,
}

impl<'a> Sparse<'a> {
    /// Reads `file`, of `size` bytes, from its start.
    pub fn new(file: &'a File, size: u64) -> Sparse<'a> {
        Sparse {
            file,
            holes: Holes::new(size),
        }
    }
}

impl io::Read for Sparse<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.holes.read(self.file, buf)
    }
}
