//! The benchmark of filestore-s3 (docs/benchmarks.md): one command that starts a file-backed S3
//! server (s3s-fs, in a process of its own), uses the Postgres and Redis of `scripts/dev-services.sh`,
//! generates its data and runs every workload side by side — the executor, a raw aws-sdk-s3 loop
//! with the same client settings and no Postgres / Redis, and the transfer tools found on the
//! machine (s5cmd, rclone, aws) — each case in a process of its own, so its peak RSS is its own
//! (`wait4`). It prints a table with ratios to the baselines of the same run and writes it as JSON.

mod cases;
mod fleet;
mod scan;
mod tools;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};

pub const ACCESS_KEY: &str = "bench-access-key";
pub const SECRET_KEY: &str = "bench-secret-key";
pub const BUCKET: &str = "bench";
pub const MOUNT: &str = "b";
const MIB: u64 = 1024 * 1024;

#[derive(Parser)]
#[command(about = "filestore-s3 benchmark (docs/benchmarks.md)")]
enum Cli {
    /// Runs the workloads and prints the table.
    Run(RunArgs),
    /// (internal) Serves s3s-fs over ROOT and prints its endpoint.
    ServeS3 {
        #[arg(long)]
        root: PathBuf,
        /// Milliseconds every request waits before the server handles it.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// (internal) Runs one measured case and prints `RESULT <json>`.
    Case {
        #[arg(long)]
        spec: String,
    },
    /// (internal) One host of W10's fleet: the executor and its operations API, until killed.
    FleetHost {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        port: u16,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Tiny sizes (seconds): the smoke run of the test command.
    #[arg(long)]
    smoke: bool,
    /// Workloads to run (W1,W2,W3,W4,W5,W7,W8,W10); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the table as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// W1 / W7 object size in MiB (default 2048; smoke 8). The executor's W1 uploads write one
    /// key, the raw SDK's another and the tools' a third, so the store holds three copies at most.
    #[arg(long)]
    size_mib: Option<u64>,
    /// W2 object count (default 5000; smoke 200).
    #[arg(long)]
    small_count: Option<usize>,
    /// W8: objects and nodes of the checked mount (default 10000; smoke 2000). s3s-fs lists
    /// slower the more keys it holds (each page walks its directory tree): 100,000 took over two
    /// minutes per scan here.
    #[arg(long)]
    check_objects: Option<usize>,
    /// Milliseconds the S3 server waits before handling each request (0: none), as a store
    /// across a network would: what the ratios become when the store, not this machine's two
    /// cores, is the bottleneck. Every client (raw loops, executor, tools) sees the same delay.
    #[arg(long, default_value_t = 0)]
    store_latency_ms: u64,
    /// Rounds of the chosen workloads, one after the other; each row then shows the median of
    /// the rounds' values and the median of the ratios each round measured against its own
    /// baseline, with their range (this machine moves 10–25 % between runs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    repeat: u64,
}

/// Everything a case process needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub case: String,
    pub endpoint: String,
    pub database_url: String,
    pub redis_url: String,
    pub schema: String,
    pub redis_prefix: String,
    pub file: PathBuf,
    pub out_file: PathBuf,
    pub small_dir: PathBuf,
    pub count: usize,
    pub in_flight: usize,
    pub part_size: u64,
    pub part_concurrency: usize,
    pub callers: usize,
    pub ops: usize,
    pub batch: usize,
    /// W4: operations started per second.
    pub rate: u64,
    /// The round (`--repeat`), so that cases writing journal rows use new keys in each.
    pub round: u64,
}

/// What a case measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Measured {
    pub seconds: f64,
    pub bytes: u64,
    pub ops: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One row of the table.
#[derive(Debug, Clone, Default, Serialize)]
struct Row {
    workload: String,
    case: String,
    /// Of the row this one is compared with.
    baseline: Option<String>,
    unit: &'static str,
    value: Option<f64>,
    ratio: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    peak_rss_mib: Option<f64>,
    note: String,
    /// Each round's value, with `--repeat` (the row's value is their median).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rounds: Vec<f64>,
}

/// The median of `v` (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The lowest and the highest of `v` (infinities for an empty `v`).
fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// One row per case from the rows of several rounds: median value, p50 and p99, the median of
/// the per-round ratios (each against the baseline measured in the same round), the highest peak
/// RSS. A case that failed in any round keeps that round's note.
fn aggregate(rounds: Vec<Vec<Row>>) -> Vec<Row> {
    let n = rounds.len();
    if n <= 1 {
        return rounds.into_iter().next().unwrap_or_default();
    }
    rounds[0]
        .iter()
        .map(|first| {
            let same: Vec<&Row> = rounds
                .iter()
                .filter_map(|round| {
                    round
                        .iter()
                        .find(|r| r.workload == first.workload && r.case == first.case)
                })
                .collect();
            let all = |f: fn(&Row) -> Option<f64>| same.iter().filter_map(|r| f(r)).collect();
            let ratios: Vec<f64> = all(|r| r.ratio);
            let mut note = same
                .iter()
                .find(|r| r.note.starts_with("FAILED"))
                .map_or_else(|| first.note.clone(), |r| r.note.clone());
            if ratios.len() > 1 {
                let (lo, hi) = spread(&ratios);
                note = format!(
                    "(ratio {lo:.2}–{hi:.2} over {} rounds) {note}",
                    ratios.len()
                )
                .trim_end()
                .to_owned();
            }
            Row {
                value: median(all(|r| r.value)),
                ratio: median(ratios),
                p50_ms: median(all(|r| r.p50_ms)),
                p99_ms: median(all(|r| r.p99_ms)),
                peak_rss_mib: all(|r| r.peak_rss_mib).into_iter().reduce(f64::max),
                rounds: all(|r| r.value),
                note,
                ..first.clone()
            }
        })
        .collect()
}

/// The executor's cases the acceptance figures set against s5cmd and rclone, and those tools.
const AGAINST_TOOLS: [(&str, &str); 4] = [
    ("W1", "exec-put-file"),
    ("W1", "exec-put-stream"),
    ("W2", "exec-small-response-verified"),
    ("W7", "exec-get-file"),
];
const TOOLS_COMPARED: [&str; 4] = [
    "s5cmd-matched",
    "s5cmd-defaults",
    "rclone-matched",
    "rclone-defaults",
];

/// An executor case divided by a tool's figure: the median over the rounds of the ratio within
/// each round, and its range.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct ToolRatio {
    workload: &'static str,
    case: &'static str,
    tool: &'static str,
    ratio: f64,
    lowest: f64,
    highest: f64,
}

