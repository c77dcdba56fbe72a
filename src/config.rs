//! Executor configuration: builder methods and `from_env`.

use std::time::Duration;

use filestore_s3_actors::{Error, SupervisorSettings};

use crate::s3::S3Settings;

/// How long `S3Executor::shutdown` lets running operations finish.
pub const SHUTDOWN_DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Default Postgres URL (a local server with trust authentication).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default schema holding the executor's tables.
pub const DEFAULT_SCHEMA: &str = "filestore";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default prefix of Redis keys and channels.
pub const DEFAULT_REDIS_PREFIX: &str = "filestore";
/// Default approximate bound on each mount's event stream.
pub const DEFAULT_STREAM_MAXLEN: usize = 100_000;

/// Everything the executor needs besides the mount rows.
#[derive(Clone)]
pub struct ExecutorConfig {
    /// Postgres URL.
    pub database_url: String,
    /// Schema of the executor's tables.
    pub schema: String,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of Redis keys (`{prefix}:{mount}:events`).
    pub redis_prefix: String,
    /// `MAXLEN ~` of each event stream.
    pub stream_maxlen: usize,
    /// Postgres connections at most.
    pub pool_size: usize,
    /// Apply migrations when starting.
    pub migrate_on_start: bool,
    /// S3 client settings.
    pub s3: S3Settings,
    /// Actor settings (retry policy, recovery interval, lease duration, ...).
    pub supervisor: SupervisorSettings,
    /// This executor's id in `mount_leases.owner` (host, process, a random instance id): unique
    /// per running executor.
    pub owner_id: String,
    /// Follow changes of `backend_mounts` while running (LISTEN/NOTIFY plus a periodic reload).
    pub watch_mounts: bool,
    /// Take no mount's lease: serve reads, the change feed and health only (a watcher's
    /// executor); mutating calls are refused.
    pub passive: bool,
    /// Take the leases of these mounts only (`None`, the default: every enabled mount); the
    /// others are served as by a passive executor (reads only). A one-shot command that changes one
    /// mount takes that mount's lease and leaves the rest to their owners.
    pub leased_mounts: Option<std::collections::BTreeSet<String>>,
    /// Period of the fallback reload of `backend_mounts`.
    pub mount_reload_interval: Duration,
    /// How long `shutdown` lets running operations finish before it gives up on them (they stay
    /// pending, multipart uploads resumable, for the mount's next owner).
    pub shutdown_deadline: Duration,
    /// Balance mounts with the other live executors of the database and forward calls to the
    /// owner of a mount (`None`: take every free lease, refuse others' mounts with `NotOwner`).
    /// `FILESTORE_FLEET=true` (the default of `filestore-s3 serve`); see docs/hosts.md.
    pub fleet: Option<FleetSettings>,
    /// Check every mount this executor owns this often (`FILESTORE_CHECK_INTERVAL_SECS`; off by
    /// default): findings as gauges, the last summary in `/healthz` (docs/operations.md).
    pub check_interval: Option<Duration>,
}

/// How an executor takes part in a fleet (docs/hosts.md).
#[derive(Clone)]
pub struct FleetSettings {
    /// The base URL of this host's operations API, where other hosts forward calls
    /// (`FILESTORE_ADVERTISE_URL`; `serve` defaults it to its listening address). `None`: it
    /// takes no forwarded calls (it still owns its share; others refuse its mounts' calls).
    pub address: Option<String>,
    /// Its weight in the share of mounts (`FILESTORE_FLEET_WEIGHT`, 1-1000, default 1).
    pub weight: u32,
    /// How long a host must be live before the others hand mounts over to it
    /// (`FILESTORE_FLEET_SETTLE_MS`, default 30 s): a host that comes and goes faster moves none.
    pub settle: Duration,
    /// The bearer token sent with forwarded calls and required by the operations API
    /// (`FILESTORE_SERVE_TOKEN`).
    pub token: Option<String>,
    /// How long a forwarded call may take end to end (`FILESTORE_FORWARD_TIMEOUT_MS`, 300 s).
    pub forward_timeout: Duration,
    /// How many times a call may be forwarded (`FILESTORE_FORWARD_HOPS`, 1-8, default 2): a
    /// call that reaches a host that no longer owns the mount is forwarded again at most this
    /// often in all, then refused with the retryable `NotOwner`.
    pub max_hops: u8,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            address: None,
            weight: 1,
            settle: Duration::from_secs(30),
            token: None,
            forward_timeout: Duration::from_secs(300),
            max_hops: 2,
        }
    }
}

