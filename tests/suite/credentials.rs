//! Credentials per mount, end to end on moto (S3 and STS on one port): a mount on the default
//! chain and a mount that assumes a role work side by side in one executor; the role's temporary
//! credentials sign that mount's requests and are fetched once, then cached; a copy between the
//! two mounts is streamed (another account: no server-side copy); a mount whose credentials cannot
//! be obtained reports it in its health and with a typed error, the others unaffected; a named
//! profile of a shared credentials file signs its mount's requests (reference binary).
//! Real Postgres, Redis, moto; a logging TCP proxy in front of moto shows what was signed with what.

use crate::common;
use filestore_s3::Location;

use common::faultproxy::FaultProxy;
use common::{sha256_hex, Backend, TestEnv};
use filestore_s3::{Error, GetOptions, PutOptions};
use filestore_s3_actors::ports::StoreErrorKind;

const ROLE: &str = "arn:aws:iam::123456789012:role/filestore/archive-writer";

/// The access key id a request head was signed with (`Credential=<key>/<date>/...`).
fn signed_by(head: &str) -> Option<String> {
    let auth = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))?;
    let cred = auth.split("Credential=").nth(1)?;
    Some(cred.split('/').next()?.to_owned())
}

fn has_header(head: &str, name: &str) -> bool {
    head.lines()
        .any(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
}

async fn get_bytes(env: &TestEnv, mount: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    env.exec
        .get(mount, path, &mut out, GetOptions::default())
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_chain_and_assumed_role_side_by_side() {
    let moto = common::endpoint_of(Backend::Moto);
    // Both mounts reach moto through one proxy (same endpoint: only the credentials differ);
    // STS through another, to count the AssumeRole calls.
    let s3_proxy = FaultProxy::start(&moto, 0).await;
    let sts_proxy = FaultProxy::start(&moto, 0).await;
    let sts_endpoint = sts_proxy.endpoint.clone();
    let mut env = TestEnv::builder(Backend::Moto)
        .endpoint(s3_proxy.endpoint.clone())
        .config(|c| c.s3.sts_endpoint = Some(sts_endpoint))
        .build()
        .await;
    let proxy_ep = s3_proxy.endpoint.clone();
    let role_row = env
        .add_mount("role", |r| {
            r.endpoint = Some(proxy_ep);
            r.credentials_source = "assume_role".into();
            r.role_arn = Some(ROLE.into());
            r.role_external_id = Some("filestore-ext-7".into());
        })
        .await;

    let body_a = b"written with the executor's own credentials".to_vec();
    let body_b: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    env.exec
        .put_bytes("m", "a.txt", body_a.clone(), PutOptions::default())
        .await
        .unwrap();
    let before_role = s3_proxy.heads().len();
    for i in 0..3 {
        env.exec
            .put_bytes(
                "role",
                &format!("b{i}.bin"),
                body_b.clone(),
                PutOptions::default(),
            )
            .await
            .unwrap();
    }
    assert_eq!(get_bytes(&env, "role", "b2.bin").await, body_b);
    assert_eq!(
        env.exec.stat("role", "b1.bin").await.unwrap().object.size,
        70_000
    );

    // Every request of the role mount was signed with the role's temporary key (with its session
    // token), none with the executor's static key.
    let role_heads: Vec<String> = s3_proxy.heads()[before_role..].to_vec();
    assert!(role_heads.len() >= 4, "{role_heads:?}");
    for h in &role_heads {
        let key = signed_by(h).unwrap_or_else(|| panic!("unsigned request: {h}"));
        assert_ne!(
            key,
            common::ACCESS_KEY,
            "signed with the default chain: {h}"
        );
        assert!(has_header(h, "x-amz-security-token"), "{h}");
    }
    // The default mount's requests were signed with the static key.
    let default_keys: Vec<_> = s3_proxy.heads()[..before_role]
        .iter()
        .filter_map(|h| signed_by(h))
        .collect();
    assert!(!default_keys.is_empty());
    assert!(default_keys.iter().all(|k| k == common::ACCESS_KEY));
    // One AssumeRole for all of it: the temporary credentials are cached by the client.
    let sts_calls = sts_proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with("POST "))
        .count();
    assert_eq!(sts_calls, 1, "{:?}", sts_proxy.requests());

    // A copy between the mounts goes through the executor: no CopyObject / UploadPartCopy.
    let c = env
        .exec
        .copy(
            &Location::new("m", "a.txt"),
            &Location::new("role", "copied/a.txt"),
            Default::default(),
        )
        .await
        .unwrap();
    let back = env
        .exec
        .copy(
            &Location::new("role", "b0.bin"),
            &Location::new("m", "copied/b0.bin"),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(s3_proxy.copy_requests(), 0);
    assert_eq!(
        env.object_in(&role_row.bucket, &c.key).await.unwrap(),
        body_a
    );
    assert_eq!(
        back.node.as_ref().unwrap().sha256,
        sha256_hex(&body_b),
        "the node records the streamed content"
    );
    assert_eq!(get_bytes(&env, "m", "copied/b0.bin").await, body_b);

    // Health names each mount's credential source.
    let h = env.exec.health().await;
    assert_eq!(h.mounts["m"].credentials.as_deref(), Some("default chain"));
    assert_eq!(
        h.mounts["role"].credentials.as_deref(),
        Some(format!("role '{ROLE}'").as_str())
    );
    assert!(h.mounts["role"].s3.as_ref().unwrap().ok);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_without_credentials_fails_alone() {
    let mut env = TestEnv::new(Backend::Moto).await;
    let profile = format!("no-such-profile-{}", std::process::id());
    let p = profile.clone();
    env.add_mount("broken", |r| {
        r.credentials_source = "profile".into();
        r.credentials_profile = Some(p);
    })
    .await;
    let err = env
        .exec
        .put_bytes("broken", "x.txt", b"x".to_vec(), PutOptions::default())
        .await
        .unwrap_err();
    match &err {
        Error::Storage { source, .. } => {
            assert_eq!(source.kind, StoreErrorKind::Credentials, "{err}");
        }
        other => panic!("expected a credentials error, got {other:?}"),
    }
    assert!(!err.is_retryable());
    // Nothing half-written: no node, and the refused put's journal row is failed, not pending.
    let rows = env
        .query(
            "SELECT state FROM {schema}.journal WHERE mount = 'broken'",
            &[],
        )
        .await;
    assert!(rows.iter().all(|r| r.get::<_, String>(0) != "committed"));
    assert_eq!(
        env.query("SELECT 1 FROM {schema}.nodes WHERE mount = 'broken'", &[])
            .await
            .len(),
        0
    );

    let h = env.exec.health().await;
    let broken = &h.mounts["broken"];
    assert_eq!(
        broken.credentials.as_deref(),
        Some(format!("profile '{profile}'").as_str())
    );
    assert!(!broken.s3.as_ref().unwrap().ok);
    assert!(
        broken.credentials_error.is_some(),
        "{:?}",
        broken.s3.as_ref().unwrap().error
    );
    // The other mount is unaffected.
    assert!(h.mounts["m"].s3.as_ref().unwrap().ok);
    assert!(h.mounts["m"].credentials_error.is_none());
    env.exec
        .put_bytes("m", "fine.txt", b"fine".to_vec(), PutOptions::default())
        .await
        .unwrap();
    env.cleanup().await;
}

/// The reference binary with a shared credentials file: `mount add --profile` stores the profile
/// name (never a key), and that mount's requests are signed with the profile's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_profile_signs_its_mount() {
    let proxy = FaultProxy::start(&common::endpoint_of(Backend::Moto), 0).await;
    let env = TestEnv::new(Backend::Moto).await;
    env.exec.shutdown().await; // the child process serves the mount
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[archive]\naws_access_key_id = AKIDPROFILEARCHIVE01\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_filestore-s3"));
        c.args(args)
            .envs(env.child_vars())
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", dir.path().join("config"));
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "mount",
        "add",
        "--name",
        "m",
        "--bucket",
        &env.bucket,
        "--prefix",
        &env.row.prefix,
        "--endpoint",
        &proxy.endpoint,
        "--path-style",
        "--profile",
        "archive",
    ]);
    let stored = env
        .query(
            "SELECT credentials_source, credentials_profile FROM {schema}.backend_mounts WHERE name = 'm'",
            &[],
        )
        .await;
    assert_eq!(stored[0].get::<_, String>(0), "profile");
    assert_eq!(
        stored[0].get::<_, Option<String>>(1).as_deref(),
        Some("archive")
    );

    let file = dir.path().join("p.txt");
    std::fs::write(&file, b"profile content").unwrap();
    run(&["put", "m", "p.txt", file.to_str().unwrap()]);
    let keys: Vec<_> = proxy.heads().iter().filter_map(|h| signed_by(h)).collect();
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k == "AKIDPROFILEARCHIVE01"), "{keys:?}");
    assert_eq!(
        env.object(&env.key("p.txt")).await.unwrap(),
        b"profile content"
    );
    env.cleanup().await;
}
