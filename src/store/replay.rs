//! Replaying an entry: its chunks, decoded side by side and checked against
//! their checksums before their bytes go out, in recorded order.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use super::{damaged, Entry, Store, StoreError, DATA_DIR};
use crate::compress::{self, Codec};
use crate::output::Stream;
use crate::trust;

/// Outputs up to this size are decoded and verified whole before their
/// first byte goes out, so damage anywhere in them is a miss that runs the
/// command. Larger ones are verified chunk by chunk as they go out: holding
/// them would break the bound on memory, and reading them twice would
/// double a large replay's time.
const VERIFY_FIRST_BYTES: u64 = 8 << 20;

/// The most bytes one chunk can hold, raw or stored: a recording flushes
/// once it has gathered [`super::CHUNK_BYTES`], so a chunk is that plus at
/// most one read of the command's output (also 256 KiB), and compression
/// never grows it by more than a few bytes per kilobyte.
const MAX_CHUNK_STORED: usize = 3 * super::CHUNK_BYTES;

impl Store {
    /// Streams an entry's output, chunk by chunk in recorded order, to `sink`.
    /// Memory stays bounded by the few chunks in flight whatever the output's
    /// size. Every chunk is checked against its checksum before its bytes go
    /// out; an output of up to `VERIFY_FIRST_BYTES` (8 MiB) is checked whole first,
    /// so for it damage is an error before anything went to `sink`.
    pub fn replay(
        &self,
        entry: &Entry,
        sink: impl FnMut(Stream, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        // The data file is opened before the chunks are read. A writer
        // replacing this entry removes the file after its commit, so either
        // the file is open before that commit and stays readable, or the
        // chunks below are read after it and there are none.
        let mut file = match &entry.file {
            Some(name) => Some(self.open_data_file(entry, name)?),
            None => None,
        };
        let mut stmt = self.conn.prepare_cached(
            "SELECT stream, codec, raw_len, xxh3, data, file_len FROM chunks WHERE entry_id = ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([entry.id])?;
        let recorded = entry.meta.stdout_bytes + entry.meta.stderr_bytes;
        let mut outlet = Outlet {
            sink,
            held: (recorded <= VERIFY_FIRST_BYTES).then(Vec::new),
        };
        // The first chunk is decoded here; from the second on, workers decode
        // side by side and the results are written in order.
        let mut unpacker: Option<compress::Unpacker> = None;
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut replayed = 0u64;
        let mut first = true;
        while let Some(row) = rows.next()? {
            let stream =
                Stream::from_tag(row.get(0)?).ok_or_else(|| StoreError::Damaged("unknown stream".into()))?;
            let codec =
                Codec::from_tag(row.get(1)?).ok_or_else(|| StoreError::Damaged("unknown codec".into()))?;
            let raw_len = row.get::<_, i64>(2)?.max(0) as usize;
            // Lengths read from the database size buffers: one damaged
            // integer must be damage, not an allocation of a petabyte.
            if raw_len > MAX_CHUNK_STORED {
                return Err(StoreError::Damaged(format!("a chunk claims {raw_len} bytes")));
            }
            let sum = row.get::<_, i64>(3)? as u64;
            replayed += raw_len as u64;
            if replayed > recorded {
                return Err(StoreError::Damaged(format!(
                    "more bytes stored than the {recorded} recorded"
                )));
            }
            // The stored bytes, into a buffer that can go to a worker.
            let mut stored = spare.pop().unwrap_or_default();
            match row.get_ref(4)?.as_blob_or_null().map_err(rusqlite::Error::from)? {
                Some(data) => {
                    stored.clear();
                    stored.extend_from_slice(data);
                }
                None => {
                    let len = row.get::<_, Option<i64>>(5)?.unwrap_or(0).max(0) as usize;
                    if len > MAX_CHUNK_STORED {
                        return Err(StoreError::Damaged(format!("a chunk claims {len} stored bytes")));
                    }
                    let file = file.as_mut().ok_or_else(|| {
                        StoreError::Damaged("a chunk is in a data file the entry lacks".into())
                    })?;
                    file.read(len, &mut stored)?;
                }
            }
            if first {
                first = false;
                let mut out = Vec::new();
                compress::Decoder::default()
                    .unpack(codec, &stored, raw_len, sum, &mut out)
                    .map_err(damaged)?;
                outlet.put(stream, out, &mut spare)?;
                spare.push(stored);
                continue;
            }
            let workers = match &mut unpacker {
                Some(u) => u,
                None => unpacker.insert(compress::unpacker().map_err(damaged)?),
            };
            let job = (
                stream,
                codec,
                raw_len,
                sum,
                stored,
                spare.pop().unwrap_or_default(),
            );
            if let Some(done) = workers.push(job).map_err(damaged)? {
                let (stream, out, stored) = done.map_err(damaged)?;
                outlet.put(stream, out, &mut spare)?;
                spare.push(stored);
            }
        }
        while let Some(done) = unpacker
            .as_mut()
            .map(compress::Unpacker::oldest)
            .transpose()
            .map_err(damaged)?
            .flatten()
        {
            let (stream, out, _) = done.map_err(damaged)?;
            outlet.put(stream, out, &mut spare)?;
        }
        if replayed != recorded {
            // No rows at all: deleted since the lookup (nothing was written).
            return Err(if replayed == 0 {
                StoreError::Gone
            } else {
                StoreError::Damaged(format!("{replayed} bytes stored of {recorded} recorded"))
            });
        }
        outlet.release()
    }

    /// Opens `entry`'s data file. A missing file is damage only if the entry
    /// is still there: a writer replacing it removes the file.
    /// Its size is checked against the entry's record here, so a truncated
    /// file is found before any byte goes out.
    fn open_data_file(&self, entry: &Entry, name: &str) -> Result<DataFile, StoreError> {
        match DataFile::open(&self.dir, name) {
            Err(StoreError::Damaged(_)) if self.lookup(&entry.key)?.is_none_or(|e| e.id != entry.id) => {
                Err(StoreError::Gone)
            }
            Ok(file) if file.len != entry.meta.file_bytes => Err(StoreError::Damaged(format!(
                "data file {} is {} bytes; its entry records {}",
                file.path.display(),
                file.len,
                entry.meta.file_bytes
            ))),
            result => result,
        }
    }
}

/// An entry's data file, read front to back during a replay.
struct DataFile {
    path: PathBuf,
    file: fs::File,
    /// Its size when opened.
    len: u64,
}

impl DataFile {
    /// Opens the data file a row names, once the name is checked to be a
    /// plain name under `data/`: a row saying `../../secret` is damage, not
    /// a path. The file must be ours alone (one `fstat` on the open file).
    fn open(dir: &Path, name: &str) -> Result<DataFile, StoreError> {
        if !trust::plain_name(name) {
            return Err(StoreError::Damaged(format!(
                "data file name {name:?} is not a plain name"
            )));
        }
        let path = dir.join(DATA_DIR).join(name);
        match trust::open(&path, OpenOptions::new().read(true)) {
            Ok((file, meta)) => Ok(DataFile {
                path,
                file,
                len: meta.len(),
            }),
            Err(err) if err.io_kind() == Some(std::io::ErrorKind::NotFound) => Err(StoreError::Damaged(
                format!("data file {} is missing", path.display()),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Reads the next `len` bytes into `buf` (replacing what it held).
    fn read(&mut self, len: usize, buf: &mut Vec<u8>) -> Result<(), StoreError> {
        use std::io::Read;
        buf.clear();
        buf.reserve(len);
        let read = (&mut self.file)
            .take(len as u64)
            .read_to_end(buf)
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read != len {
            return Err(StoreError::Damaged(format!(
                "data file {} is shorter than its entry records",
                self.path.display()
            )));
        }
        Ok(())
    }
}

/// Where a replay's verified chunks go: straight to the sink, or, for an
/// output small enough, held until every chunk of it is verified.
struct Outlet<F> {
    sink: F,
    held: Option<Vec<(Stream, Vec<u8>)>>,
}

impl<F: FnMut(Stream, &[u8]) -> std::io::Result<()>> Outlet<F> {
    /// Passes on one verified chunk; its buffer goes to `spare` once written.
    fn put(&mut self, stream: Stream, out: Vec<u8>, spare: &mut Vec<Vec<u8>>) -> Result<(), StoreError> {
        match &mut self.held {
            Some(held) => held.push((stream, out)),
            None => {
                (self.sink)(stream, &out).map_err(output_error)?;
                spare.push(out);
            }
        }
        Ok(())
    }

    /// Writes what was held, once all of it is verified.
    fn release(mut self) -> Result<(), StoreError> {
        for (stream, out) in self.held.take().unwrap_or_default() {
            (self.sink)(stream, &out).map_err(output_error)?;
        }
        Ok(())
    }
}

fn output_error(source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: PathBuf::from("<output>"),
        source,
    }
}
