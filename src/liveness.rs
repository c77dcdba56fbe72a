//! Which process holds a lease, and whether it is provably gone.
//!
//! An executor process holds an exclusive `flock` on a small file of its own for as long as any of
//! its executors may use a lease (the file lives in `$TMPDIR/filestore-s3-owners-<uid>/`, named
//! with the pid and a random id). The kernel drops the lock when the process ends, however it ends
//! — exit, crash, SIGKILL, OOM kill — and never before: a running, sleeping or stopped (SIGSTOP)
//! process keeps it. The lease row records the kernel's boot id, the pid and the file's path.
//!
//! Another executor judges that process **provably dead** only when it runs under the same kernel
//! boot (so the file and its lock are the same kernel's, not a shared network file system's) and
//! it can open that very file and take its lock without waiting. Anything else is **maybe alive**:
//! another machine or boot, a file that is not there (another container, a private `/tmp`), a lock
//! held (the owner runs, or is stopped and may be resumed), or any error. The lock says nothing
//! about pids, so reused pids, pid and time namespaces and hidden `/proc` entries cannot mislead
//! it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// The identity of one process, as recorded with the leases it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id`: one per kernel boot.
    pub boot_id: String,
    /// The process id (for messages; the lock file decides).
    pub pid: u32,
    /// The lock file's device and inode: a file put at the same path later (a copy, a restored
    /// backup) is not the one the process locked.
    pub file_id: (u64, u64),
    /// The file the process holds locked while it lives.
    pub lock_file: PathBuf,
}

/// What this machine can tell about a lease holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Provably gone; the reason says how that is known.
    Dead(String),
    /// Alive, or cannot be ruled out; the reason says which.
    MaybeAlive(String),
}

impl fmt::Display for ProcessIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "flock:{}:{}:{}:{}:{}",
            self.boot_id,
            self.pid,
            self.file_id.0,
            self.file_id.1,
            self.lock_file.display()
        )
    }
}

impl ProcessIdentity {
    /// Parses the form written by `Display` (`flock:BOOT_ID:PID:DEV:INO:PATH`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.splitn(6, ':');
        if it.next()? != "flock" {
            return None;
        }
        let boot_id = it.next()?.to_owned();
        let pid = it.next()?.parse().ok()?;
        let file_id = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
        let lock_file = PathBuf::from(it.next()?);
        if boot_id.is_empty() || !lock_file.is_absolute() {
            return None;
        }
        Some(ProcessIdentity {
            boot_id,
            pid,
            file_id,
            lock_file,
        })
    }

    /// Removes the lock file of a process judged dead. Never call it for a process not judged
    /// dead; and note that from then on the process is judged "maybe alive" (its file is not
    /// visible): the executor leaves such files to the daily sweep.
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.lock_file);
    }

    /// Whether the process this identity names is provably gone, judged from this process.
    pub fn liveness(&self) -> Liveness {
        let Some(boot) = boot_id() else {
            return Liveness::MaybeAlive("this machine's boot id cannot be read".into());
        };
        let pid = self.pid;
        if self.boot_id != boot {
            return Liveness::MaybeAlive(format!(
                "process {pid} ran on another machine or before a reboot (boot id {})",
                self.boot_id
            ));
        }
        // Read-write: a network file system's lock emulation needs it for an exclusive lock.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.lock_file)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Liveness::MaybeAlive(format!(
                    "process {pid}'s lock file is not visible here (another container or a private /tmp)"
                ))
            }
            Err(e) => {
                return Liveness::MaybeAlive(format!(
                    "process {pid}'s lock file cannot be opened ({e})"
                ))
            }
        };
        {
            use std::os::unix::fs::MetadataExt;
            match file.metadata() {
                Ok(m) if (m.dev(), m.ino()) == self.file_id => {}
                Ok(_) => {
                    return Liveness::MaybeAlive(format!(
                        "process {pid}'s lock file was replaced since it was taken"
                    ))
                }
                Err(e) => {
                    return Liveness::MaybeAlive(format!(
                        "process {pid}'s lock file cannot be examined ({e})"
                    ))
                }
            }
        }
        match file.try_lock() {
            Ok(()) => Liveness::Dead(format!(
                "process {pid} on this machine has exited (its lock on {} is gone)",
                self.lock_file.display()
            )),
            Err(std::fs::TryLockError::WouldBlock) => Liveness::MaybeAlive(format!(
                "process {pid} is alive on this machine (running or stopped: it holds its lock)"
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Liveness::MaybeAlive(format!("process {pid}'s lock file cannot be locked ({e})"))
            }
        }
    }
}

