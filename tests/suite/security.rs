//! Secrets and permissions (issue 10).
//!
//! - No secret — the S3 secret key (right and wrong), the Postgres and Redis passwords — appears
//!   in the logs (every `log` record and every `tracing` event at TRACE level, captured in this
//!   process), in the errors' `Display` / `Debug`, in `Debug` of the configuration and results,
//!   nor in the output of the reference binary run at `RUST_LOG=trace`; across every operation
//!   and the error paths (a wrong secret key, a wrong Redis password, Postgres unreachable).
//! - An AccessDenied answer is reported with the S3 operation and the IAM permission it needed.

use crate::common;
use filestore_s3::Location;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::faultproxy::{Fault, FaultProxy, Op, Rule};
use common::ownredis::OwnRedis;
use common::{Backend, TestEnv, SECRET_KEY};
use filestore_s3::s3::S3Settings;
use filestore_s3::{
    DeleteOptions, Error, ExecutorConfig, FollowOptions, GetOptions, ListOptions, PutOptions,
    S3Executor, TransferOptions,
};
use filestore_s3_actors::ports::StoreErrorKind;
use futures::StreamExt;

const PG_PASSWORD: &str = "pg-Pa55word-0c41f";
const REDIS_PASSWORD: &str = "redis-Pa55word-9be2";
const WRONG_SECRET: &str = "wrong-Secret-Key-77d1";

/// Everything logged in this process, by `log` and by `tracing`.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl log::Log for Capture {
            fn enabled(&self, _: &log::Metadata) -> bool {
                true
            }
            fn log(&self, r: &log::Record) {
                let line = format!("{} {} {}\n", r.level(), r.target(), r.args());
                self.0.lock().unwrap().extend_from_slice(line.as_bytes());
            }
            fn flush(&self) {}
        }
        log::set_boxed_logger(Box::new(Capture(buf.clone()))).unwrap();
        log::set_max_level(log::LevelFilter::Trace);

        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let for_tracing = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Sink(for_tracing.clone()))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                // The in-process test S3 server (s3s / s3s-fs) knows the secret key: it is the
                // other side, not the executor.
                !m.target().starts_with("s3s")
            }));
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

use tracing_subscriber::Layer as _;

