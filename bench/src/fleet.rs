//! W10: small puts spread over twelve mounts through a fleet of three hosts (each a process of
//! its own running the executor and the operations API), against one host owning all twelve —
//! with the CPU each host used. In its own schema, so that the fleet balances only its mounts.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use filestore_s3::api::client::ServeClient;
use filestore_s3::pg::PgMetaStore;
use filestore_s3::{ExecutorConfig, FleetSettings, PutOptions, S3Executor};

use crate::{Spec, BUCKET};

const TOKEN: &str = "bench-fleet-token";
pub const MOUNTS: usize = 12;
const BODY: usize = 4096;

fn mount(i: usize) -> String {
    format!("w10-{i:02}")
}

fn schema(spec: &Spec) -> String {
    format!("{}_w10", spec.schema)
}

/// (internal) One host of the fleet: the executor and its operations API on `port`, until killed.
pub fn host(spec: &Spec, owner: &str, port: u16) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut config = ExecutorConfig::default()
            .with_database_url(spec.database_url.clone())
            .with_schema(schema(spec))
            .with_redis_url(spec.redis_url.clone())
            .with_redis_prefix(format!("{}-w10", spec.redis_prefix));
        config.s3 = crate::cases::settings();
        config.owner_id = owner.into();
        config.supervisor.lease_ttl = Duration::from_secs(2);
        config.fleet = Some(FleetSettings {
            address: Some(format!("http://127.0.0.1:{port}")),
            token: Some(TOKEN.into()),
            settle: Duration::from_secs(1),
            ..FleetSettings::default()
        });
        let exec = S3Executor::start(config)
            .await
            .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("ready");
        use std::io::Write as _;
        std::io::stdout().flush()?;
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let exec = exec.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let exec = exec.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            filestore_s3::http::ops::handle(exec, Some(TOKEN), req).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    })
}

/// The W10 schema with its twelve mounts on the bench bucket.
pub async fn prepare(spec: &Spec) -> Result<()> {
    let schema = schema(spec);
    filestore_s3::pg::migrate(&spec.database_url, &schema)
        .await
        .map_err(|e| anyhow::anyhow!("migrations: {e}"))?;
    let meta =
        PgMetaStore::new(&spec.database_url, &schema, 2).map_err(|e| anyhow::anyhow!("{e}"))?;
    for i in 0..MOUNTS {
        let mut row = crate::cases::row(spec);
        row.name = mount(i);
        row.bucket = BUCKET.into();
        row.prefix = format!("w10/{i:02}");
        meta.upsert_mount(&row)
            .await
            .map_err(|e| anyhow::anyhow!("mount row: {e}"))?;
    }
    Ok(())
}

pub async fn drop_schema(spec: &Spec) {
    crate::cases::drop_schema(&spec.database_url, &schema(spec)).await;
}

