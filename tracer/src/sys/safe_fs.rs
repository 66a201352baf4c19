//! Files the tracer writes as root, written so a planted symlink or a directory another user
//! controls cannot turn them into writes elsewhere: temporary files are created new
//! (tempfile: O_CREAT | O_EXCL, which never follows a link) under a random name in the target's own directory,
//! then renamed over the target (rename replaces a symlink, it never follows one); state
//! directories are created with a private mode and refused when another user owns them or can
//! write to them; logs are opened without following a symlink.

use std::os::unix::fs::FileTypeExt as _;
use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
    path::Path,
};

use anyhow::{bail, Context as _, Result};

/// Writes `bytes` to `path` whole or not at all: a new temporary file in the same directory
/// (tempfile: created O_EXCL under a random name, removed if anything fails), synced, then
/// renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(drop).map_err(|e| e.error)
}

/// A directory for the tracer's state: created with `mode` (and its parents) when missing;
/// refused when it is a symlink, not a directory, owned by another user than the tracer's
/// (or root), or writable by group or others.
pub fn private_dir(dir: &Path, mode: u32) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
        Ok(meta) => check_dir(dir, &meta),
    }
}

/// An existing state directory the tracer may trust what it reads from: the same rules as
/// [`private_dir`] (a cache in a directory others can write is theirs, not the tracer's).
pub fn trusted_dir(dir: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot inspect {}", dir.display()))?;
    check_dir(dir, &meta)
}

/// Reads a file the tracer itself wrote, at most `cap` bytes: never through a symlink, never
/// waiting on a FIFO, only a regular file.
pub fn read_own(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = open_kept(
        path,
        OpenOptions::new().read(true),
        std::fs::FileType::is_file,
        "a regular file",
    )?;
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::other(format!(
            "{} is larger than {cap} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

fn check_dir(dir: &Path, meta: &std::fs::Metadata) -> Result<()> {
    if meta.file_type().is_symlink() {
        bail!(
            "refusing state directory {}: it is a symlink (remove it, or point TRACER_STATE_DIR at a real directory)",
            dir.display()
        );
    }
    if !meta.is_dir() {
        bail!(
            "refusing state directory {}: not a directory",
            dir.display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "refusing state directory {}: owned by uid {}, not by this user ({me}) or root (chown it, or use another TRACER_STATE_DIR)",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "refusing state directory {}: writable by group or others (chmod go-w {})",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Opens a log file for appending, created with `mode` if missing, never through a symlink,
/// and only a regular file or a character device (`/dev/null`: only root can make one): a
/// FIFO planted there would block every write (and, opened without `O_NONBLOCK`, the open
/// itself).
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    open_kept(
        path,
        OpenOptions::new().create(true).append(true).mode(mode),
        |t| t.is_file() || t.is_char_device(),
        "a regular file or a character device",
    )
}

/// Opens `path` with `options`, never through a symlink, never waiting (O_NONBLOCK: a FIFO
/// does not block the open; it changes nothing for a regular file), and keeps it only if its
/// type is one `keep` accepts (`kinds` says which, for the error).
fn open_kept(
    path: &Path,
    options: &mut OpenOptions,
    keep: fn(&std::fs::FileType) -> bool,
    kinds: &str,
) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    if !keep(&file.metadata()?.file_type()) {
        return Err(io::Error::other(format!(
            "{} is not {kinds}",
            path.display()
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_opens_only_as_a_file_or_a_device() {
        let d = scratch("append");
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Returns at once (no reader: ENXIO; with one it would be refused as not a file).
        assert!(open_append(&fifo, 0o640).is_err());
        std::fs::create_dir(d.join("dir")).unwrap();
        assert!(open_append(&d.join("dir"), 0o640).is_err());
        // /dev/null, to discard the log, is a character device: kept.
        assert!(open_append(Path::new("/dev/null"), 0o640).is_ok());
        let mut f = open_append(&d.join("log"), 0o640).unwrap();
        use std::io::Write as _;
        writeln!(f, "ok").unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("safe-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_a_planted_symlink_instead_of_following_it() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = d.join("ranges.json");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
        // No temporary file is left behind, and the mode asked for is the file's.
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(left.len(), 2);
        write_atomic(&target, b"private", 0o600).unwrap();
        let mode = std::fs::metadata(&target).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn log_open_refuses_a_symlink() {
        let d = scratch("log");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let log = d.join("events.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        assert!(open_append(&log, 0o640).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn state_dirs_others_can_write_or_symlinks_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = scratch("state");
        let fresh = d.join("a/b");
        private_dir(&fresh, 0o700).unwrap();
        assert_eq!(
            std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        private_dir(&fresh, 0o700).unwrap();
        let open = d.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&open, 0o700).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        let link = d.join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = private_dir(&link, 0o700).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