fn assert_no_secret(what: &str, text: &str) {
    for secret in [SECRET_KEY, WRONG_SECRET, PG_PASSWORD, REDIS_PASSWORD] {
        assert!(
            !text.contains(secret),
            "{what} holds the secret '{secret}':\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn with_password(url: &str, user: &str, password: &str) -> String {
    // postgres://user@host/db or postgres://host/db → postgres://user:password@host/db
    let (scheme, rest) = url.split_once("://").unwrap();
    let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
    format!("{scheme}://{user}:{password}@{rest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_errors_or_debug_output() {
    // It changes what is global to the process (the logger): a process of its own.
    if !common::in_own_process("security::no_secret_in_logs_errors_or_debug_output") {
        return;
    }
    let buf = captured().clone();
    let redis = OwnRedis::with_password(REDIS_PASSWORD);
    let pg_user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let db_url = with_password(&common::database_url(), &pg_user, PG_PASSWORD);
    let redis_url = redis.url();
    let mut texts: Vec<(String, String)> = Vec::new();

    let env = TestEnv::builder(Backend::S3sFs)
        .mount(|r| {
            r.multipart_threshold = 5 * 1024 * 1024;
            r.part_size = 5 * 1024 * 1024;
        })
        .config(|c| {
            c.database_url = db_url.clone();
            c.redis_url = redis_url.clone();
        })
        .build()
        .await;
    let ex = &env.exec;
    texts.push(("config Debug".into(), format!("{:?}", ex.config())));
    assert!(texts[0].1.contains("***"), "{}", texts[0].1);

    // Every operation, successful.
    let put = ex
        .put_bytes("m", "a.txt", b"hello".to_vec(), PutOptions::default())
        .await
        .unwrap();
    texts.push(("put result".into(), format!("{put:?}")));
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![7u8; 6 * 1024 * 1024]).unwrap();
    let r = ex
        .put_file("m", "big.bin", big.path(), PutOptions::default())
        .await
        .unwrap();
    texts.push(("multipart result".into(), format!("{r:?}")));
    let mut out = Vec::new();
    let g = ex
        .get("m", "a.txt", &mut out, GetOptions::default())
        .await
        .unwrap();
    texts.push(("get".into(), format!("{g:?}")));
    texts.push((
        "stat".into(),
        format!("{:?}", ex.stat("m", "a.txt").await.unwrap()),
    ));
    texts.push((
        "list".into(),
        format!(
            "{:?}",
            ex.list("m", "", ListOptions::default()).await.unwrap()
        ),
    ));
    let c = ex
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("m", "b.txt"),
            TransferOptions::default(),
        )
        .await
        .unwrap();
    let m = ex
        .move_object(
            &Location::new("m", "b.txt"),
            &Location::new("m", "c.txt"),
            TransferOptions::default(),
        )
        .await
        .unwrap();
    let d = ex
        .delete("m", "c.txt", DeleteOptions::default())
        .await
        .unwrap();
    texts.push(("transfer results".into(), format!("{c:?} {m:?} {d:?}")));
    let events: Vec<_> = Box::pin(ex.follow("m", 0, FollowOptions::default()))
        .take(5)
        .collect()
        .await;
    texts.push(("feed".into(), format!("{events:?}")));
    texts.push(("health".into(), format!("{:?}", ex.health().await)));
    texts.push((
        "status".into(),
        format!("{:?}", ex.status("m").await.unwrap()),
    ));

    // Error paths: a wrong secret key.
    let mut wrong = env.exec.config().clone();
    wrong.s3 = S3Settings {
        credentials: Some((common::ACCESS_KEY.into(), WRONG_SECRET.into())),
        ..S3Settings::default()
    };
    wrong.owner_id = "wrong-key".into();
    wrong.passive = true;
    let wrong_exec = S3Executor::start(wrong.clone()).await.unwrap();
    texts.push(("wrong-key config Debug".into(), format!("{wrong:?}")));
    let e = wrong_exec.stat("m", "a.txt").await.unwrap_err();
    assert!(
        matches!(&e, Error::Storage { source, .. } if source.kind == StoreErrorKind::AccessDenied),
        "{e:?}"
    );
    texts.push(("wrong-key error".into(), format!("{e} / {e:?}")));
    let mut sink = Vec::new();
    let e = wrong_exec
        .get("m", "a.txt", &mut sink, GetOptions::default())
        .await
        .unwrap_err();
    texts.push(("wrong-key get error".into(), format!("{e} / {e:?}")));
    texts.push((
        "wrong-key health".into(),
        format!("{:?}", wrong_exec.health().await),
    ));
    wrong_exec.shutdown().await;

    // A wrong Redis password, and Postgres unreachable (with a password in its URL).
    let mut bad_redis = wrong.clone();
    bad_redis.redis_url = format!("redis://:{WRONG_SECRET}@127.0.0.1:{}", redis.port);
    bad_redis.owner_id = "bad-redis".into();
    match S3Executor::start(bad_redis).await {
        Ok(x) => {
            texts.push(("bad-redis health".into(), format!("{:?}", x.health().await)));
            x.shutdown().await;
        }
        Err(e) => texts.push(("bad-redis start".into(), format!("{e} / {e:?}"))),
    }
    let mut no_pg = ExecutorConfig::default()
        .with_database_url(format!(
            "postgres://{pg_user}:{PG_PASSWORD}@127.0.0.1:1/filestore"
        ))
        .with_redis_url(redis_url.clone());
    no_pg.s3 = wrong.s3.clone();
    let e = match filestore_s3::tls::redis_client(&format!(
        "redis://:{REDIS_PASSWORD}@cache:notaport/0"
    )) {
        Err(e) => e,
        Ok(_) => panic!("an invalid Redis URL was accepted"),
    };
    texts.push(("invalid Redis URL".into(), format!("{e} / {e:?}")));
    let e = S3Executor::start(no_pg)
        .await
        .err()
        .expect("no Postgres on port 1");
    texts.push(("no-postgres start".into(), format!("{e} / {e:?}")));

    // The reference binary at RUST_LOG=trace, with the passwords in its environment.
    let mut vars = env.child_vars();
    vars.retain(|(k, _)| *k != "FILESTORE_DATABASE_URL" && *k != "FILESTORE_REDIS_URL");
    for args in [
        vec!["mount", "list"],
        vec!["stat", "m", "a.txt"],
        vec!["ls", "m", ""],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
            .args(&args)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env("FILESTORE_DATABASE_URL", &db_url)
            .env("FILESTORE_REDIS_URL", &redis_url)
            .env("RUST_LOG", "trace")
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        texts.push((format!("binary {args:?}"), text));
    }
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"))
        .args(["mount", "list"])
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "FILESTORE_DATABASE_URL",
            format!("postgres://{pg_user}:{PG_PASSWORD}@127.0.0.1:1/filestore"),
        )
        .env("FILESTORE_REDIS_URL", &redis_url)
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    texts.push((
        "binary with Postgres unreachable".into(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ));

    env.cleanup().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    // The check itself finds a secret when there is one.
    assert!(std::panic::catch_unwind(|| assert_no_secret(
        "probe",
        &format!("url=x:{PG_PASSWORD}@h")
    ))
    .is_err());
    // The capture works: it holds the executor's own records and the SDK's tracing events.
    assert!(
        logs.contains("supervisor started"),
        "no executor records captured"
    );
    assert!(
        logs.contains("aws_smithy") || logs.contains("aws_sdk_s3"),
        "no SDK events captured"
    );
    assert!(logs.len() > 10_000, "only {} bytes captured", logs.len());
    assert_no_secret("the captured logs", &logs);
    for (what, text) in &texts {
        assert_no_secret(what, text);
    }
    println!(
        "{} bytes of TRACE logs and {} outputs checked",
        logs.len(),
        texts.len()
    );
}

/// An AccessDenied answer names the operation and the IAM permission it needed; nothing is
/// committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_names_the_permission_needed() {
    let proxy = FaultProxy::start(&common::endpoint_of(Backend::S3sFs), 11).await;
    let env = TestEnv::builder(Backend::S3sFs)
        .endpoint(proxy.endpoint.clone())
        .build()
        .await;
    let ex = &env.exec;
    ex.put_bytes("m", "kept.txt", b"kept".to_vec(), PutOptions::default())
        .await
        .unwrap();
    let denied = |op| Rule::always(Some(op), Fault::Status(403, "AccessDenied"));

    proxy.clear();
    proxy.add(denied(Op::PutObject));
    let e = ex
        .put_bytes("m", "new.txt", b"x".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("s3:PutObject") && msg.contains("kms:GenerateDataKey"),
        "{msg}"
    );
    assert!(env.object(&env.key("new.txt")).await.is_none());

    proxy.clear();
    proxy.add(denied(Op::GetObject));
    let mut sink = Vec::new();
    let msg = ex
        .get("m", "kept.txt", &mut sink, GetOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("s3:GetObject"), "{msg}");

    proxy.clear();
    proxy.add(denied(Op::ListObjects));
    let msg = ex
        .list("m", "", ListOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("s3:ListBucket"), "{msg}");

    proxy.clear();
    proxy.add(denied(Op::DeleteObject));
    let msg = ex
        .delete("m", "kept.txt", DeleteOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("s3:DeleteObject"), "{msg}");

    proxy.clear();
    proxy.add(denied(Op::CopyObject));
    let msg = ex
        .copy(
            &Location::new("m", "kept.txt"),
            &Location::new("m", "copy.txt"),
            TransferOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("s3:GetObject on the source") && msg.contains("s3:PutObject"),
        "{msg}"
    );
    proxy.clear();
    // The denied writes left the stored object and its node as they were.
    assert_eq!(env.object(&env.key("kept.txt")).await.unwrap(), b"kept");
    env.cleanup().await;
}