struct Host {
    child: Child,
    owner: String,
    url: String,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(exe: &std::path::Path, spec: &Spec, owner: &str) -> Result<Host> {
    let port = free_port()?;
    let mut child = Command::new(exe)
        .arg("fleet-host")
        .arg("--spec")
        .arg(serde_json::to_string(spec)?)
        .arg("--owner")
        .arg(owner)
        .arg("--port")
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("fleet host {owner} did not start");
    }
    Ok(Host {
        child,
        owner: owner.into(),
        url: format!("http://127.0.0.1:{port}"),
    })
}

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // After the command name in parentheses: fields 3.. ; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Waits until the live leases of the W10 mounts are spread as `want` (counts per host, any order).
async fn settle(spec: &Spec, hosts: &[Host], per_host: usize) -> Result<Duration> {
    let (c, conn) = tokio_postgres::connect(&spec.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let started = Instant::now();
    loop {
        let rows = c
            .query(
                &format!(
                    "SELECT owner, count(*) FROM {}.mount_leases WHERE expires_at > now() GROUP BY owner",
                    schema(spec)
                ),
                &[],
            )
            .await?;
        let ok = hosts.iter().all(|h| {
            rows.iter()
                .any(|r| r.get::<_, String>(0) == h.owner && r.get::<_, i64>(1) == per_host as i64)
        });
        if ok {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the fleet did not settle at {per_host} mounts per host within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The owner of each W10 mount: the URL of its host.
async fn owners(spec: &Spec, hosts: &[Host]) -> Result<Vec<String>> {
    let (c, conn) = tokio_postgres::connect(&spec.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut urls = Vec::new();
    for i in 0..MOUNTS {
        let owner: String = c
            .query_one(
                &format!(
                    "SELECT owner FROM {}.mount_leases WHERE mount = $1",
                    schema(spec)
                ),
                &[&mount(i)],
            )
            .await?
            .get(0);
        let h = hosts
            .iter()
            .find(|h| h.owner == owner)
            .context("a mount owned by no host of the run")?;
        urls.push(h.url.clone());
    }
    Ok(urls)
}

/// What one run measured.
pub struct Run {
    pub ops_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU seconds each host used during the puts.
    pub cpu: Vec<f64>,
    pub settle: Duration,
}

/// `hosts` hosts; `ops` puts of 4 KiB over the twelve mounts, `in_flight` at once; each put sent to
/// its mount's owner (`direct`) or to the hosts in turn (two in three forwarded with three hosts).
pub fn run(
    exe: &std::path::Path,
    spec: &Spec,
    hosts: usize,
    ops: usize,
    in_flight: usize,
    direct: bool,
    tag: &str,
) -> Result<Run> {
    let rt = tokio::runtime::Runtime::new()?;
    let mut started: Vec<Host> = Vec::new();
    for i in 0..hosts {
        started.push(start(exe, spec, &format!("w10-{tag}-{i}"))?);
    }
    let result = rt.block_on(async {
        let settle_took = settle(spec, &started, MOUNTS / hosts).await?;
        let owner_urls = owners(spec, &started).await?;
        let host_urls: Vec<String> = started.iter().map(|h| h.url.clone()).collect();
        let cpu_before: Vec<f64> = started.iter().map(|h| cpu_seconds(h.child.id())).collect();
        let body = vec![7u8; BODY];
        let t0 = Instant::now();
        use futures::StreamExt as _;
        let latencies: Vec<Result<f64>> = futures::stream::iter(0..ops)
            .map(|n| {
                let m = n % MOUNTS;
                let url = if direct {
                    owner_urls[m].clone()
                } else {
                    host_urls[n % host_urls.len()].clone()
                };
                let body = body.clone();
                let round = spec.round;
                let tag = tag.to_owned();
                async move {
                    let client = ServeClient::new(&url, Some(TOKEN.into()))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let t = Instant::now();
                    client
                        .put(
                            &mount(m),
                            &format!("{tag}/r{round}/{n}.bin"),
                            std::io::Cursor::new(body),
                            Some(BODY as u64),
                            PutOptions {
                                idempotency_key: Some(format!("w10-{tag}-{round}-{n}")),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("put {n}: {e}"))?;
                    Ok(t.elapsed().as_secs_f64() * 1000.0)
                }
            })
            .buffer_unordered(in_flight)
            .collect()
            .await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu: Vec<f64> = started
            .iter()
            .zip(&cpu_before)
            .map(|(h, b)| cpu_seconds(h.child.id()) - b)
            .collect();
        let mut ms = latencies.into_iter().collect::<Result<Vec<f64>>>()?;
        ms.sort_by(f64::total_cmp);
        let pct = |p: f64| ms[((ms.len() as f64 - 1.0) * p).round() as usize];
        Ok::<_, anyhow::Error>(Run {
            ops_per_second: ops as f64 / secs,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            cpu,
            settle: settle_took,
        })
    });
    for mut h in started {
        let _ = h.child.kill();
        let _ = h.child.wait();
    }
    // The killed hosts' leases: the next run's hosts break them at once (same machine), but
    // their heartbeats and leases are cleared here so each run starts from nothing.
    rt.block_on(async {
        if let Ok((c, conn)) =
            tokio_postgres::connect(&spec.database_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let _ = c
                .batch_execute(&format!(
                    "DELETE FROM {0}.executor_hosts; DELETE FROM {0}.mount_leases;",
                    schema(spec)
                ))
                .await;
        }
    });
    result
}
