//! Which process holds a lease, and whether it is provably gone.
//!
//! A lease row records the identity of the process that took it: the kernel's boot id, the pid
//! namespace, the pid and the process's start time (clock ticks since boot, field 22 of
//! `/proc/PID/stat`). Another executor on the same machine can then tell a crashed owner from a
//! live one without waiting for the lease to run out: the owner is *provably dead* when it ran
//! under this very kernel boot and pid namespace and no process with that pid and start time
//! exists any more (or only its zombie does, which never runs again). A reused pid has another
//! start time, so it does not pass for the owner.
//!
//! Everything else is *maybe alive*: another machine, another boot, another pid namespace (a
//! container), a `/proc` that cannot be read or does not show this process's own namespace, and
//! every existing process — running, sleeping or stopped (SIGSTOP): a paused process can wake up,
//! so its lease is never broken; it is waited for.

use std::fmt;

/// The identity of one process, as recorded with the leases it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// `/proc/sys/kernel/random/boot_id`: one per kernel boot, shared by the containers on it.
    pub boot_id: String,
    /// The pid namespace's inode (`/proc/self/ns/pid`).
    pub pid_ns: u64,
    /// The process id within that namespace.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
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
            "linux/{}/{}/{}/{}",
            self.boot_id, self.pid_ns, self.pid, self.start_ticks
        )
    }
}

impl ProcessIdentity {
    /// Parses the form written by `Display` (`linux/BOOT/PIDNS/PID/START`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        if it.next()? != "linux" {
            return None;
        }
        let boot_id = it.next()?.to_owned();
        let pid_ns = it.next()?.parse().ok()?;
        let pid = it.next()?.parse().ok()?;
        let start_ticks = it.next()?.parse().ok()?;
        if it.next().is_some() || boot_id.is_empty() {
            return None;
        }
        Some(ProcessIdentity {
            boot_id,
            pid_ns,
            pid,
            start_ticks,
        })
    }

    /// This process's identity; `None` where `/proc` does not tell it (not Linux, `/proc` not
    /// mounted, or mounted from another pid namespace), in which case nobody can break its
    /// leases early and it breaks nobody's.
    pub fn current() -> Option<Self> {
        static CURRENT: std::sync::OnceLock<Option<ProcessIdentity>> = std::sync::OnceLock::new();
        CURRENT
            .get_or_init(|| {
                let pid = std::process::id();
                let (seen_pid, _, start_ticks) = read_stat("self")?;
                // /proc must show this process under its own pid, or it belongs to another
                // namespace and says nothing reliable about the pids we would look up.
                if seen_pid != pid {
                    return None;
                }
                Some(ProcessIdentity {
                    boot_id: boot_id()?,
                    pid_ns: pid_namespace()?,
                    pid,
                    start_ticks,
                })
            })
            .clone()
    }

    /// Whether the process this identity names is provably gone, judged from this process.
    pub fn liveness(&self) -> Liveness {
        let Some(me) = Self::current() else {
            return Liveness::MaybeAlive(
                "this process cannot read its own identity from /proc".into(),
            );
        };
        self.liveness_from(&me, |pid| read_stat(&pid.to_string()))
    }

    /// [`liveness`](Self::liveness) with the observer and the process table given (tests).
    fn liveness_from(
        &self,
        me: &ProcessIdentity,
        stat_of: impl Fn(u32) -> Option<(u32, char, u64)>,
    ) -> Liveness {
        if self.boot_id != me.boot_id {
            return Liveness::MaybeAlive(format!(
                "process {} ran under another kernel boot or machine ({})",
                self.pid, self.boot_id
            ));
        }
        if self.pid_ns != me.pid_ns {
            return Liveness::MaybeAlive(format!(
                "process {} runs in another pid namespace (a container?)",
                self.pid
            ));
        }
        match stat_of(self.pid) {
            None => Liveness::Dead(format!("no process {} exists on this machine", self.pid)),
            Some((_, _, start)) if start != self.start_ticks => Liveness::Dead(format!(
                "process {} exited (its pid now belongs to a process started later)",
                self.pid
            )),
            Some((_, state @ ('Z' | 'X'), _)) => Liveness::Dead(format!(
                "process {} has exited (state {state}, not yet reaped)",
                self.pid
            )),
            Some((_, state, _)) => Liveness::MaybeAlive(format!(
                "process {} is alive on this machine (state {state}{})",
                self.pid,
                if matches!(state, 'T' | 't') {
                    ", stopped: it may be resumed"
                } else {
                    ""
                }
            )),
        }
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

fn pid_namespace() -> Option<u64> {
    // `pid:[4026531836]`
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let s = link.to_str()?;
    s.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// `(pid, state, start time)` of `/proc/<which>/stat`.
fn read_stat(which: &str) -> Option<(u32, char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).ok()?;
    parse_stat(&stat)
}

/// The command name (field 2) is in parentheses and may hold spaces and parentheses itself, so
/// the fields after it are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u32, char, u64)> {
    let pid = stat.split_once(' ')?.0.parse().ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 is the state; field 22 the start time, the 20th after the command name.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((pid, state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessIdentity {
        ProcessIdentity {
            boot_id: "b0".into(),
            pid_ns: 7,
            pid: 100,
            start_ticks: 5,
        }
    }

    #[test]
    fn identity_round_trips_and_rejects_garbage() {
        let id = me();
        assert_eq!(ProcessIdentity::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "linux",
            "linux/b/1/2",
            "linux/b/x/2/3",
            "bsd/b/1/2/3",
            "linux//1/2/3",
        ] {
            assert_eq!(ProcessIdentity::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(line), Some((4242, 'S', 987654)));
        assert_eq!(parse_stat("12 (x) R 1"), None);
    }

    #[test]
    fn only_a_gone_process_of_this_boot_and_namespace_is_dead() {
        let owner = ProcessIdentity {
            pid: 200,
            start_ticks: 50,
            ..me()
        };
        let judge = |table: Option<(u32, char, u64)>| owner.liveness_from(&me(), |_| table);
        assert!(matches!(judge(None), Liveness::Dead(_)));
        assert!(
            matches!(judge(Some((200, 'S', 51))), Liveness::Dead(_)),
            "pid reused"
        );
        assert!(
            matches!(judge(Some((200, 'Z', 50))), Liveness::Dead(_)),
            "zombie"
        );
        assert!(matches!(
            judge(Some((200, 'S', 50))),
            Liveness::MaybeAlive(_)
        ));
        match judge(Some((200, 'T', 50))) {
            Liveness::MaybeAlive(why) => assert!(why.contains("stopped"), "{why}"),
            other => panic!("a stopped process is alive: {other:?}"),
        }
        let other_boot = ProcessIdentity {
            boot_id: "b1".into(),
            ..owner.clone()
        };
        assert!(matches!(
            other_boot.liveness_from(&me(), |_| None),
            Liveness::MaybeAlive(_)
        ));
        let other_ns = ProcessIdentity {
            pid_ns: 8,
            ..owner.clone()
        };
        assert!(matches!(
            other_ns.liveness_from(&me(), |_| None),
            Liveness::MaybeAlive(_)
        ));
    }

    #[test]
    fn this_process_is_alive_to_itself() {
        if let Some(me) = ProcessIdentity::current() {
            assert!(matches!(me.liveness(), Liveness::MaybeAlive(_)));
            let gone = ProcessIdentity {
                start_ticks: me.start_ticks + 1,
                ..me
            };
            assert!(matches!(gone.liveness(), Liveness::Dead(_)));
        }
    }
}
