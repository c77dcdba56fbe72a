//! A PostgreSQL cluster of the test's own (initdb + pg_ctl on a free loopback port, in a temporary
//! directory), so that a test can restart it without touching the shared server. Run as the
//! `postgres` user when the tests run as root (initdb refuses root).

use std::path::PathBuf;
use std::process::Command;

pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
    /// Server options of `pg_ctl start` / `restart`.
    opts: String,
}

/// The directory of `initdb` and `pg_ctl`: `FILESTORE_TEST_PG_BINDIR`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin` (Debian).
fn bindir() -> PathBuf {
    if let Ok(d) = std::env::var("FILESTORE_TEST_PG_BINDIR") {
        return d.into();
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if d.join("initdb").exists() {
            return d;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "initdb not found: install PostgreSQL's server binaries (scripts/dev-services.sh does) \
         or set FILESTORE_TEST_PG_BINDIR",
    )
}

impl PgCluster {
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// With `tls = Some((certificate PEM, key PEM))`: `ssl = on` with that certificate (plain
    /// connections are still accepted).
    pub fn start_with_tls(tls: Option<(&str, &str)>) -> Self {
        let bin = bindir();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the cluster directory to postgres failed");
        }
        let port = super::free_port();
        let mut c = PgCluster {
            dir,
            port,
            bin,
            as_postgres,
            opts: String::new(),
        };
        let data = c.data();
        c.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            c.port,
            c.dir.path().display()
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            let d = c.dir.path();
            std::fs::write(d.join("server.crt"), cert).unwrap();
            std::fs::write(d.join("server.key"), key).unwrap();
            std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            if c.as_postgres {
                for f in ["server.crt", "server.key"] {
                    let ok = Command::new("chown")
                        .arg("postgres:postgres")
                        .arg(d.join(f))
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "chown of {f} failed");
                }
            }
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                d.display()
            ));
        }
        c.opts = opts;
        let log = format!("{}/log", c.dir.path().display());
        c.run(
            "pg_ctl",
            &["-D", &data, "-o", &c.opts, "-l", &log, "-w", "start"],
        );
        c
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m immediate`: every connection is cut, open transactions are lost (rolled
    /// back by crash recovery at the next start). Until [`PgCluster::start_again`], nothing
    /// answers on the port.
    pub fn stop_immediate(&self) {
        let data = self.data();
        self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }

    /// `pg_ctl start` after [`PgCluster::stop_immediate`].
    pub fn start_again(&self) {
        let data = self.data();
        let opts = self.opts.clone();
        let log = format!("{}/log", self.dir.path().display());
        self.run(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "stop"]).output();
    }
}
