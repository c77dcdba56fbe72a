//! Shared harness of the end-to-end tests: real Postgres, real Redis, real S3 servers.
//!
//! Each test gets its own Postgres schema, Redis key prefix and bucket, so tests run in parallel
//! and clean up after themselves. A missing service fails the test with a message saying how to
//! start it (`scripts/dev-services.sh`); nothing is skipped.

#![allow(dead_code)]

/// Instantiates a suite's scenarios once per S3 server: modules `s3s_fs`, `moto` and `external`
/// (ignored unless asked for: it needs `FILESTORE_TEST_S3_*`, docs/testing.md). Each entry is
/// `[attributes] test_name => call;`, the call an async expression that may use `B`, the
/// module's backend. Entries after `@except_moto` get no `moto` instance: scenarios about a fault,
/// a host or the feed rather than a store's dialect run in the suite on s3s-fs only, and on moto
/// through the external instance (scripts/test-external-local.sh), so the suite's run does not
/// double.
#[allow(unused_macros)] // the memory example includes this harness without suites
macro_rules! per_backend {
    ($($(#[$attr:meta])* $name:ident => $call:expr;)*
     $(@except_moto $($(#[$lattr:meta])* $lname:ident => $lcall:expr;)*)?) => {
        mod s3s_fs {
            use super::*;
            const B: Backend = Backend::S3sFs;
            per_backend!(@tests $($(#[$attr])* $name => $call;)* $($($(#[$lattr])* $lname => $lcall;)*)?);
        }
        mod moto {
            use super::*;
            #[allow(dead_code)] // a suite may have no entry for moto
            const B: Backend = Backend::Moto;
            per_backend!(@tests $($(#[$attr])* $name => $call;)*);
        }
        mod external {
            use super::*;
            const B: Backend = Backend::External;
            per_backend!(@external $($(#[$attr])* $name => $call;)* $($($(#[$lattr])* $lname => $lcall;)*)?);
        }
    };
    (@tests $($(#[$attr:meta])* $name:ident => $call:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn $name() {
                $call.await
            }
        )*
    };
    (@external $($(#[$attr:meta])* $name:ident => $call:expr;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs FILESTORE_TEST_S3_* (docs/testing.md); run with --ignored"]
            #[allow(unused_attributes)] // an entry may carry its own `ignore`
            $(#[$attr])*
            async fn $name() {
                $call.await
            }
        )*
    };
}

pub mod faultproxy;
pub mod invariants;
pub mod ownredis;

/// A loopback TCP port nobody listens on (for a server of a test's own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
pub mod pgcluster;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use filestore_s3::s3::{S3Settings, S3StoreFactory};
use filestore_s3::{ExecutorConfig, MountRow, S3Executor};
use filestore_s3_actors::mount::MountSpec;
use filestore_s3_actors::retry::RetryPolicy;
use filestore_s3_actors::SupervisorSettings;
use sha2::{Digest, Sha256};

pub const ACCESS_KEY: &str = "filestore-test";
pub const SECRET_KEY: &str = "filestore-test-secret";

/// The S3 servers the conformance suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `s3s-fs` 0.14.1, in this test process.
    S3sFs,
    /// `moto_server` at `FILESTORE_TEST_MOTO_ENDPOINT`.
    Moto,
    /// Any endpoint given by `FILESTORE_TEST_S3_*` (MinIO, a real bucket).
    External,
}

struct Target {
    endpoint: Option<String>,
    region: String,
    credentials: Option<(String, String)>,
    path_style: bool,
    /// A fixed bucket (external endpoints); otherwise each test creates one.
    bucket: Option<String>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

pub fn database_url() -> String {
    env("FILESTORE_DATABASE_URL")
        .unwrap_or_else(|| filestore_s3::config::DEFAULT_DATABASE_URL.into())
}

pub fn redis_url() -> String {
    env("FILESTORE_REDIS_URL").unwrap_or_else(|| filestore_s3::config::DEFAULT_REDIS_URL.into())
}

/// The directory the test binary's s3s-fs serves from, once it started.
static S3S_FS_ROOT: OnceLock<std::path::PathBuf> = OnceLock::new();

/// The multipart uploads open in this test binary's s3s-fs, as the upload records it keeps on
/// disk (`.upload-<id>.json` in its root, removed when the upload is completed or aborted): the
/// server does not implement ListMultipartUploads. `None` before s3s-fs started.
pub fn s3s_fs_open_uploads() -> Option<std::collections::BTreeSet<String>> {
    let root = S3S_FS_ROOT.get()?;
    Some(
        std::fs::read_dir(root)
            .unwrap()
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix(".upload-")?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect(),
    )
}

/// Starts s3s-fs once per test binary, on a runtime of its own so it outlives every test's runtime.
fn s3s_fs_endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use hyper_util::rt::{TokioExecutor, TokioIo};
                    use hyper_util::server::conn::auto::Builder as ConnBuilder;
                    let root = tempfile::Builder::new()
                        .prefix("filestore-s3s-fs-")
                        .tempdir()
                        .unwrap()
                        .keep();
                    let _ = S3S_FS_ROOT.set(root.clone());
                    let fs = s3s_fs::FileSystem::new(&root).unwrap();
                    let mut b = s3s::service::S3ServiceBuilder::new(fs);
                    b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
                    let service = b.build();
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    tx.send(format!("http://{}", listener.local_addr().unwrap()))
                        .unwrap();
                    let http = ConnBuilder::new(TokioExecutor::new());
                    loop {
                        let Ok((socket, _)) = listener.accept().await else {
                            continue;
                        };
                        let conn = http
                            .serve_connection(TokioIo::new(socket), service.clone())
                            .into_owned();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                    }
                });
            });
            rx.recv().expect("s3s-fs server thread")
        })
        .clone()
}

fn target(backend: Backend) -> Target {
    match backend {
        Backend::S3sFs => Target {
            endpoint: Some(s3s_fs_endpoint()),
            region: "us-east-1".into(),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            path_style: true,
            bucket: None,
        },
        Backend::Moto => Target {
            endpoint: Some(
                env("FILESTORE_TEST_MOTO_ENDPOINT")
                    .unwrap_or_else(|| "http://127.0.0.1:5055".into()),
            ),
            region: "us-east-1".into(),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            path_style: true,
            bucket: None,
        },
        Backend::External => {
            let bucket = env("FILESTORE_TEST_S3_BUCKET").unwrap_or_else(|| {
                panic!(
                    "the external-endpoint suite needs FILESTORE_TEST_S3_BUCKET (and optionally \
                     FILESTORE_TEST_S3_ENDPOINT, _REGION, _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _PATH_STYLE); \
                     see docs/testing.md"
                )
            });
            Target {
                endpoint: env("FILESTORE_TEST_S3_ENDPOINT"),
                region: env("FILESTORE_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                credentials: env("FILESTORE_TEST_S3_ACCESS_KEY_ID")
                    .zip(env("FILESTORE_TEST_S3_SECRET_ACCESS_KEY")),
                path_style: env("FILESTORE_TEST_S3_PATH_STYLE")
                    .is_some_and(|v| v == "1" || v == "true"),
                bucket: Some(bucket),
            }
        }
    }
}

fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}x{:06x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// The variable that tells this test binary, started again by [`in_own_process`], which test it
/// runs alone.
const OWN_PROCESS_ENV: &str = "FILESTORE_TEST_OWN_PROCESS";

/// For a test that changes what is global to its process (the logger, the environment): run as
/// part of the suite, it starts this test binary again with only itself (`--exact test`), asserts
/// that exactly that test ran there and passed, and returns `false` (the caller returns at once);
/// in that child it returns `true` and the caller runs its body. `test` is the test's full name
/// without the crate, e.g. `"tls::postgres_and_redis_over_verified_tls"`.
pub fn in_own_process(test: &str) -> bool {
    if std::env::var(OWN_PROCESS_ENV).as_deref() == Ok(test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(OWN_PROCESS_ENV, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{test}, in a process of its own:\n{stdout}");
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in a process of its own: {}\n{stdout}\n{stderr}",
        out.status
    );
    false
}

pub fn fast_settings() -> SupervisorSettings {
    SupervisorSettings {
        retry: RetryPolicy {
            max_attempts: 4,
            max_elapsed: Duration::from_secs(10),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            retry_budget: 500,
        },
        recovery_interval: Duration::from_secs(60),
        outbox_poll_interval: Duration::from_millis(500),
        max_restart_delay: Duration::from_millis(200),
        orphan_upload_grace: Duration::from_secs(3600),
        lease_ttl: Duration::from_secs(3),
        outbox_retention: Duration::from_secs(7 * 24 * 3600),
        consistency_horizon: Duration::from_secs(60),
    }
}

/// One test's world: an executor on its own schema, Redis prefix, bucket and mount.
pub struct TestEnv {
    pub backend: Backend,
    pub exec: S3Executor,
    pub mount: String,
    pub row: MountRow,
    pub bucket: String,
    pub schema: String,
    pub redis_prefix: String,
    pub s3: aws_sdk_s3::Client,
    /// The test's own connection (reconnected by [`TestEnv::reconnect_pg`] after a restart).
    pub pg: tokio::sync::Mutex<tokio_postgres::Client>,
    /// The Postgres the env (and its executor) uses.
    pub database_url: String,
    /// Reconnects by itself (a test may restart its Redis).
    pub redis: redis::aio::ConnectionManager,
    created_bucket: bool,
    /// Further mounts: (name, bucket, prefix, bucket created by the test).
    pub extra: Vec<(String, String, String, bool)>,
    id: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

type RowEdit<'a> = Box<dyn FnOnce(&mut MountRow) + 'a>;
type ConfigEdit<'a> = Box<dyn FnOnce(&mut ExecutorConfig) + 'a>;

/// How a [`TestEnv`] is built: the backend, then what differs from the defaults (the mount row
/// `m`, the actor settings — [`fast_settings`] unless given —, an endpoint that replaces the
/// server's, the executor's configuration, the Postgres).
pub struct EnvBuilder<'a> {
    backend: Backend,
    mount: Vec<RowEdit<'a>>,
    settings: SupervisorSettings,
    endpoint: Option<String>,
    config: Vec<ConfigEdit<'a>>,
    database_url: Option<String>,
}

impl<'a> EnvBuilder<'a> {
    /// Adjusts the mount row `m` before it is registered.
    pub fn mount(mut self, edit: impl FnOnce(&mut MountRow) + 'a) -> Self {
        self.mount.push(Box::new(edit));
        self
    }

    /// The actor settings.
    pub fn settings(mut self, settings: SupervisorSettings) -> Self {
        self.settings = settings;
        self
    }

    /// An endpoint that replaces the server's in the mount row (a proxy in front of it).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Adjusts the executor's configuration, last.
    pub fn config(mut self, edit: impl FnOnce(&mut ExecutorConfig) + 'a) -> Self {
        self.config.push(Box::new(edit));
        self
    }

    /// The Postgres to use (a cluster of the test's own).
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Builds the environment.
    pub async fn build(self) -> TestEnv {
        let EnvBuilder {
            backend,
            mount,
            settings,
            endpoint,
            config,
            database_url: db,
        } = self;
        TestEnv::build_on(
            db.unwrap_or_else(database_url),
            backend,
            |r| mount.into_iter().for_each(|f| f(r)),
            settings,
            endpoint,
            |c| config.into_iter().for_each(|f| f(c)),
        )
        .await
    }

    /// Builds the environment with its executor reaching the server through a fault proxy
    /// (seeded with `seed`), returned for adding faults and counting requests.
    pub async fn behind_proxy(self, seed: u64) -> (faultproxy::FaultProxy, TestEnv) {
        let proxy = faultproxy::FaultProxy::start(&endpoint_of(self.backend), seed).await;
        let env = self.endpoint(proxy.endpoint.clone()).build().await;
        (proxy, env)
    }
}

impl TestEnv {
    /// The default environment on `backend`: mount `m`, [`fast_settings`].
    pub async fn new(backend: Backend) -> Self {
        Self::builder(backend).build().await
    }

    /// A builder of an environment on `backend`.
    pub fn builder<'a>(backend: Backend) -> EnvBuilder<'a> {
        EnvBuilder {
            backend,
            mount: Vec::new(),
            settings: fast_settings(),
            endpoint: None,
            config: Vec::new(),
            database_url: None,
        }
    }

    async fn build_on(
        db_url: String,
        backend: Backend,
        edit: impl FnOnce(&mut MountRow),
        settings: SupervisorSettings,
        endpoint_override: Option<String>,
        edit_config: impl FnOnce(&mut ExecutorConfig),
    ) -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let id = unique_id();
        let t = target(backend);
        let schema = format!("fs3_test_{id}");
        let redis_prefix = format!("fs3test:{id}");

        let (pg, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("Postgres is not reachable at {db_url} ({e}); run scripts/dev-services.sh")
            });
        tokio::spawn(conn);

        let (bucket, prefix, created_bucket) = match &t.bucket {
            Some(b) => (b.clone(), format!("filestore-s3-tests/{id}"), false),
            None => (format!("fs3t-{id}"), "data".to_string(), true),
        };
        let mut row = MountRow::new("m", &bucket, &prefix);
        row.endpoint = t.endpoint.clone();
        row.region = t.region.clone();
        row.path_style = t.path_style;
        row.verify_window_ms = 5_000;
        row.allow_insecure_http =
            env("FILESTORE_TEST_S3_ALLOW_INSECURE_HTTP").is_some_and(|v| v == "1" || v == "true");
        edit(&mut row);
        let direct_endpoint = row.endpoint.clone();
        if let Some(ep) = endpoint_override {
            row.endpoint = Some(ep);
        }

        let mut config = ExecutorConfig::default()
            .with_database_url(db_url.clone())
            .with_schema(&schema)
            .with_redis_url(redis_url())
            .with_redis_prefix(&redis_prefix);
        config.supervisor = settings;
        config.s3 = S3Settings {
            credentials: t.credentials.clone(),
            ..S3Settings::default()
        };
        edit_config(&mut config);
        // The test reads the Redis the executor writes to (its own, when edit_config chose one).
        let redis = filestore_s3::tls::redis_client(&config.redis_url)
            .unwrap()
            .get_connection_manager()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Redis is not reachable at {} ({e}); run scripts/dev-services.sh",
                    config.redis_url
                )
            });

        let factory = S3StoreFactory::new(config.s3.clone()).await;
        let mut plain = row.clone();
        plain.storage_class = None;
        plain.endpoint = direct_endpoint;
        let s3 = factory
            .client_for(&MountSpec::from_row(&plain).expect("test mount row is valid"))
            .expect("default-chain client");
        if created_bucket {
            s3.create_bucket().bucket(&bucket).send().await.unwrap_or_else(|e| {
                panic!(
                    "{backend:?} S3 server at {:?} refused CreateBucket ({}); run scripts/dev-services.sh",
                    t.endpoint,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )
            });
        }

        let exec = S3Executor::start(config).await.expect("executor starts");
        let state = exec
            .register_mount(row.clone())
            .await
            .expect("mount registers");
        assert!(
            matches!(state, filestore_s3::MountState::Ready),
            "{state:?}"
        );
        TestEnv {
            backend,
            exec,
            mount: "m".into(),
            row,
            bucket,
            schema,
            redis_prefix,
            s3,
            pg: tokio::sync::Mutex::new(pg),
            database_url: db_url,
            redis,
            created_bucket,
            extra: Vec::new(),
            id,
        }
    }

    /// The environment a child process (the reference binary, or this test binary run again)
    /// needs to reach this env's Postgres schema, Redis prefix and S3 server.
    pub fn child_vars(&self) -> Vec<(&'static str, String)> {
        let t = target(self.backend);
        let mut vars = vec![
            ("FILESTORE_DATABASE_URL", self.database_url.clone()),
            ("FILESTORE_DB_SCHEMA", self.schema.clone()),
            ("FILESTORE_REDIS_URL", self.exec.config().redis_url.clone()),
            ("FILESTORE_REDIS_PREFIX", self.redis_prefix.clone()),
            // The backend's region and credentials (an external endpoint's, when given; without
            // them the child uses the AWS default chain it inherits, as this process does).
            ("AWS_REGION", t.region),
            // The reference binary's remembered idempotency keys, per test schema.
            (
                "FILESTORE_STATE_DIR",
                std::env::temp_dir()
                    .join(format!("filestore-s3-state-{}", self.schema))
                    .display()
                    .to_string(),
            ),
        ];
        if let Some((key, secret)) = t.credentials {
            vars.push(("AWS_ACCESS_KEY_ID", key));
            vars.push(("AWS_SECRET_ACCESS_KEY", secret));
        }
        vars
    }

    /// The one multipart upload recorded in this env: (upload id, state). Panics unless there is
    /// exactly one.
    pub async fn only_upload(&self) -> (String, String) {
        let mut uploads = self.uploads().await;
        assert_eq!(uploads.len(), 1, "exactly one multipart upload");
        uploads.remove(0)
    }

    /// Every recorded multipart upload, oldest first: (upload id, state).
    pub async fn uploads(&self) -> Vec<(String, String)> {
        self.query(
            "SELECT upload_id, state FROM {schema}.multipart_uploads ORDER BY created_at",
            &[],
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// Registers another mount `name` on a bucket of its own (or, on an external endpoint, the
    /// same bucket under another prefix), adjusted by `edit`; returns its row.
    pub async fn add_mount(&mut self, name: &str, edit: impl FnOnce(&mut MountRow)) -> MountRow {
        let (bucket, prefix, created) = if self.created_bucket {
            let b = format!("fs3t-{}-{name}", self.id).to_lowercase();
            self.s3.create_bucket().bucket(&b).send().await.unwrap();
            (b, format!("other/{name}"), true)
        } else {
            (
                self.bucket.clone(),
                format!("{}-{name}", self.row.prefix),
                false,
            )
        };
        let mut row = self.row.clone();
        row.name = name.into();
        row.bucket = bucket.clone();
        row.prefix = prefix.clone();
        edit(&mut row);
        let state = self.exec.register_mount(row.clone()).await.unwrap();
        if row.enabled {
            assert!(
                matches!(state, filestore_s3::MountState::Ready),
                "{state:?}"
            );
        }
        self.extra.push((name.into(), bucket, prefix, created));
        row
    }

    /// The content of an object in any bucket of this env.
    pub async fn object_in(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => Some(out.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(e) => {
                let e = filestore_s3::s3::classify(e);
                assert_eq!(
                    e.kind,
                    filestore_s3_actors::ports::StoreErrorKind::NotFound,
                    "{e}"
                );
                None
            }
        }
    }

    /// Every key under `prefix/` of `bucket`.
    pub async fn keys_in(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(format!("{prefix}/"))
            .send()
            .await
            .unwrap();
        let mut keys: Vec<String> = out
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        keys
    }

    /// A Redis command on the test's connection; the first call after the server restarted fails
    /// while the connection manager reconnects, so a failed call is tried again a few times.
    pub async fn redis_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut last = None;
        for _ in 0..5 {
            let mut conn = self.redis.clone();
            match cmd.query_async(&mut conn).await {
                Ok(v) => return v,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Redis: {:?}", last)
    }

    /// Entries of another mount's event stream.
    pub async fn stream_of(&self, mount: &str) -> Vec<(String, serde_json::Value)> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(format!("{}:{mount}:events", self.redis_prefix))
            .arg("-")
            .arg("+");
        let reply: redis::streams::StreamRangeReply = self.redis_query(&cmd).await;
        reply
            .ids
            .iter()
            .map(|e| {
                let id: String = e.get("event_id").unwrap();
                let payload: String = e.get("payload").unwrap();
                (id, serde_json::from_str(&payload).unwrap())
            })
            .collect()
    }

    /// Waits (up to 15 s) until `mount`'s stream has `n` entries.
    pub async fn wait_stream_of(&self, mount: &str, n: usize) -> Vec<(String, serde_json::Value)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.stream_of(mount).await;
            if s.len() >= n || std::time::Instant::now() > deadline {
                assert!(
                    s.len() >= n,
                    "stream of {mount} has {} entries, expected {n}: {s:?}",
                    s.len()
                );
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The key of a path in this env's mount.
    pub fn key(&self, path: &str) -> String {
        format!("{}/{path}", self.row.prefix)
    }

    /// The content of an object read straight from S3, or `None`.
    pub async fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.object_in(&self.bucket, key).await
    }

    /// Every key under the mount prefix, straight from S3.
    pub async fn bucket_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{}/", self.row.prefix))
                .set_continuation_token(token)
                .encoding_type(aws_sdk_s3::types::EncodingType::Url)
                .send()
                .await
                .unwrap();
            let encoded = out.encoding_type() == Some(&aws_sdk_s3::types::EncodingType::Url);
            keys.extend(out.contents().iter().filter_map(|o| o.key()).map(|k| {
                if encoded {
                    percent_encoding::percent_decode_str(k)
                        .decode_utf8_lossy()
                        .into_owned()
                } else {
                    k.to_owned()
                }
            }));
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// Writes an object behind the executor's back.
    pub async fn raw_put(&self, key: &str, body: &[u8]) {
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.to_vec().into())
            .send()
            .await
            .unwrap();
    }

    /// Writes an object as the executor does: with the journal id and SHA-256 of the operation
    /// in its user metadata.
    pub async fn raw_put_marked(&self, key: &str, body: &[u8], journal_id: i64) {
        let marker = filestore_s3_actors::model::WriteMarker {
            journal_id,
            sha256: Some(filestore_s3::Sha256Digest::of(body)),
        };
        let mut req = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.to_vec().into());
        for (k, v) in marker.to_pairs() {
            req = req.metadata(k, v);
        }
        req.send().await.unwrap();
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.pg
            .lock()
            .await
            .query_one(
                &format!("SELECT count(*) FROM {}.{table}", self.schema),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        let sql = sql.replace("{schema}", &self.schema);
        self.pg.lock().await.query(&sql, params).await.unwrap()
    }

    /// Runs SQL statements (`{schema}` replaced by the env's schema).
    pub async fn batch(&self, sql: &str) {
        let sql = sql.replace("{schema}", &self.schema);
        self.pg.lock().await.batch_execute(&sql).await.unwrap()
    }

    /// A new connection for the test's own queries (after the server restarted).
    pub async fn reconnect_pg(&self) {
        let (pg, conn) = tokio_postgres::connect(&self.database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        *self.pg.lock().await = pg;
    }

    pub fn stream_key(&self) -> String {
        format!("{}:{}:events", self.redis_prefix, self.mount)
    }

    /// Entries of the mount's event stream: (event_id field, parsed payload).
    pub async fn stream(&self) -> Vec<(String, serde_json::Value)> {
        self.stream_of(&self.mount).await
    }

    /// Waits (up to 10 s) until the stream has `n` entries, and returns them.
    pub async fn wait_stream(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        for _ in 0..200 {
            let s = self.stream().await;
            if s.len() >= n {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let s = self.stream().await;
        panic!(
            "stream {} has {} entries, expected {n}: {s:?}",
            self.stream_key(),
            s.len()
        );
    }

    /// The state (`pending`, `committed`, `failed`) of the journal row of an idempotency key.
    pub async fn journal_state(&self, idempotency_key: &str) -> String {
        self.query(
            "SELECT state FROM {schema}.journal WHERE idempotency_key = $1",
            &[&idempotency_key],
        )
        .await[0]
            .get(0)
    }

    /// Waits until no journal row is pending (recovery settled them), at most `within`.
    pub async fn wait_no_pending(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let rows = self
                .query(
                    "SELECT count(*) FROM {schema}.journal WHERE state = 'pending'",
                    &[],
                )
                .await;
            if rows[0].get::<_, i64>(0) == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "journal rows still pending after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to 10 s) until the notifier has relayed every outbox row.
    pub async fn wait_outbox_drained(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self
                .query(
                    "SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL",
                    &[],
                )
                .await;
            let left: i64 = rows[0].get(0);
            if left == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} outbox rows still unpublished after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Drops the schema, the Redis keys and the bucket's objects under the test prefix.
    pub async fn cleanup(self) {
        self.exec.shutdown().await;
        self.pg
            .lock()
            .await
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
        let _: () = self
            .redis_query(redis::cmd("DEL").arg(self.stream_key()))
            .await;
        for key in self.bucket_keys().await {
            let _ = self
                .s3
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await;
        }
        if self.created_bucket {
            let _ = self.s3.delete_bucket().bucket(&self.bucket).send().await;
        }
        for (name, bucket, prefix, created) in &self.extra {
            let _: () = self
                .redis_query(redis::cmd("DEL").arg(format!("{}:{name}:events", self.redis_prefix)))
                .await;
            for key in self.keys_in(bucket, prefix).await {
                let _ = self.s3.delete_object().bucket(bucket).key(key).send().await;
            }
            if *created {
                let _ = self.s3.delete_bucket().bucket(bucket).send().await;
            }
        }
    }
}

/// The endpoint of a backend, for a proxy to forward to.
pub fn endpoint_of(backend: Backend) -> String {
    target(backend).endpoint.expect("backend has an endpoint")
}

/// A deterministic pseudo-random byte stream of `len` bytes, readable as AsyncRead. Byte `i` depends
/// only on the seed and `i`, so the stream is the same whatever sizes it is read in.
pub struct GeneratedReader {
    seed: u64,
    pos: u64,
    len: u64,
}

impl GeneratedReader {
    pub fn new(seed: u64, len: u64) -> Self {
        GeneratedReader { seed, pos: 0, len }
    }

    fn word(&self, w: u64) -> [u8; 8] {
        // splitmix64
        let mut z = self
            .seed
            .wrapping_add(w.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl tokio::io::AsyncRead for GeneratedReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.len - self.pos)
            .min(1 << 20) as usize;
        let mut out = Vec::with_capacity(n);
        let mut pos = self.pos;
        while out.len() < n {
            let word = self.word(pos / 8);
            let from = (pos % 8) as usize;
            let take = (8 - from).min(n - out.len());
            out.extend_from_slice(&word[from..from + take]);
            pos += take as u64;
        }
        self.pos = pos;
        buf.put_slice(&out);
        std::task::Poll::Ready(Ok(()))
    }
}

/// SHA-256 and length of everything read from `r`.
pub async fn hash_reader(mut r: impl tokio::io::AsyncRead + Unpin) -> (String, u64) {
    use tokio::io::AsyncReadExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    (hex::encode(h.finalize()), total)
}

/// An AsyncWrite that only hashes.
pub struct HashingWriter {
    pub hasher: Sha256,
    pub len: u64,
}

impl HashingWriter {
    pub fn new() -> Self {
        HashingWriter {
            hasher: Sha256::new(),
            len: 0,
        }
    }
    pub fn hex(self) -> String {
        hex::encode(self.hasher.finalize())
    }
}

impl tokio::io::AsyncWrite for HashingWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Single writes for tests that prepare journal rows by hand: each is a batch of one through
/// `MetaStore::apply`, the executor's only write path.
#[async_trait::async_trait]
pub trait MetaWrites {
    async fn begin(
        &self,
        intent: &filestore_s3_actors::model::NewIntent,
    ) -> Result<filestore_s3_actors::model::IntentOutcome, filestore_s3_actors::ports::MetaError>;
    async fn commit(
        &self,
        record: &filestore_s3_actors::model::CommitRecord,
    ) -> Result<filestore_s3::OpResult, filestore_s3_actors::ports::MetaError>;
    async fn fail(
        &self,
        journal_id: i64,
        error: &str,
    ) -> Result<(), filestore_s3_actors::ports::MetaError>;
}

#[async_trait::async_trait]
impl<T: filestore_s3_actors::ports::MetaStore + ?Sized> MetaWrites for T {
    async fn begin(
        &self,
        intent: &filestore_s3_actors::model::NewIntent,
    ) -> Result<filestore_s3_actors::model::IntentOutcome, filestore_s3_actors::ports::MetaError>
    {
        match one_write(self, MetaWrite::Begin(intent.clone())).await? {
            MetaOutput::Begun(o) => Ok(o),
            other => panic!("an intent answered {other:?}"),
        }
    }
    async fn commit(
        &self,
        record: &filestore_s3_actors::model::CommitRecord,
    ) -> Result<filestore_s3::OpResult, filestore_s3_actors::ports::MetaError> {
        match one_write(self, MetaWrite::Commit(record.clone())).await? {
            MetaOutput::Committed(r) => Ok(*r),
            other => panic!("a commit answered {other:?}"),
        }
    }
    async fn fail(
        &self,
        journal_id: i64,
        error: &str,
    ) -> Result<(), filestore_s3_actors::ports::MetaError> {
        let error = error.to_owned();
        one_write(self, MetaWrite::Fail { journal_id, error })
            .await
            .map(|_| ())
    }
}

use filestore_s3_actors::ports::{MetaOutput, MetaWrite};

async fn one_write<T: filestore_s3_actors::ports::MetaStore + ?Sized>(
    meta: &T,
    write: MetaWrite,
) -> Result<MetaOutput, filestore_s3_actors::ports::MetaError> {
    meta.apply(std::slice::from_ref(&write))
        .await?
        .pop()
        .expect("one answer")
}