static CURRENT: Mutex<Weak<OwnerLock>> = Mutex::new(Weak::new());

/// This process's lock: held while any executor (any `PgMetaStore`) of the process lives; the
/// file is removed when the last one is dropped.
pub struct OwnerLock {
    identity: ProcessIdentity,
    _file: File,
}

impl OwnerLock {
    /// The identity recorded with this process's leases.
    pub fn identity(&self) -> &ProcessIdentity {
        &self.identity
    }

    /// The lock of this process, shared by its executors; taken (file created and locked) when
    /// none is held. `None` where that is impossible (no writable temporary directory, no boot
    /// id): this process's leases then run out as usual when it dies, and it still judges others.
    pub fn current() -> Option<Arc<OwnerLock>> {
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = current.upgrade() {
            return Some(lock);
        }
        let lock = match Self::take(&std::env::temp_dir()) {
            Ok(lock) => Arc::new(lock),
            Err(e) => {
                log::warn!(
                    "no owner lock file ({e}): a crash of this process leaves its leases to run out"
                );
                return None;
            }
        };
        *current = Arc::downgrade(&lock);
        Some(lock)
    }

    /// Removes this process's lock file now, while the lock is still held: from then on no
    /// other executor can prove this process dead, so its leases run out as usual. For a process
    /// about to exit that gave every lease back (the file would otherwise stay behind).
    pub fn retire_current() {
        let current = OwnerLock::held();
        if let Some(lock) = current {
            let _ = std::fs::remove_file(&lock.identity.lock_file);
        }
    }

    fn held() -> Option<Arc<OwnerLock>> {
        CURRENT.lock().unwrap_or_else(|e| e.into_inner()).upgrade()
    }

