//! Fixed-size records an upload keeps for its whole content (its manifest, the chunks it
//! stores), held in memory while they are few and in an unnamed temporary file beyond that:
//! what an upload holds in memory then stays the same whatever the content's size.
//!
//! The file is created with `O_TMPFILE` where the system has it (`tempfile`), so it has no
//! name and nothing is left behind by a crash; it goes when the upload's records are dropped.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Records are held in memory up to this many bytes; beyond, they are written to the file
/// this many bytes at a time.
pub const SPILL_BUFFER_BYTES: usize = 64 * 1024;

/// Records of `record_len` bytes, appended in order and read back by index.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    record_len: usize,
    file: Option<File>,
    /// Records in the file; those after it are in `buffer`.
    on_disk: u64,
    buffer: Vec<u8>,
}

impl Spill {
    /// Records of `record_len` bytes, written to a file in `dir` once there are more than
    /// fit in [`SPILL_BUFFER_BYTES`].
    pub fn new(dir: PathBuf, record_len: usize) -> Self {
        assert!(record_len > 0 && record_len <= SPILL_BUFFER_BYTES);
        Self {
            dir,
            record_len,
            file: None,
            on_disk: 0,
            buffer: Vec::new(),
        }
    }

    pub fn len(&self) -> u64 {
        self.on_disk + (self.buffer.len() / self.record_len) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any record went to the file.
    pub fn spilled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends a record (exactly `record_len` bytes).
    pub fn push(&mut self, record: &[u8]) -> std::io::Result<()> {
        assert_eq!(record.len(), self.record_len, "a record of another length");
        if self.buffer.len() + record.len() > SPILL_BUFFER_BYTES {
            self.flush()?;
        }
        self.buffer.extend_from_slice(record);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                std::fs::create_dir_all(&self.dir).map_err(|e| in_dir(&self.dir, e))?;
                self.file
                    .insert(tempfile::tempfile_in(&self.dir).map_err(|e| in_dir(&self.dir, e))?)
            }
        };
        file.write_all(&self.buffer).map_err(|e| in_dir(&self.dir, e))?;
        self.on_disk += (self.buffer.len() / self.record_len) as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Reads record `index` into `out` (`record_len` bytes).
    pub fn read(&self, index: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.read_range(index, out)
    }

    /// Reads the records from `first` on into `out`, as many as it holds (a multiple of
    /// `record_len` bytes, all of them there).
    pub fn read_range(&self, first: u64, out: &mut [u8]) -> std::io::Result<()> {
        assert!(out.len().is_multiple_of(self.record_len));
        let count = (out.len() / self.record_len) as u64;
        assert!(first + count <= self.len(), "records past the end");
        let from_disk = self.on_disk.saturating_sub(first).min(count) as usize * self.record_len;
        if from_disk > 0 {
            let file = self.file.as_ref().expect("records on disk have a file");
            file.read_exact_at(&mut out[..from_disk], first * self.record_len as u64)
                .map_err(|e| in_dir(&self.dir, e))?;
        }
        if from_disk < out.len() {
            let start =
                (first + (from_disk / self.record_len) as u64 - self.on_disk) as usize * self.record_len;
            let len = out.len() - from_disk;
            out[from_disk..].copy_from_slice(&self.buffer[start..start + len]);
        }
        Ok(())
    }

    /// Every record in order, [`SPILL_BUFFER_BYTES`] at most at a time.
    pub fn blocks(&self) -> impl Iterator<Item = std::io::Result<Vec<u8>>> + '_ {
        let per_block = (SPILL_BUFFER_BYTES / self.record_len) as u64;
        let len = self.len();
        (0..len.div_ceil(per_block)).map(move |block| {
            let first = block * per_block;
            let count = per_block.min(len - first);
            let mut out = vec![0; count as usize * self.record_len];
            self.read_range(first, &mut out)?;
            Ok(out)
        })
    }
}

fn in_dir(dir: &std::path::Path, error: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        error.kind(),
        format!("upload spill file in {}: {error}", dir.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u32) -> [u8; 36] {
        let mut record = [0u8; 36];
        record[..4].copy_from_slice(&n.to_le_bytes());
        record[32..].copy_from_slice(&(n ^ 0xdead_beef).to_le_bytes());
        record
    }

    #[test]
    fn records_read_back_from_memory_and_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path().join("spill"), 36);
        for n in 0..100 {
            spill.push(&record(n)).unwrap();
        }
        assert!(!spill.spilled(), "a few records stay in memory");
        let many = 20_000u32;
        for n in 100..many {
            spill.push(&record(n)).unwrap();
        }
        assert!(spill.spilled());
        assert_eq!(spill.len(), u64::from(many));
        assert_eq!(
            std::fs::read_dir(dir.path().join("spill")).unwrap().count(),
            0,
            "the file has no name"
        );
        let mut one = [0u8; 36];
        for n in [0, 1, 1819, 1820, 1821, 12_345, many - 1] {
            spill.read(u64::from(n), &mut one).unwrap();
            assert_eq!(one, record(n));
        }
        // A range across the file and the buffer.
        let first = spill.on_disk - 3;
        let mut range = vec![0u8; 36 * 6];
        spill.read_range(first, &mut range).unwrap();
        for (at, got) in range.chunks(36).enumerate() {
            assert_eq!(got, record(first as u32 + at as u32));
        }
        let all: Vec<u8> = spill
            .blocks()
            .map(Result::unwrap)
            .flat_map(|b| b.into_iter())
            .collect();
        assert_eq!(all.len(), 36 * many as usize);
        for (n, got) in all.chunks(36).enumerate() {
            assert_eq!(got, record(n as u32));
        }
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let mut spill = Spill::new(blocked.join("spill"), 36);
        let error = (0..10_000)
            .map(|n| spill.push(&record(n)))
            .find_map(Result::err)
            .expect("spilling into a file's path fails");
        assert!(error.to_string().contains("upload spill file in"), "{error}");
    }
}