fn against_tools(rounds: &[Vec<Row>]) -> Vec<ToolRatio> {
    let value = |round: &[Row], w: &str, c: &str| {
        round
            .iter()
            .find(|r| r.workload == w && r.case == c)
            .and_then(|r| r.value)
    };
    let mut out = Vec::new();
    for (workload, case) in AGAINST_TOOLS {
        for tool in TOOLS_COMPARED {
            let ratios: Vec<f64> = rounds
                .iter()
                .filter_map(|round| {
                    match (value(round, workload, case), value(round, workload, tool)) {
                        (Some(e), Some(t)) if t > 0.0 => Some(e / t),
                        _ => None,
                    }
                })
                .collect();
            let (lowest, highest) = spread(&ratios);
            let Some(ratio) = median(ratios) else {
                continue;
            };
            out.push(ToolRatio {
                workload,
                case,
                tool,
                ratio,
                lowest,
                highest,
            });
        }
    }
    out
}

fn print_against(against: &[ToolRatio]) {
    if against.is_empty() {
        return;
    }
    println!("\nthe executor against the tools (median of the ratios within each round, and their range)");
    for a in against {
        let case = format!("{} ÷ {}", a.case, a.tool);
        let range = if a.lowest < a.highest {
            format!("  ({:.2}–{:.2})", a.lowest, a.highest)
        } else {
            String::new()
        };
        println!("{:<4} {:<50} {:>6.2}{range}", a.workload, case, a.ratio);
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i])
}

pub fn latencies(mut v: Vec<f64>) -> (Option<f64>, Option<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&v, 0.50), percentile(&v, 0.99))
}

