//! TLS to Postgres and Redis (issue 10): a Postgres cluster of the test's own with `ssl = on` and a
//! Redis that speaks TLS only, both with a certificate from a CA made for the test. The executor
//! reaches them with `sslmode=require` / `rediss://` and the CA in `FILESTORE_PG_CA_FILE` /
//! `FILESTORE_REDIS_CA_FILE`: every one of its Postgres connections is encrypted (`pg_stat_ssl`)
//! and its events arrive through the TLS-only Redis. Without the CA the certificate is refused.

use crate::common;

use common::ownredis::OwnRedis;
use common::pgcluster::PgCluster;
use common::{Backend, TestEnv};
use filestore_s3::{ExecutorConfig, GetOptions, PutOptions, S3Executor};

/// A CA, and a certificate for `localhost` / 127.0.0.1 it signed: (CA PEM, cert PEM, key PEM).
pub(crate) fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "filestore-s3 test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_over_verified_tls() {
    // It changes what is global to the process (the environment): a process of its own.
    if !common::in_own_process("tls::postgres_and_redis_over_verified_tls") {
        return;
    }
    let (ca, cert, key) = certificates();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    let (cert_file, key_file) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let pg = PgCluster::start_with_tls(Some((&cert, &key)));
    let redis = OwnRedis::with_tls(cert_file, key_file);
    let tls_db = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        pg.port()
    );
    std::env::set_var(filestore_s3::tls::PG_CA_ENV, &ca_file);
    std::env::set_var(filestore_s3::tls::REDIS_CA_ENV, &ca_file);

    let env = TestEnv::builder(Backend::S3sFs)
        .database(pg.url())
        .config(|c| {
            c.database_url = tls_db.clone();
            c.redis_url = redis.url();
        })
        .build()
        .await;
    let ex = &env.exec;
    ex.put_bytes(
        "m",
        "secret/plan.txt",
        b"over tls".to_vec(),
        PutOptions::default(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    ex.get("m", "secret/plan.txt", &mut out, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(out, b"over tls");
    ex.delete("m", "secret/plan.txt", Default::default())
        .await
        .unwrap();
    // Both events went through the TLS-only Redis (it has no plain port).
    let events = env.wait_stream(2).await;
    assert_eq!(events.len(), 2);
    assert!(ex.health().await.redis.ok);

    // Every connection the executor holds is encrypted.
    let rows = env
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'filestore-s3'",
            &[],
        )
        .await;
    assert!(!rows.is_empty(), "no executor connection seen");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "{} executor connections, not all over TLS",
        rows.len()
    );
    println!("{} executor connections, all over TLS", rows.len());

    // Without the test CA the server's certificate is refused: no silent fallback to plaintext.
    std::env::remove_var(filestore_s3::tls::PG_CA_ENV);
    let mut config = ExecutorConfig::default()
        .with_database_url(tls_db.clone())
        .with_schema(&env.schema)
        .with_redis_url(redis.url());
    config.owner_id = "no-ca".into();
    let err = S3Executor::start(config)
        .await
        .err()
        .expect("untrusted certificate");
    let msg = err.to_string();
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");
    std::env::remove_var(filestore_s3::tls::REDIS_CA_ENV);
    let client = filestore_s3::tls::redis_client(&redis.url()).unwrap();
    assert!(client.get_multiplexed_async_connection().await.is_err());
    std::env::set_var(filestore_s3::tls::REDIS_CA_ENV, &ca_file);
    std::env::set_var(filestore_s3::tls::PG_CA_ENV, &ca_file);
    env.cleanup().await;
}
