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
            "flock:{}:{}:{}",
            self.boot_id,
            self.pid,
            self.lock_file.display()
        )
    }
}

impl ProcessIdentity {
    /// Parses the form written by `Display` (`flock:BOOT_ID:PID:PATH`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.splitn(4, ':');
        if it.next()? != "flock" {
            return None;
        }
        let boot_id = it.next()?.to_owned();
        let pid = it.next()?.parse().ok()?;
        let lock_file = PathBuf::from(it.next()?);
        if boot_id.is_empty() || !lock_file.is_absolute() {
            return None;
        }
        Some(ProcessIdentity {
            boot_id,
            pid,
            lock_file,
        })
    }

    /// Removes the lock file of a process judged dead whose lease was taken over (it served its
    /// purpose). Never call it for a process not judged dead.
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
        let file = match OpenOptions::new().read(true).open(&self.lock_file) {
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
                if let Ok(f) = OpenOptions::new().read(true).open(&path) {
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
        let dir = tmp.join(format!("filestore-s3-owners-{uid}"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
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
        Ok(OwnerLock {
            identity: ProcessIdentity {
                boot_id,
                pid,
                lock_file: path,
            },
            _file: file,
        })
    }
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        // Removed before the file is closed (which drops the lock), so no looker finds it unlocked.
        let _ = std::fs::remove_file(&self.identity.lock_file);
    }
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
            lock_file: "/tmp/x:y/owner.lock".into(),
        };
        assert_eq!(ProcessIdentity::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "flock",
            "flock:b:1",
            "flock:b:x:/a",
            "flock::1:/a",
            "flock:b:1:rel",
            "linux:b:1:/a",
        ] {
            assert_eq!(ProcessIdentity::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_held_lock_is_alive_a_released_one_dead_a_missing_one_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let lock = OwnerLock::take(dir.path()).expect("a lock in a fresh directory");
        let id = lock.identity().clone();
        assert!(matches!(id.liveness(), Liveness::MaybeAlive(why) if why.contains("alive")));
        // Dropping closes the file (as the kernel does for a killed process) but also removes
        // it; a file left behind unlocked is what a killed process leaves.
        let leftover = id.lock_file.with_extension("left");
        std::fs::write(&leftover, b"").unwrap();
        let dead = ProcessIdentity {
            lock_file: leftover.clone(),
            ..id.clone()
        };
        assert!(matches!(dead.liveness(), Liveness::Dead(_)));
        assert!(
            matches!(dead.liveness(), Liveness::Dead(_)),
            "judging changes nothing"
        );
        dead.forget();
        assert!(!leftover.exists());
        drop(lock);
        assert!(!id.lock_file.exists());
        assert!(matches!(id.liveness(), Liveness::MaybeAlive(why) if why.contains("not visible")));
        let elsewhere = ProcessIdentity {
            boot_id: "another-boot".into(),
            ..dead
        };
        assert!(matches!(elsewhere.liveness(), Liveness::MaybeAlive(_)));
    }

    #[test]
    fn the_process_lock_is_shared_and_alive_to_itself() {
        let a = OwnerLock::current().expect("a lock");
        let b = OwnerLock::current().expect("the same lock");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(matches!(a.identity().liveness(), Liveness::MaybeAlive(_)));
    }
}
