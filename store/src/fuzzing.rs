//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off in every build that
//! ships).

use std::io::Write;

use crate::journal::Journal;

/// The journal reader on damaged files. The input is split at `\0` into entries (written with
/// the real [`Journal::append`], a few per group); its first two bytes pick where the file is
/// then torn (cut short) and which byte is flipped. Replay must return a prefix of the entries
/// written, all of them when nothing was damaged, and never panic. The rest of the input is
/// also read as a journal file of its own, which must not panic either.
pub fn journal(data: &[u8]) {
    let Some((&[cut, flip], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let entries: Vec<Vec<u8>> = rest
        .split(|b| *b == 0)
        .filter(|e| !e.contains(&b'\n'))
        .map(<[u8]>::to_vec)
        .collect();
    let dir = std::env::temp_dir().join(format!("tollgate-fuzz-journal-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("journal");
    let _ = std::fs::remove_file(&path);
    {
        let Ok(mut j) = Journal::open(&path) else {
            return;
        };
        for group in entries.chunks(3) {
            if j.append(group).is_err() {
                return;
            }
        }
    }
    let mut bytes = std::fs::read(&path).unwrap_or_default();
    let intact = bytes.clone();
    if !bytes.is_empty() {
        if cut != 0 {
            let at = usize::from(cut) * bytes.len() / 256;
            bytes.truncate(at);
        }
        if flip != 0 && !bytes.is_empty() {
            let at = usize::from(flip) % bytes.len();
            bytes[at] ^= flip;
        }
    }
    let damaged = bytes != intact;
    let written = |b: &[u8]| {
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(b))
            .is_ok()
    };
    if !written(&bytes) {
        return;
    }
    let Ok(j) = Journal::open(&path) else {
        return;
    };
    let Ok(replayed) = j.entries() else {
        return;
    };
    assert!(
        replayed.len() <= entries.len() && replayed[..] == entries[..replayed.len()],
        "replay returned something that was not written, or out of order"
    );
    if !damaged {
        assert_eq!(
            replayed.len(),
            entries.len(),
            "an intact journal lost entries"
        );
    }
    // The raw input as a journal file of its own.
    if written(rest)
        && let Ok(j) = Journal::open(&path)
    {
        let _ = j.entries();
    }
}
