//! The broker's data directory and the files it replaces whole (the token file and the
//! temporary rules). The directory holds full tool arguments and the identities' token
//! digests, so it is created readable by its owner only (`0700`, files `0600`), and
//! [`too_open`] finds what a previous install or an operator left wider.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Create `dir` (and missing parents) readable and writable by its owner only.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Open `path` for writing, created (or truncated) readable by its owner only.
pub fn private_file(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).read(true);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

/// `dir` and the entries directly in it whose permissions let anyone but the owner in, with
/// their modes: what to warn about at start. (What is inside a private directory, such as the
/// files sled creates with the process's umask, is out of others' reach already.)
pub fn too_open(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut check = |p: PathBuf| {
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 && !m.file_type().is_symlink() {
                    out.push((p, mode));
                }
            }
        };
        check(dir.to_path_buf());
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                check(e.path());
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    out
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new file, never a mix:
/// write a sibling (`<name>.tmp`), sync it, rename it over, sync the directory. Errors name the
/// file that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let named = |what: &str, p: &Path, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("cannot {what} {}: {e}", p.display()))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    private_dir(dir).map_err(|e| named("create", dir, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    // A temporary left by a crash keeps its old permissions if reopened: start afresh.
    let _ = std::fs::remove_file(tmp);
    {
        let mut f = private_file(tmp, false).map_err(|e| named("write", tmp, e))?;
        f.write_all(bytes).map_err(|e| named("write", tmp, e))?;
        f.sync_all().map_err(|e| named("sync", tmp, e))?;
    }
    std::fs::rename(tmp, path).map_err(|e| named("replace", path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| named("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_no_temporary_is_left() {
        let dir = std::env::temp_dir().join(format!("tollgate-fs-test-{}", std::process::id()));
        let path = dir.join("nested").join("f.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().expect("dir")), 0o700);
            assert!(too_open(path.parent().expect("dir")).is_empty());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            assert_eq!(
                too_open(path.parent().expect("dir")),
                vec![(path.clone(), 0o644)]
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
