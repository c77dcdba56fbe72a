//! A Redis server of a test's own.

use std::time::Duration;

/// A Redis server of the test's own on a free loopback port, so that it can be restarted.
pub struct OwnRedis {
    /// Required password (`requirepass`), if any.
    pub password: Option<String>,
    /// TLS only (no plain port): the certificate and key files, and the client then uses
    /// `rediss://localhost`.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
    /// Keep the data across restarts (append-only file).
    persistent: bool,
}

impl OwnRedis {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that requires `password`.
    pub fn with_password(password: &str) -> Self {
        Self::spawn(false, Some(password.to_owned()), None)
    }

    pub fn start_with(persistent: bool) -> Self {
        Self::spawn(persistent, None, None)
    }

    fn spawn(
        persistent: bool,
        password: Option<String>,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Self {
        let port = super::free_port();
        let mut r = OwnRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            persistent,
            password,
            tls,
        };
        r.up();
        r
    }

    /// A server that speaks TLS only, with this certificate and key.
    pub fn with_tls(cert: std::path::PathBuf, key: std::path::PathBuf) -> Self {
        Self::spawn(false, None, Some((cert, key)))
    }

    pub fn url(&self) -> String {
        if self.tls.is_some() {
            return format!("rediss://localhost:{}", self.port);
        }
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub fn up(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let port = self.port.to_string();
        match &self.tls {
            Some((cert, key)) => {
                cmd.args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ]);
                cmd.arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key);
            }
            None => {
                cmd.args(["--port", &port]);
            }
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", if self.persistent { "yes" } else { "no" }])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/dev-services.sh installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server the orderly way (SIGTERM: it writes its append-only file first).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status();
            c.wait().unwrap();
        }
    }

    /// Kills the server (SIGKILL: it keeps nothing, like a crashed cache).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
