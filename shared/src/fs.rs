//! Files the broker replaces whole: the token file and the temporary rules.

use std::io::Write;
use std::path::Path;

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
    std::fs::create_dir_all(dir).map_err(|e| named("create", dir, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    {
        let mut f = std::fs::File::create(tmp).map_err(|e| named("write", tmp, e))?;
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
        let _ = std::fs::remove_dir_all(dir);
    }
}