fn main() -> Result<()> {
    match Cli::parse() {
        Cli::Run(args) => run(args),
        Cli::ServeS3 { root, latency_ms } => serve_s3(&root, latency_ms),
        Cli::FleetHost { spec, owner, port } => {
            let spec: Spec = serde_json::from_str(&spec)?;
            fleet::host(&spec, &owner, port)
        }
        Cli::Case { spec } => {
            let spec: Spec = serde_json::from_str(&spec)?;
            let m = cases::run_case(&spec)?;
            println!("RESULT {}", serde_json::to_string(&m)?);
            Ok(())
        }
    }
}

fn serve_s3(root: &Path, latency_ms: u64) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
        b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let http = ConnBuilder::new(TokioExecutor::new());
        let latency = std::time::Duration::from_millis(latency_ms);
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            // Each request waits `latency` (a timer: no CPU) before s3s-fs handles it.
            let delayed =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    async move {
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        service.call(req.map(s3s::Body::from)).await
                    }
                });
            let conn = http
                .serve_connection(TokioIo::new(socket), delayed)
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    })
}

/// A child process, its stdout, and its peak RSS from `wait4`.
pub struct Finished {
    pub ok: bool,
    pub stdout: String,
    pub seconds: f64,
    pub peak_rss_mib: f64,
    pub log: PathBuf,
}