    /// Removes from `dir` the files of processes that ended over a day ago (their lock is free)
    /// and that nobody judged since (which removes them): a lease of such a process has long run
    /// out. Removing a file only ever makes a judgement more cautious (a missing file is "maybe
    /// alive"), never wrong.
    fn sweep(dir: &Path) {
        const LEFT_OVER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > LEFT_OVER);
            if old && path.extension().is_some_and(|e| e == "lock") {
                if let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) {
                    if f.try_lock().is_ok() {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
    }

    fn take(tmp: &Path) -> Result<OwnerLock, String> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        let boot_id = boot_id().ok_or("the boot id cannot be read")?;
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .map_err(|e| e.to_string())?;
        let tmp = std::path::absolute(tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        if tmp.to_str().is_none_or(|t| t.contains('\n')) {
            return Err(format!("{}: not a plain UTF-8 path", tmp.display()));
        }
        let dir = tmp.join(format!("filestore-s3-owners-{uid}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // The directory must be this user's own, not a link or one another user prepared (who
        // could swap a live process's file for an unlocked one).
        let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !m.is_dir() || m.uid() != uid || m.mode() & 0o077 != 0 {
            return Err(format!(
                "{}: not a directory of this user's with mode 0700",
                dir.display()
            ));
        }
        // A lock on a network file system can be lost while its process lives.
        let fs = file_system_of(&dir).unwrap_or_default();
        if !LOCAL_FILE_SYSTEMS.contains(&fs.as_str()) {
            return Err(format!(
                "{}: on file system '{fs}', not a local one whose locks only the kernel drops",
                dir.display()
            ));
        }
        // Files of processes killed long ago whose leases nobody looked at since go now.
        Self::sweep(&dir);
        let pid = std::process::id();
        let path = dir.join(format!(
            "owner-{pid}-{}.lock",
            uuid::Uuid::new_v4().simple()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.try_lock()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let m = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(OwnerLock {
            identity: ProcessIdentity {
                boot_id,
                pid,
                file_id: (m.dev(), m.ino()),
                lock_file: path,
            },
            _file: file,
        })
    }
}

// No Drop: the last `OwnerLock` goes only once no view of this process can write, so its file,
// closed and unlocked, rightly shows the process's leases as breakable (a lease cut off by a
// shutdown deadline included). A process that gave every lease back removes its file
// (`retire_current`); the others are swept after a day.

/// File systems whose `flock` only the local kernel drops, when the holder's process ends.
const LOCAL_FILE_SYSTEMS: &[&str] = &[
    "tmpfs", "ramfs", "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "overlay", "bcachefs",
];

/// The type of the file system `path` is on, from the longest mount point above it.
fn file_system_of(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let real = std::fs::canonicalize(path).ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, point, fs) = (f.next()?, f.next()?, f.next()?);
            // Mount points escape a space as octal (`\040`).
            let point = point.replace("\\040", " ");
            real.starts_with(&point)
                .then(|| (point.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(':')).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_and_rejects_garbage() {
        let id = ProcessIdentity {
            boot_id: "b0".into(),
            pid: 7,
            file_id: (64, 1234),
            lock_file: "/tmp/x:y/owner.lock".into(),
        };
        assert_eq!(ProcessIdentity::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "flock",
            "flock:b:1:2:3",
            "flock:b:x:2:3:/a",
            "flock::1:2:3:/a",
            "flock:b:1:2:3:rel",
            "linux:b:1:2:3:/a",
        ] {
            assert_eq!(ProcessIdentity::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_held_lock_is_alive_a_released_one_dead_a_replaced_or_missing_one_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let lock = OwnerLock::take(dir.path()).expect("a lock in a fresh directory");
        let id = lock.identity().clone();
        assert!(matches!(id.liveness(), Liveness::MaybeAlive(why) if why.contains("alive")));
        // A file put in its place later is not the one the process locked.
        let copy = id.lock_file.with_extension("copy");
        std::fs::write(&copy, b"").unwrap();
        let replaced = ProcessIdentity {
            lock_file: copy,
            ..id.clone()
        };
        assert!(
            matches!(replaced.liveness(), Liveness::MaybeAlive(why) if why.contains("replaced"))
        );
        // Dropping the last lock closes the file, as the kernel does for a killed process.
        drop(lock);
        assert!(matches!(id.liveness(), Liveness::Dead(_)));
        assert!(
            matches!(id.liveness(), Liveness::Dead(_)),
            "judging changes nothing"
        );
        let elsewhere = ProcessIdentity {
            boot_id: "another-boot".into(),
            ..id.clone()
        };
        assert!(matches!(elsewhere.liveness(), Liveness::MaybeAlive(_)));
        id.forget();
        assert!(!id.lock_file.exists());
        assert!(matches!(id.liveness(), Liveness::MaybeAlive(why) if why.contains("not visible")));
    }

    #[test]
    fn a_directory_another_user_could_have_prepared_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let uid = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").unwrap().uid()
        };
        let dir = tmp.path().join(format!("filestore-s3-owners-{uid}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(OwnerLock::take(tmp.path()).is_err());
    }

    #[test]
    fn the_process_lock_is_shared_and_alive_to_itself() {
        let a = OwnerLock::current().expect("a lock");
        let b = OwnerLock::current().expect("the same lock");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(matches!(a.identity().liveness(), Liveness::MaybeAlive(_)));
    }
}
