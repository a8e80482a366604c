//! The write-ahead journal: what makes a commit survive power loss.
//!
//! sled 0.34 makes its log durable with `sync_file_range`, which does not flush the disk's
//! write cache or the file's metadata, and it writes large values to blob files without any
//! sync. So every commit is first appended here and `fdatasync`ed; only then is it applied to
//! sled. Each line is `<16 hex digits of SHA-256 of the JSON> <JSON>\n`; a torn last line
//! (crash mid-write) fails its checksum and is ignored, which is safe because its commit was
//! never acknowledged. At a checkpoint sled is flushed and every one of its files `fsync`ed,
//! and only then is the journal emptied.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::StoreError;

/// An append-only, checksummed, fdatasync'ed log of JSON lines.
pub struct Journal {
    path: PathBuf,
    file: File,
    len: u64,
    /// An append failed and its bytes may still be in the file after `len`.
    torn: bool,
}

fn checksum(json: &[u8]) -> String {
    let digest = Sha256::digest(json);
    tollgate_shared::hex(&digest[..8])
}

impl Journal {
    /// Open (or create) the journal at `path`.
    pub fn open(path: &Path) -> Result<Journal, StoreError> {
        let failed = |e| StoreError::io(format!("cannot open the journal {}", path.display()), e);
        let file = tollgate_shared::fs::private_file(path, true).map_err(failed)?;
        let len = file.metadata().map_err(failed)?.len();
        Ok(Journal {
            path: path.to_path_buf(),
            file,
            len,
            torn: false,
        })
    }

    /// Bytes in the journal.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Every intact entry, oldest first; stops at the first damaged line (a torn write).
    pub fn entries(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let failed = |e| {
            StoreError::io(
                format!("cannot read the journal {}", self.path.display()),
                e,
            )
        };
        let mut f = File::open(&self.path).map_err(failed)?;
        f.seek(SeekFrom::Start(0)).map_err(failed)?;
        let mut out = Vec::new();
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(failed)?;
            let Some((sum, json)) = line.split_at_checked(16) else {
                break;
            };
            let json = json.strip_prefix(b" ").unwrap_or(json);
            if sum != checksum(json).as_bytes() {
                tracing::warn!(
                    journal = %self.path.display(),
                    "ignoring a damaged journal entry (a write torn by a crash; it was never acknowledged)"
                );
                break;
            }
            out.push(json.to_vec());
        }
        Ok(out)
    }

    /// Append entries and make them durable (one write, one `fdatasync`). On failure (a full
    /// disk) whatever part of them reached the file is cut off again, so a later append does
    /// not land behind a torn line (replay stops at the first damaged line) and a failed group
    /// is never replayed; if even that fails, the journal refuses appends until it succeeds.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<(), StoreError> {
        if self.torn {
            self.cut()?;
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|e| e.len() + 18).sum());
        for e in entries {
            buf.extend_from_slice(checksum(e).as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(e);
            buf.push(b'\n');
        }
        let written = self
            .file
            .write_all(&buf)
            .map_err(|e| StoreError::io("cannot append to the journal", e))
            .and_then(|()| {
                self.file
                    .sync_data()
                    .map_err(|e| StoreError::io("cannot sync the journal to disk", e))
            });
        if let Err(e) = written {
            self.torn = true;
            let _ = self.cut();
            return Err(e);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Cut the file back to its last complete append.
    fn cut(&mut self) -> Result<(), StoreError> {
        let failed = |e| StoreError::io("cannot cut a failed append off the journal", e);
        self.file.set_len(self.len).map_err(failed)?;
        self.file.sync_data().map_err(failed)?;
        self.torn = false;
        Ok(())
    }

    /// Empty the journal (after everything in it is durable elsewhere).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        let failed = |e| StoreError::io("cannot truncate the journal", e);
        self.file.set_len(0).map_err(failed)?;
        self.file.sync_all().map_err(failed)?;
        self.len = 0;
        self.torn = false;
        Ok(())
    }
}

/// `fsync` every file and directory under `dir`, and `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    let failed = |p: &Path, e| StoreError::io(format!("cannot sync {}", p.display()), e);
    let entries = std::fs::read_dir(dir).map_err(|e| failed(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| failed(dir, e))?;
        let path = entry.path();
        if entry.file_type().map_err(|e| failed(&path, e))?.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| failed(&path, e))?;
        }
    }
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| failed(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn entries_survive_reopen_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        {
            let mut j = Journal::open(&path).expect("open");
            j.append(&[b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()])
                .expect("append");
        }
        // A crash mid-write leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).expect("reopen");
        f.write_all(b"0123456789abcdef {\"c\":")
            .expect("torn write");
        let j = Journal::open(&path).expect("open");
        let got = j.entries().expect("entries");
        assert_eq!(got, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
    }

    #[test]
    fn a_flipped_byte_stops_replay_at_that_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let mut j = Journal::open(&path).expect("open");
        j.append(&[b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()])
            .expect("append");
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] = b'9';
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(j.entries().expect("entries").len(), 1);
        j.clear().expect("clear");
        assert!(j.entries().expect("entries").is_empty());
    }
}