pub fn run_measured(mut cmd: Command, log: &Path) -> Result<Finished> {
    let err = std::fs::File::create(log)?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut stdout = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an rusage filled by the kernel; the child is ours and not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r != pid {
        bail!("wait4 of {pid} failed: {}", std::io::Error::last_os_error());
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // Linux reports ru_maxrss in KiB.
    Ok(Finished {
        ok,
        stdout,
        seconds,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        log: log.to_owned(),
    })
}

fn pseudo_random_file(path: &Path, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

struct Bench {
    exe: PathBuf,
    work: PathBuf,
    base: Spec,
    rows: Vec<Row>,
}

impl Bench {
    fn case(&mut self, workload: &str, spec: Spec, unit: &'static str) -> Option<(Measured, f64)> {
        let log = self.work.join(format!("{}.log", spec.case));
        let mut cmd = Command::new(&self.exe);
        cmd.arg("case")
            .arg("--spec")
            .arg(serde_json::to_string(&spec).unwrap());
        eprintln!("  {workload} {} ...", spec.case);
        let result = run_measured(cmd, &log).and_then(|f| {
            let line = f
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("RESULT "))
                .map(str::to_owned);
            match (f.ok, line) {
                (true, Some(line)) => {
                    Ok((serde_json::from_str::<Measured>(&line)?, f.peak_rss_mib))
                }
                _ => bail!(
                    "case {} failed; its log {}:\n{}",
                    spec.case,
                    f.log.display(),
                    std::fs::read_to_string(&f.log).unwrap_or_default()
                ),
            }
        });
        match result {
            Ok((m, rss)) => {
                self.push(workload, &spec.case, unit, &m, Some(rss), String::new());
                Some((m, rss))
            }
            Err(e) => {
                eprintln!("{e:#}");
                let first = format!("{e}").lines().next().unwrap_or("").to_owned();
                self.note_row(workload, &spec.case, unit, format!("FAILED: {first}"));
                None
            }
        }
    }

    fn push(
        &mut self,
        workload: &str,
        case: &str,
        unit: &'static str,
        m: &Measured,
        rss: Option<f64>,
        note: String,
    ) {
        let value = match unit {
            "MB/s" => m.bytes as f64 / 1e6 / m.seconds,
            _ => m.ops as f64 / m.seconds,
        };
        self.rows.push(Row {
            workload: workload.into(),
            case: case.into(),
            baseline: None,
            unit,
            value: Some(value),
            ratio: None,
            p50_ms: m.p50_ms,
            p99_ms: m.p99_ms,
            peak_rss_mib: rss,
            note,
            rounds: Vec::new(),
        });
    }

    fn skipped(&mut self, workload: &str, case: &str, unit: &'static str, why: String) {
        self.note_row(workload, case, unit, format!("skipped: {why}"));
    }

    /// A row without figures: a case that was skipped or failed.
    fn note_row(&mut self, workload: &str, case: &str, unit: &'static str, note: String) {
        self.rows.push(Row {
            workload: workload.into(),
            case: case.into(),
            baseline: None,
            unit,
            value: None,
            ratio: None,
            p50_ms: None,
            p99_ms: None,
            peak_rss_mib: None,
            note,
            rounds: Vec::new(),
        });
    }

    fn spec(&self, case: &str) -> Spec {
        Spec {
            case: case.into(),
            ..self.base.clone()
        }
    }

    /// Sets `case`'s ratio to `baseline` (same workload): value / baseline value.
    fn compare(&mut self, workload: &str, case: &str, baseline: &str) {
        let base = self
            .rows
            .iter()
            .find(|r| r.workload == workload && r.case == baseline)
            .and_then(|r| r.value);
        for r in self
            .rows
            .iter_mut()
            .filter(|r| r.workload == workload && r.case == case)
        {
            r.baseline = Some(baseline.into());
            r.ratio = match (r.value, base) {
                (Some(v), Some(b)) if b > 0.0 => Some(v / b),
                _ => None,
            };
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let wants =
        |w: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(w));
    let size = args.size_mib.unwrap_or(if args.smoke { 8 } else { 2048 }) * MIB;
    let small_count = args
        .small_count
        .unwrap_or(if args.smoke { 200 } else { 5000 });
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() && !args.smoke {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    let work = parent.join(format!("filestore-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let exe = std::env::current_exe()?;
    eprintln!(
        "work directory: {} (data and the S3 server's store)",
        work.display()
    );

    // The S3 server, in a process of its own.
    let mut server = Command::new(&exe)
        .arg("serve-s3")
        .arg("--root")
        .arg(work.join("store"))
        .arg("--latency-ms")
        .arg(args.store_latency_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut endpoint = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut endpoint)?;
    let endpoint = endpoint.trim().to_owned();
    if endpoint.is_empty() {
        bail!("the s3s-fs server did not start");
    }
    eprintln!(
        "s3s-fs at {endpoint}{}",
        match args.store_latency_ms {
            0 => String::new(),
            ms => format!(" (every request delayed {ms} ms)"),
        }
    );

    let database_url = std::env::var("FILESTORE_DATABASE_URL")
        .unwrap_or_else(|_| filestore_s3::config::DEFAULT_DATABASE_URL.into());
    let redis_url = std::env::var("FILESTORE_REDIS_URL")
        .unwrap_or_else(|_| filestore_s3::config::DEFAULT_REDIS_URL.into());
    let schema = format!("bench_{}", std::process::id());
    let base = Spec {
        case: String::new(),
        endpoint: endpoint.clone(),
        database_url: database_url.clone(),
        redis_url,
        schema: schema.clone(),
        redis_prefix: format!("bench-{}", std::process::id()),
        file: work.join("data/big.bin"),
        out_file: work.join("data/download.bin"),
        small_dir: work.join("data/small"),
        count: small_count,
        in_flight: 32,
        part_size: filestore_s3_actors::mount::DEFAULT_PART_SIZE_BYTES,
        part_concurrency: filestore_s3_actors::mount::DEFAULT_PART_CONCURRENCY as usize,
        callers: 1,
        ops: 0,
        batch: 64,
        rate: 0,
        round: 1,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(cases::prepare(&base))?;

    std::fs::create_dir_all(&base.small_dir)?;
    if wants("W1") || wants("W7") {
        eprintln!("generating {} MiB of data", size / MIB);
        pseudo_random_file(&base.file, size)?;
    }
    let check_objects = args
        .check_objects
        .unwrap_or(if args.smoke { 2000 } else { 10_000 });
    if wants("W8") {
        eprintln!("generating {check_objects} objects and nodes for W8");
        rt.block_on(scan::prepare(&base, &work.join("store"), check_objects))?;
    }
    if wants("W2") || wants("W5") {
        for i in 0..small_count {
            pseudo_random_file(&base.small_dir.join(format!("f{i:05}")), 16 * 1024)?;
        }
    }

    let mut b = Bench {
        exe,
        work: work.clone(),
        base,
        rows: Vec::new(),
    };
    let tools = tools::Tools::find();
    let env = tools::ToolEnv::new(
        &work,
        &endpoint,
        b.base.part_size,
        b.base.part_concurrency,
        filestore_s3_actors::mount::DEFAULT_DOWNLOAD_RANGE_BYTES,
        filestore_s3_actors::mount::DEFAULT_DOWNLOAD_CONCURRENCY as usize,
    )?;

    let mut rounds = Vec::new();
    for round in 1..=args.repeat {
        if args.repeat > 1 {
            eprintln!("round {round} of {}", args.repeat);
        }
        b.base.round = round;
        if wants("W1") {
            let w = "W1";
            b.case(w, b.spec("sdk-put-file"), "MB/s");
            b.case(w, b.spec("exec-put-file"), "MB/s");
            b.case(w, b.spec("exec-put-stream"), "MB/s");
            b.case(w, b.spec("exec-put-file-checksum-none"), "MB/s");
            tools::upload_one(&mut b, &tools, &env, w);
            for c in [
                "exec-put-file",
                "exec-put-stream",
                "exec-put-file-checksum-none",
            ] {
                b.compare(w, c, "sdk-put-file");
            }
            for c in tools::TOOL_CASES_ONE {
                b.compare(w, c, "sdk-put-file");
            }
        }
        if wants("W2") {
            let w = "W2";
            b.case(w, b.spec("sdk-small-put-head"), "objects/s");
            b.case(w, b.spec("sdk-small-put"), "objects/s");
            b.case(w, b.spec("exec-small-head-verified"), "objects/s");
            b.case(w, b.spec("exec-small-response-verified"), "objects/s");
            tools::upload_many(&mut b, &tools, &env, w);
            b.compare(w, "exec-small-head-verified", "sdk-small-put-head");
            b.compare(w, "exec-small-response-verified", "sdk-small-put");
            b.compare(w, "sdk-small-put", "sdk-small-put-head");
            for c in tools::TOOL_CASES_MANY {
                b.compare(w, c, "sdk-small-put");
            }
        }
        if wants("W3") {
            let w = "W3";
            let ops = if args.smoke { 200 } else { 6000 };
            for callers in [1usize, 8, 64] {
                for (name, batch) in [("one-tx-per-op", 1usize), ("group-commit", 64)] {
                    let mut s = b.spec(&format!("committer-{name}-{callers}"));
                    s.callers = callers;
                    // Group commit runs 4 × the operations, so its figure covers seconds too.
                    s.ops = if batch > 1 { ops * 4 } else { ops };
                    s.batch = batch;
                    b.case(w, s, "ops/s");
                }
                b.compare(
                    w,
                    &format!("committer-group-commit-{callers}"),
                    &format!("committer-one-tx-per-op-{callers}"),
                );
            }
            tools::pgbench(&mut b, &tools, args.smoke);
            b.compare(w, "committer-group-commit-64", "pgbench-batched-ceiling");
            b.compare(w, "pgbench-protocol-ceiling", "pgbench-batched-ceiling");
        }
        if wants("W4") {
            let w = "W4";
            // At a steady 1,000 operations/s: 5 s (0.2 s in the smoke run).
            let mut s = b.spec("publish-lag-1000");
            s.ops = if args.smoke { 200 } else { 5000 };
            s.rate = 1000;
            b.case(w, s, "ops/s");
        }
        if wants("W5") {
            let w = "W5";
            let n = small_count.min(if args.smoke { 100 } else { 1000 });
            for c in [
                "sdk-copy",
                "exec-copy",
                "sdk-delete",
                "exec-delete",
                "sdk-delete-many",
                "exec-delete-many",
                "exec-copy-response-verified",
                "exec-delete-response-verified",
                "exec-delete-many-response-verified",
            ] {
                let mut s = b.spec(c);
                s.count = n;
                b.case(w, s, "ops/s");
            }
            b.compare(w, "exec-copy", "sdk-copy");
            b.compare(w, "exec-delete", "sdk-delete");
            b.compare(w, "sdk-delete-many", "sdk-delete");
            b.compare(w, "exec-delete-many", "sdk-delete");
            b.compare(w, "exec-copy-response-verified", "sdk-copy");
            b.compare(w, "exec-delete-response-verified", "sdk-delete");
            b.compare(w, "exec-delete-many-response-verified", "sdk-delete");
        }
        if wants("W7") {
            let w = "W7";
            b.case(w, b.spec("sdk-get-file"), "MB/s");
            b.case(w, b.spec("exec-get-file"), "MB/s");
            tools::download_one(&mut b, &tools, &env, w);
            b.compare(w, "exec-get-file", "sdk-get-file");
            for c in tools::TOOL_CASES_GET {
                b.compare(w, c, "sdk-get-file");
            }
        }

        if wants("W8") {
            let w = "W8";
            b.case(w, b.spec("raw-list-w8"), "keys/s");
            let checked = b.case(w, b.spec("exec-check-w8"), "keys/s");
            b.compare(w, "exec-check-w8", "raw-list-w8");
            if let Some((_, rss)) = checked {
                if let Some(r) = b
                    .rows
                    .iter_mut()
                    .find(|r| r.workload == w && r.case == "exec-check-w8")
                {
                    r.note = format!(
                        "{check_objects} objects and nodes; peak RSS {rss:.0} MiB (bound 64)"
                    );
                }
            }
        }
        if wants("W10") {
            w10(&mut b, &rt, args.smoke);
        }

        rounds.push(std::mem::take(&mut b.rows));
    }
    let against = against_tools(&rounds);
    b.rows = aggregate(rounds);

    let _ = server.kill();
    let _ = server.wait();
    rt.block_on(cases::drop_schema(&database_url, &schema));
    if wants("W10") {
        rt.block_on(fleet::drop_schema(&b.base));
    }
    let _ = std::fs::remove_dir_all(&work);

    print_table(
        &b.rows,
        size,
        small_count,
        args.store_latency_ms,
        args.repeat,
    );
    print_against(&against);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut by_workload: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &b.rows {
        by_workload.entry(r.workload.clone()).or_default().push(r);
    }
    let json = serde_json::json!({
        "repeat": args.repeat,
        "size_bytes": size,
        "small_count": small_count,
        "smoke": args.smoke,
        "store_latency_ms": args.store_latency_ms,
        "workloads": by_workload,
        "against_tools": against,
    });
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)?)?;
    eprintln!("table written to {}", args.out.display());
    let failed: Vec<&Row> = b
        .rows
        .iter()
        .filter(|r| r.note.starts_with("FAILED"))
        .collect();
    if !failed.is_empty() {
        bail!("{} case(s) failed", failed.len());
    }
    Ok(())
}

/// W10: small puts over twelve mounts, one host owning all against a fleet of three (each put to
/// its mount's owner, and to any host: two in three forwarded), with each host's CPU.
fn w10(b: &mut Bench, rt: &tokio::runtime::Runtime, smoke: bool) {
    let w = "W10";
    let unit = "ops/s";
    if b.base.round == 1 {
        if let Err(e) = rt.block_on(fleet::prepare(&b.base)) {
            b.note_row(w, "one-host", unit, format!("FAILED: {e}"));
            return;
        }
    }
    let ops = if smoke { 240 } else { 6000 };
    let cases = [
        ("one-host", 1, true),
        ("three-hosts-to-owner", 3, true),
        ("three-hosts-any-host", 3, false),
    ];
    for (case, hosts, direct) in cases {
        eprintln!("  {w} {case} ...");
        match fleet::run(&b.exe, &b.base, hosts, ops, 32, direct, case) {
            Ok(r) => {
                let m = Measured {
                    seconds: ops as f64 / r.ops_per_second,
                    bytes: 0,
                    ops: ops as u64,
                    p50_ms: Some(r.p50_ms),
                    p99_ms: Some(r.p99_ms),
                };
                let cpu: Vec<String> = r.cpu.iter().map(|c| format!("{c:.1}")).collect();
                let note = format!(
                    "host CPU s [{}] = {:.1} s ({:.2} ms per put); settled in {:.1} s",
                    cpu.join(", "),
                    r.cpu.iter().sum::<f64>(),
                    r.cpu.iter().sum::<f64>() * 1000.0 / ops as f64,
                    r.settle.as_secs_f64()
                );
                b.push(w, case, unit, &m, None, note);
            }
            Err(e) => {
                eprintln!("{e:#}");
                b.note_row(w, case, unit, format!("FAILED: {e}"));
            }
        }
    }
    b.compare(w, "three-hosts-to-owner", "one-host");
    b.compare(w, "three-hosts-any-host", "one-host");
}

fn print_table(rows: &[Row], size: u64, small_count: usize, latency_ms: u64, repeat: u64) {
    println!(
        "\nW1/W7: {} MiB object; W2: {small_count} x 16 KiB at 32 in flight; store latency {latency_ms} ms{}",
        size / MIB,
        match repeat {
            1 => String::new(),
            n => format!("; medians of {n} rounds"),
        }
    );
    println!(
        "{:<4} {:<34} {:>11} {:<9} {:>8} {:>9} {:>9} {:>9}  vs / note",
        "", "case", "value", "unit", "ratio", "p50 ms", "p99 ms", "RSS MiB"
    );
    let f = |v: Option<f64>, d: usize| v.map_or("-".to_owned(), |v| format!("{v:.d$}"));
    for r in rows {
        println!(
            "{:<4} {:<34} {:>11} {:<9} {:>8} {:>9} {:>9} {:>9}  {}{}",
            r.workload,
            r.case,
            f(r.value, 1),
            r.unit,
            f(r.ratio, 2),
            f(r.p50_ms, 2),
            f(r.p99_ms, 2),
            f(r.peak_rss_mib, 0),
            r.baseline.as_deref().unwrap_or(""),
            if r.note.is_empty() {
                String::new()
            } else {
                format!(" {}", r.note)
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(case: &str, value: Option<f64>, ratio: Option<f64>, rss: f64, note: &str) -> Row {
        Row {
            workload: "W1".into(),
            case: case.into(),
            value,
            ratio,
            peak_rss_mib: Some(rss),
            note: note.into(),
            ..Row::default()
        }
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn rounds_give_medians_the_ratio_range_and_the_worst_rss() {
        let rounds = vec![
            vec![row("exec", Some(100.0), Some(0.5), 30.0, "")],
            vec![row("exec", Some(300.0), Some(0.9), 28.0, "")],
            vec![row("exec", Some(200.0), Some(0.7), 35.0, "")],
        ];
        let rows = aggregate(rounds);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.value, Some(200.0));
        assert_eq!(r.ratio, Some(0.7));
        assert_eq!(r.peak_rss_mib, Some(35.0));
        assert_eq!(r.rounds, vec![100.0, 300.0, 200.0]);
        assert_eq!(r.note, "(ratio 0.50–0.90 over 3 rounds)");
    }

    #[test]
    fn a_case_failed_in_one_round_says_so() {
        let rounds = vec![
            vec![row("exec", Some(100.0), None, 30.0, "")],
            vec![row("exec", None, None, 0.0, "FAILED: it broke")],
        ];
        let rows = aggregate(rounds);
        assert_eq!(rows[0].note, "FAILED: it broke");
        assert_eq!(rows[0].value, Some(100.0));
    }

    #[test]
    fn one_round_is_left_as_it_is() {
        let rows = aggregate(vec![vec![row("exec", Some(1.0), Some(0.5), 9.0, "x")]]);
        assert_eq!(rows[0].note, "x");
        assert!(rows[0].rounds.is_empty());
    }

    #[test]
    fn the_executor_against_a_tool_is_taken_within_each_round() {
        let round = |exec: f64, tool: Option<f64>| {
            vec![
                row("exec-put-file", Some(exec), None, 1.0, ""),
                row("s5cmd-matched", tool, None, 1.0, ""),
            ]
        };
        // The machine got faster in round 2: both moved, the ratio did not.
        let rounds = vec![
            round(100.0, Some(125.0)),
            round(200.0, Some(250.0)),
            round(90.0, Some(100.0)),
        ];
        let a = against_tools(&rounds);
        assert_eq!(a.len(), 1, "only the tools with figures: {a:?}");
        assert_eq!((a[0].case, a[0].tool), ("exec-put-file", "s5cmd-matched"));
        assert!((a[0].ratio - 0.8).abs() < 1e-9);
        assert!((a[0].lowest - 0.8).abs() < 1e-9 && (a[0].highest - 0.9).abs() < 1e-9);
        // A skipped tool (no figure) gives no line.
        assert!(against_tools(&[round(100.0, None)]).is_empty());
    }
}