impl std::fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSettings")
            .field("address", &self.address)
            .field("weight", &self.weight)
            .field("settle", &self.settle)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("forward_timeout", &self.forward_timeout)
            .field("max_hops", &self.max_hops)
            .finish()
    }
}

/// `{hostname}:{pid}:{8 hex digits}`: readable in `mount_leases` and unique per executor.
pub fn default_owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let instance = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &instance[..8])
}

pub use crate::redact::redact;

impl std::fmt::Debug for ExecutorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecutorConfig")
            .field("database_url", &redact(&self.database_url))
            .field("schema", &self.schema)
            .field("redis_url", &redact(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("stream_maxlen", &self.stream_maxlen)
            .field("pool_size", &self.pool_size)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("s3", &self.s3)
            .field("supervisor", &self.supervisor)
            .field("owner_id", &self.owner_id)
            .field("watch_mounts", &self.watch_mounts)
            .field("passive", &self.passive)
            .field("leased_mounts", &self.leased_mounts)
            .field("mount_reload_interval", &self.mount_reload_interval)
            .field("shutdown_deadline", &self.shutdown_deadline)
            .field("fleet", &self.fleet)
            .field("check_interval", &self.check_interval)
            .finish()
    }
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            database_url: DEFAULT_DATABASE_URL.into(),
            schema: DEFAULT_SCHEMA.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            redis_prefix: DEFAULT_REDIS_PREFIX.into(),
            stream_maxlen: DEFAULT_STREAM_MAXLEN,
            pool_size: 16,
            migrate_on_start: true,
            s3: S3Settings::default(),
            supervisor: SupervisorSettings::default(),
            owner_id: default_owner_id(),
            watch_mounts: true,
            passive: false,
            leased_mounts: None,
            mount_reload_interval: Duration::from_secs(30),
            shutdown_deadline: SHUTDOWN_DRAIN_DEADLINE,
            fleet: None,
            check_interval: None,
        }
    }
}

/// The `FILESTORE_*` variables this configuration reads (a configuration file may set only these).
pub const CONFIG_VARIABLES: &[&str] = &[
    "FILESTORE_DATABASE_URL",
    "DATABASE_URL",
    "FILESTORE_DB_SCHEMA",
    "FILESTORE_REDIS_URL",
    "FILESTORE_REDIS_PREFIX",
    "FILESTORE_STREAM_MAXLEN",
    "FILESTORE_PG_POOL_SIZE",
    "FILESTORE_S3_ATTEMPT_TIMEOUT_MS",
    "FILESTORE_S3_STALL_GRACE_MS",
    "FILESTORE_STS_ENDPOINT",
    "FILESTORE_S3_ALLOW_INSECURE_HTTP",
    "FILESTORE_S3_MAX_ATTEMPTS",
    "FILESTORE_S3_RETRY_BUDGET",
    "FILESTORE_LEASE_TTL_MS",
    "FILESTORE_OWNER_ID",
    "FILESTORE_MOUNT_RELOAD_MS",
    "FILESTORE_SHUTDOWN_DEADLINE_MS",
    "FILESTORE_OUTBOX_RETENTION_SECS",
    "FILESTORE_CONSISTENCY_HORIZON_MS",
    "FILESTORE_FLEET",
    "FILESTORE_ADVERTISE_URL",
    "FILESTORE_FLEET_WEIGHT",
    "FILESTORE_FLEET_SETTLE_MS",
    "FILESTORE_SERVE_TOKEN",
    "FILESTORE_FORWARD_TIMEOUT_MS",
    "FILESTORE_FORWARD_HOPS",
    "FILESTORE_CHECK_INTERVAL_SECS",
];

/// Where configuration values come from: the environment, then an optional file.
struct Vars {
    file: std::collections::HashMap<String, String>,
}

impl Vars {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .or_else(|| self.file.get(name).cloned())
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e| Error::Config(format!("{name}='{v}': {e}"))),
            None => Ok(None),
        }
    }
}

/// Parses a configuration file: `NAME=value` lines (optionally `export NAME=value`, values
/// optionally in single or double quotes), `#` comments and blank lines. Only the variables of
/// [`CONFIG_VARIABLES`] are accepted, so a misspelt name is an error, not a silent default.
pub fn parse_config_file(text: &str) -> Result<std::collections::HashMap<String, String>, String> {
    let mut vars = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=value", i + 1));
        };
        let name = name.trim();
        if !CONFIG_VARIABLES.contains(&name) {
            return Err(format!(
                "line {}: '{name}' is not a configuration variable (see docs/filestore.md)",
                i + 1
            ));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        vars.insert(name.to_owned(), value.to_owned());
    }
    Ok(vars)
}

impl ExecutorConfig {
    /// Defaults overridden by the `FILESTORE_*` environment variables (see `docs/filestore.md`),
    /// and beneath them by the file named in `FILESTORE_CONFIG_FILE`, if set.
    /// AWS credentials and region come from the AWS default chain (`AWS_ACCESS_KEY_ID`, ...).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_env_and_file(
            std::env::var_os("FILESTORE_CONFIG_FILE")
                .map(std::path::PathBuf::from)
                .as_deref(),
        )
    }

    /// As [`ExecutorConfig::from_env`] with `file` (if any) as the configuration file: each
    /// variable is taken from the environment when set there, else from the file.
    pub fn from_env_and_file(file: Option<&std::path::Path>) -> Result<Self, Error> {
        Self::load(file, false)
    }

    /// As [`ExecutorConfig::from_env_and_file`] for a long-running host such as `filestore-s3
    /// serve`: it joins the fleet unless `FILESTORE_FLEET=false`.
    pub fn for_host_from_env_and_file(file: Option<&std::path::Path>) -> Result<Self, Error> {
        Self::load(file, true)
    }

    fn load(file: Option<&std::path::Path>, fleet_by_default: bool) -> Result<Self, Error> {
        let file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Config(format!("configuration file {}: {e}", path.display()))
                })?;
                parse_config_file(&text).map_err(|e| {
                    Error::Config(format!("configuration file {}: {e}", path.display()))
                })?
            }
            None => Default::default(),
        };
        let vars = Vars { file };
        let mut c = ExecutorConfig::default();
        if let Some(v) = vars
            .get("FILESTORE_DATABASE_URL")
            .or_else(|| vars.get("DATABASE_URL"))
        {
            c.database_url = v;
        }
        if let Some(v) = vars.get("FILESTORE_DB_SCHEMA") {
            c.schema = v;
        }
        if let Some(v) = vars.get("FILESTORE_REDIS_URL") {
            c.redis_url = v;
        }
        if let Some(v) = vars.get("FILESTORE_REDIS_PREFIX") {
            c.redis_prefix = v;
        }
        if let Some(v) = vars.parse("FILESTORE_STREAM_MAXLEN")? {
            c.stream_maxlen = v;
        }
        if let Some(v) = vars.parse("FILESTORE_PG_POOL_SIZE")? {
            c.pool_size = v;
        }
        if let Some(ms) = vars.parse::<u64>("FILESTORE_S3_ATTEMPT_TIMEOUT_MS")? {
            c.s3.attempt_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = vars.parse::<u64>("FILESTORE_S3_STALL_GRACE_MS")? {
            c.s3.stall_grace = Duration::from_millis(ms);
        }
        if let Some(v) = vars.get("FILESTORE_STS_ENDPOINT") {
            c.s3.sts_endpoint = Some(v).filter(|v| !v.is_empty());
        }
        if let Some(v) = vars.parse::<bool>("FILESTORE_S3_ALLOW_INSECURE_HTTP")? {
            c.s3.allow_insecure_http = v;
        }
        if let Some(n) = vars.parse::<u32>("FILESTORE_S3_MAX_ATTEMPTS")? {
            c.supervisor.retry.max_attempts = n;
        }
        if let Some(n) = vars.parse::<u64>("FILESTORE_S3_RETRY_BUDGET")? {
            c.supervisor.retry.retry_budget = n;
        }
        if let Some(ms) = vars.parse::<u64>("FILESTORE_LEASE_TTL_MS")? {
            c.supervisor.lease_ttl = Duration::from_millis(ms);
        }
        if let Some(v) = vars.get("FILESTORE_OWNER_ID") {
            c.owner_id = v;
        }
        if let Some(ms) = vars.parse::<u64>("FILESTORE_MOUNT_RELOAD_MS")? {
            c.mount_reload_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = vars.parse::<u64>("FILESTORE_SHUTDOWN_DEADLINE_MS")? {
            c.shutdown_deadline = Duration::from_millis(ms);
        }
        if let Some(s) = vars.parse::<u64>("FILESTORE_OUTBOX_RETENTION_SECS")? {
            c.supervisor.outbox_retention = Duration::from_secs(s);
        }
        if let Some(ms) = vars.parse::<u64>("FILESTORE_CONSISTENCY_HORIZON_MS")? {
            c.supervisor.consistency_horizon = Duration::from_millis(ms);
        }
        // The fleet's own variables turn it on; the token and the forwarding bounds alone do not
        // (a command that talks to `serve` carries the token too).
        let fleet_vars = [
            "FILESTORE_ADVERTISE_URL",
            "FILESTORE_FLEET_WEIGHT",
            "FILESTORE_FLEET_SETTLE_MS",
        ];
        let fleet_on = vars.parse::<bool>("FILESTORE_FLEET")?;
        if fleet_on == Some(true)
            || (fleet_on.is_none()
                && (fleet_by_default || fleet_vars.iter().any(|v| vars.get(v).is_some())))
        {
            let mut f = FleetSettings::default();
            if let Some(v) = vars.get("FILESTORE_ADVERTISE_URL") {
                f.address = Some(v).filter(|v| !v.is_empty());
            }
            if let Some(w) = vars.parse::<u32>("FILESTORE_FLEET_WEIGHT")? {
                f.weight = w;
            }
            if let Some(ms) = vars.parse::<u64>("FILESTORE_FLEET_SETTLE_MS")? {
                f.settle = Duration::from_millis(ms);
            }
            if let Some(v) = vars.get("FILESTORE_SERVE_TOKEN") {
                f.token = Some(v).filter(|v| !v.is_empty());
            }
            if let Some(ms) = vars.parse::<u64>("FILESTORE_FORWARD_TIMEOUT_MS")? {
                f.forward_timeout = Duration::from_millis(ms);
            }
            if let Some(n) = vars.parse::<u8>("FILESTORE_FORWARD_HOPS")? {
                f.max_hops = n;
            }
            c.fleet = Some(f);
        }
        if let Some(secs) = vars.parse::<u64>("FILESTORE_CHECK_INTERVAL_SECS")? {
            c.check_interval = (secs > 0).then(|| Duration::from_secs(secs));
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the values; called by `S3Executor::start` too.
    pub fn validate(&self) -> Result<(), Error> {
        crate::pg::validate_schema(&self.schema)?;
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            return Err(Error::Config(format!(
                "Redis prefix '{}' must be non-empty and without white space",
                self.redis_prefix
            )));
        }
        if self.pool_size == 0 {
            return Err(Error::Config("pool_size must be at least 1".into()));
        }
        if !(1..=255).contains(&self.owner_id.len()) {
            return Err(Error::Config(format!(
                "FILESTORE_OWNER_ID must be 1-255 bytes, got {}",
                self.owner_id.len()
            )));
        }
        if self.mount_reload_interval < Duration::from_millis(100) {
            return Err(Error::Config(format!(
                "FILESTORE_MOUNT_RELOAD_MS must be at least 100, got {}",
                self.mount_reload_interval.as_millis()
            )));
        }
        if self.supervisor.lease_ttl < Duration::from_secs(1) {
            return Err(Error::Config(format!(
                "FILESTORE_LEASE_TTL_MS must be at least 1000, got {}",
                self.supervisor.lease_ttl.as_millis()
            )));
        }
        if let Some(f) = &self.fleet {
            if !(1..=1000).contains(&f.weight) {
                return Err(Error::Config(format!(
                    "FILESTORE_FLEET_WEIGHT must be 1-1000, got {}",
                    f.weight
                )));
            }
            if !(1..=8).contains(&f.max_hops) {
                return Err(Error::Config(format!(
                    "FILESTORE_FORWARD_HOPS must be 1-8, got {}",
                    f.max_hops
                )));
            }
            if let Some(a) = &f.address {
                if !(a.starts_with("http://") || a.starts_with("https://")) || a.len() > 2048 {
                    return Err(Error::Config(format!(
                        "FILESTORE_ADVERTISE_URL must be an http:// or https:// URL of at most 2048 bytes, got '{a}'"
                    )));
                }
            }
            if f.forward_timeout < Duration::from_millis(100) {
                return Err(Error::Config(format!(
                    "FILESTORE_FORWARD_TIMEOUT_MS must be at least 100, got {}",
                    f.forward_timeout.as_millis()
                )));
            }
        }
        if self.supervisor.retry.max_attempts == 0 {
            return Err(Error::Config(
                "retry max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Sets the Postgres URL.
    pub fn with_database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = url.into();
        self
    }

    /// Sets the schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the Redis URL.
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = url.into();
        self
    }

    /// Sets the Redis key prefix.
    pub fn with_redis_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.redis_prefix = prefix.into();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords() {
        let mut c = ExecutorConfig::default().with_database_url("postgres://u:secret@h/db");
        c.s3.credentials = Some(("AK".into(), "SK".into()));
        let s = format!("{c:?}");
        assert!(!s.contains("secret"), "{s}");
        assert!(!s.contains("\"SK\""), "{s}");
        assert!(s.contains("u:***@h"), "{s}");
        for (raw, hidden) in [
            ("host=db user=fs password=hunter2 dbname=x", "hunter2"),
            (
                "postgres://db/x?sslmode=require&password=hunter2",
                "hunter2",
            ),
            ("rediss://:hunter2@cache:6380/0", "hunter2"),
            ("redis://default:hunter2@cache/", "hunter2"),
        ] {
            let r = redact(raw);
            assert!(!r.contains(hidden) && r.contains("***"), "{raw} -> {r}");
        }
    }

    #[test]
    fn config_file_lines() {
        let vars = parse_config_file(
            "# filestore\n\nFILESTORE_DB_SCHEMA=prod_fs\nexport FILESTORE_LEASE_TTL_MS = 9000\nFILESTORE_OWNER_ID=\"host a\"\n",
        )
        .unwrap();
        assert_eq!(vars["FILESTORE_DB_SCHEMA"], "prod_fs");
        assert_eq!(vars["FILESTORE_LEASE_TTL_MS"], "9000");
        assert_eq!(vars["FILESTORE_OWNER_ID"], "host a");
        let err = parse_config_file("FILESTORE_LEASE_TTL=5").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("FILESTORE_LEASE_TTL"),
            "{err}"
        );
        assert!(parse_config_file("just words")
            .unwrap_err()
            .contains("NAME=value"));
    }

    #[test]
    fn config_file_values_apply_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.env");
        // Variables not set in this test process's environment.
        std::fs::write(
            &path,
            "FILESTORE_MOUNT_RELOAD_MS=1234\nFILESTORE_OUTBOX_RETENTION_SECS=60\n",
        )
        .unwrap();
        let c = ExecutorConfig::from_env_and_file(Some(&path)).unwrap();
        assert_eq!(c.mount_reload_interval, Duration::from_millis(1234));
        assert_eq!(c.supervisor.outbox_retention, Duration::from_secs(60));
        std::fs::write(&path, "FILESTORE_SHUTDOWN_DEADLINE_MS=soon\n").unwrap();
        let err = ExecutorConfig::from_env_and_file(Some(&path)).unwrap_err();
        assert!(
            err.to_string()
                .contains("FILESTORE_SHUTDOWN_DEADLINE_MS='soon'"),
            "{err}"
        );
        let missing = ExecutorConfig::from_env_and_file(Some(&dir.path().join("none")));
        assert!(matches!(missing, Err(Error::Config(_))));
    }

    #[test]
    fn bad_schema_is_refused() {
        let c = ExecutorConfig::default().with_schema("x; drop table y");
        assert!(matches!(c.validate(), Err(Error::Config(_))));
    }
}
