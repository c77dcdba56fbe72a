//! The baselines users pick instead of the executor: `s5cmd`, `rclone`, `aws s3` — each with its
//! concurrency matched to the executor's and at its own defaults — and `pgbench` for Postgres's
//! own ceiling. A tool not on the machine is reported as skipped (`scripts/bench.sh` installs
//! them).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::{run_measured, Bench, Measured, BUCKET, MOUNT};

pub const TOOL_CASES_ONE: [&str; 6] = [
    "s5cmd-matched",
    "s5cmd-defaults",
    "rclone-matched",
    "rclone-defaults",
    "aws-matched",
    "aws-defaults",
];
pub const TOOL_CASES_MANY: [&str; 6] = TOOL_CASES_ONE;
pub const TOOL_CASES_GET: [&str; 6] = TOOL_CASES_ONE;

/// Which tools are on the PATH.
pub struct Tools {
    s5cmd: Option<PathBuf>,
    rclone: Option<PathBuf>,
    aws: Option<PathBuf>,
    pgbench: Option<PathBuf>,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

impl Tools {
    pub fn find() -> Self {
        Tools {
            s5cmd: which("s5cmd"),
            rclone: which("rclone"),
            aws: which("aws"),
            pgbench: which("pgbench"),
        }
    }
}

/// Credentials and configuration files the tools read.
pub struct ToolEnv {
    endpoint: String,
    aws_matched: PathBuf,
    aws_defaults: PathBuf,
    aws_many: PathBuf,
    aws_matched_download: PathBuf,
    part_mib: u64,
    parts_in_flight: usize,
    range_mib: u64,
    ranges_in_flight: usize,
    work: PathBuf,
}

impl ToolEnv {
    pub fn new(
        work: &Path,
        endpoint: &str,
        part_size: u64,
        parts_in_flight: usize,
        range_size: u64,
        ranges_in_flight: usize,
    ) -> Result<Self> {
        let part_mib = part_size / (1024 * 1024);
        let range_mib = range_size / (1024 * 1024);
        let write = |name: &str, s3: &str| -> Result<PathBuf> {
            let p = work.join(name);
            std::fs::write(
                &p,
                format!("[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n{s3}"),
            )?;
            Ok(p)
        };
        // The aws CLI's settings for a transfer at `n` in flight in pieces of `mib` MiB.
        let matched = |n: usize, mib: u64| {
            format!(
                "  max_concurrent_requests = {n}\n  multipart_chunksize = {mib}MB\n  multipart_threshold = {mib}MB\n"
            )
        };
        Ok(ToolEnv {
            endpoint: endpoint.into(),
            aws_matched: write("aws-matched.cfg", &matched(parts_in_flight, part_mib))?,
            aws_defaults: write("aws-defaults.cfg", "")?,
            aws_many: write("aws-many.cfg", "  max_concurrent_requests = 32\n")?,
            aws_matched_download: write(
                "aws-matched-download.cfg",
                &matched(ranges_in_flight, range_mib),
            )?,
            part_mib,
            parts_in_flight,
            range_mib,
            ranges_in_flight,
            work: work.into(),
        })
    }

    fn command(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.env("AWS_ACCESS_KEY_ID", crate::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", crate::SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("RCLONE_CONFIG_BENCH_TYPE", "s3")
            .env("RCLONE_CONFIG_BENCH_PROVIDER", "Other")
            .env("RCLONE_CONFIG_BENCH_ENDPOINT", &self.endpoint)
            .env("RCLONE_CONFIG_BENCH_ACCESS_KEY_ID", crate::ACCESS_KEY)
            .env("RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY", crate::SECRET_KEY)
            .env("RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE", "true")
            .env("RCLONE_CONFIG_BENCH_REGION", "us-east-1");
        c
    }
}

/// One tool run, measured as a case: `ops` operations moving `bytes`.
#[allow(clippy::too_many_arguments)]
fn tool_case(
    b: &mut Bench,
    workload: &str,
    case: &str,
    unit: &'static str,
    program: Option<&PathBuf>,
    env: &ToolEnv,
    args: Vec<String>,
    bytes: u64,
    ops: u64,
) {
    let Some(program) = program else {
        b.skipped(
            workload,
            case,
            unit,
            "not installed (scripts/bench.sh installs it)".into(),
        );
        return;
    };
    let mut cmd = env.command(program);
    if case.starts_with("aws-") {
        let cfg = match (case, workload) {
            ("aws-matched", "W2") => &env.aws_many,
            ("aws-matched", "W7") => &env.aws_matched_download,
            ("aws-matched", _) => &env.aws_matched,
            _ => &env.aws_defaults,
        };
        cmd.env("AWS_CONFIG_FILE", cfg);
    }
    if case.starts_with("rclone-") {
        // rclone's S3 backend refuses a CA bundle on its plain-HTTP transport ("unsupported
        // transport"); the endpoint is plain HTTP on loopback, no bundle is needed.
        cmd.env_remove("AWS_CA_BUNDLE");
        // Every W1 upload writes the same key: without this rclone finds the object already
        // identical and transfers nothing.
        cmd.arg("--ignore-times");
    }
    cmd.args(&args);
    eprintln!("  {workload} {case} ...");
    let log = env.work.join(format!("{workload}-{case}.log"));
    match run_measured(cmd, &log) {
        Ok(f) if f.ok => {
            let m = Measured {
                seconds: f.seconds,
                bytes,
                ops,
                ..Default::default()
            };
            b.push(
                workload,
                case,
                unit,
                &m,
                Some(f.peak_rss_mib),
                String::new(),
            );
        }
        Ok(f) => {
            let why = std::fs::read_to_string(&f.log).unwrap_or_default();
            let why = why.lines().last().unwrap_or("").to_owned();
            b.skipped(workload, case, unit, format!("the tool failed: {why}"));
        }
        Err(e) => b.skipped(workload, case, unit, format!("could not run: {e}")),
    }
}

/// What a tool transfers.
#[derive(Clone, Copy, PartialEq)]
enum Transfer {
    /// The W1 file to one object.
    UploadOne,
    /// The W2 directory to a prefix.
    UploadMany,
    /// The W7 object to a file.
    Download,
}

/// The six tool cases of a transfer between `local` and the bucket's `key` (a prefix for many):
/// each tool at the executor's concurrency and at its defaults.
fn tool_cases(
    t: &Tools,
    env: &ToolEnv,
    transfer: Transfer,
    local: &str,
    key: &str,
) -> Vec<(&'static str, Option<PathBuf>, Vec<String>)> {
    // "Matched": a download at the executor's range size and ranges in flight, an upload at its
    // part size and parts in flight.
    let (mib, n) = match transfer {
        Transfer::Download => (env.range_mib, env.ranges_in_flight),
        _ => (env.part_mib, env.parts_in_flight),
    };
    let (ep, mib, n) = (env.endpoint.clone(), mib.to_string(), n.to_string());
    let s3 = format!("s3://{BUCKET}/{key}");
    let rc = format!("bench:{BUCKET}/{key}");
    let many = transfer == Transfer::UploadMany;
    let from_to = |remote: &str| -> Vec<String> {
        let local = if many {
            format!("{local}/*")
        } else {
            local.to_owned()
        };
        match transfer {
            Transfer::Download => vec![remote.to_owned(), local],
            _ => vec![local, remote.to_owned()],
        }
    };
    let s5cmd = |matched: bool| {
        let mut a = vec!["--endpoint-url".to_owned(), ep.clone()];
        if many && matched {
            a.extend(["--numworkers".into(), "32".into()]);
        }
        a.push("cp".into());
        if !many && matched {
            a.extend([
                "--concurrency".into(),
                n.clone(),
                "--part-size".into(),
                mib.clone(),
            ]);
        }
        a.extend(from_to(&s3));
        a
    };
    let rclone = |matched: bool| {
        let mut a = vec![if many { "copy" } else { "copyto" }.to_owned()];
        if matched {
            match transfer {
                Transfer::UploadMany => a.extend(["--transfers".into(), "32".into()]),
                Transfer::UploadOne => a.extend([
                    "--s3-upload-concurrency".into(),
                    n.clone(),
                    "--s3-chunk-size".into(),
                    format!("{mib}M"),
                ]),
                Transfer::Download => a.extend(["--multi-thread-streams".into(), n.clone()]),
            }
        }
        // rclone copies a directory itself, not a glob.
        let mut ends = from_to(&rc);
        if many {
            ends[0] = local.to_owned();
        }
        a.extend(ends);
        a
    };
    let aws = || {
        let mut a = vec![
            "--endpoint-url".to_owned(),
            ep.clone(),
            "s3".into(),
            "cp".into(),
        ];
        if many {
            a.push("--recursive".into());
        }
        a.push("--only-show-errors".into());
        let mut ends = from_to(&s3);
        if many {
            ends[0] = local.to_owned();
        }
        a.extend(ends);
        a
    };
    vec![
        ("s5cmd-matched", t.s5cmd.clone(), s5cmd(true)),
        ("s5cmd-defaults", t.s5cmd.clone(), s5cmd(false)),
        ("rclone-matched", t.rclone.clone(), rclone(true)),
        ("rclone-defaults", t.rclone.clone(), rclone(false)),
        // The aws CLI's concurrency is set in its config file (ToolEnv).
        ("aws-matched", t.aws.clone(), aws()),
        ("aws-defaults", t.aws.clone(), aws()),
    ]
}

/// W1 with each tool: the file to one object.
pub fn upload_one(b: &mut Bench, t: &Tools, env: &ToolEnv, w: &str) {
    let file = b.base.file.display().to_string();
    let size = std::fs::metadata(&b.base.file)
        .map(|m| m.len())
        .unwrap_or(0);
    // A key of its own (not the executor cases' path: an object the executor did not write over
    // a node is refused by its conditional writes, docs/failures.md rule 9).
    for (case, program, a) in tool_cases(t, env, Transfer::UploadOne, &file, "w1/tool-object.bin") {
        tool_case(b, w, case, "MB/s", program.as_ref(), env, a, size, 1);
    }
}

/// W2 with each tool: the directory of small files, 32 in flight (matched) or the tool's default.
pub fn upload_many(b: &mut Bench, t: &Tools, env: &ToolEnv, w: &str) {
    let dir = b.base.small_dir.display().to_string();
    let count = b.base.count as u64;
    for (case, program, a) in tool_cases(t, env, Transfer::UploadMany, &dir, "") {
        // One prefix per case: every tool writes all the files.
        let prefix = format!("w2/{case}/");
        let a = a
            .into_iter()
            .map(|x| {
                x.replace(
                    &format!("s3://{BUCKET}/"),
                    &format!("s3://{BUCKET}/{prefix}"),
                )
                .replace(
                    &format!("bench:{BUCKET}/"),
                    &format!("bench:{BUCKET}/{prefix}"),
                )
            })
            .collect();
        tool_case(b, w, case, "objects/s", program.as_ref(), env, a, 0, count);
    }
}

/// W7 with each tool: the object to a file.
pub fn download_one(b: &mut Bench, t: &Tools, env: &ToolEnv, w: &str) {
    let out = b.base.out_file.display().to_string();
    let size = std::fs::metadata(&b.base.file)
        .map(|m| m.len())
        .unwrap_or(0);
    for (case, program, a) in tool_cases(t, env, Transfer::Download, &out, "w7/object.bin") {
        let _ = std::fs::remove_file(&b.base.out_file);
        tool_case(b, w, case, "MB/s", program.as_ref(), env, a, size, 1);
    }
}

/// Postgres's own ceilings for the rows of a committed put (journal row, node, snapshot, outbox
/// event), written 64 operations per transaction by 4 pgbench clients: simplified models of one
/// operation (no lease check, no reads), the limits group commit aims at.
///
/// - `pgbench-batched-ceiling`: every row of an operation in one transaction (no intent).
/// - `pgbench-protocol-ceiling`: the same rows in the protocol's two transactions — the intents
///   (pending journal rows) committed first, then the commit (the journal rows marked committed,
///   nodes, snapshots, outbox) — as the executor must write them, with S3 acted on between.
pub fn pgbench(b: &mut Bench, t: &Tools, smoke: bool) {
    let journal = |state: &str, result: &str| {
        format!(
            "INSERT INTO journal (mount, op, path, idempotency_key, fingerprint, state, request, result)
  SELECT '{MOUNT}', 'put', 'pgb/' || u, u, encode(sha256(u::bytea), 'hex'), '{state}', '{{}}', {result}
  FROM (SELECT gen_random_uuid()::text AS u FROM generate_series(1, 64)) g
  RETURNING id, path"
        )
    };
    let rows = "n AS (
  INSERT INTO nodes (mount, path, object_key, size, etag, sha256, storage_class, generation, journal_id)
  SELECT '{MOUNT}', path, path, 16384, 'e', repeat('a', 64), 'STANDARD', 1, id FROM j),
s AS (
  INSERT INTO snapshots (mount, path, generation, deleted, object_key, size, etag, sha256, storage_class, journal_id)
  SELECT '{MOUNT}', path, 1, false, path, 16384, 'e', repeat('a', 64), 'STANDARD', id FROM j)
INSERT INTO outbox (event_id, mount, journal_id, payload) SELECT gen_random_uuid(), '{MOUNT}', id, '{{}}' FROM j;"
        .replace("{MOUNT}", MOUNT)
        .replace("{{}}", "{}");
    let batched = format!(
        "BEGIN;\nWITH j AS (\n  {}),\n{rows}\nCOMMIT;\n",
        journal("committed", "'{}'")
    );
    // pgbench's simple protocol puts `:ids` into the second transaction as text.
    let protocol = format!(
        "BEGIN;\nWITH j AS (\n  {})\nSELECT string_agg(id::text, ',') AS ids FROM j \\gset\nCOMMIT;\n\
         BEGIN;\nWITH j AS (\n  UPDATE journal SET state = 'committed', result = '{{}}', updated_at = now()\n  \
         WHERE id IN (:ids) RETURNING id, path),\n{rows}\nCOMMIT;\n",
        journal("pending", "NULL")
    );
    pgbench_case(
        b,
        t,
        smoke,
        "pgbench-batched-ceiling",
        &batched,
        "64 ops / transaction, 4 clients",
    );
    pgbench_case(
        b,
        t,
        smoke,
        "pgbench-protocol-ceiling",
        &protocol,
        "64 ops / intent + commit transaction pair, 4 clients",
    );
}

fn pgbench_case(b: &mut Bench, t: &Tools, smoke: bool, case: &str, sql: &str, note: &str) {
    let w = "W3";
    let Some(pgbench) = t.pgbench.as_ref() else {
        b.skipped(w, case, "ops/s", "pgbench not installed".into());
        return;
    };
    let script = b.work.join(format!("{case}.sql"));
    if let Err(e) = std::fs::write(&script, sql) {
        b.skipped(w, case, "ops/s", format!("{e}"));
        return;
    }
    let seconds = if smoke { "1" } else { "5" };
    let mut cmd = Command::new(pgbench);
    cmd.env("PGOPTIONS", format!("-c search_path={}", b.base.schema))
        .args(["-n", "-c", "4", "-j", "2", "-T", seconds, "-f"])
        .arg(&script)
        .arg(&b.base.database_url);
    eprintln!("  {w} {case} ...");
    let log = b.work.join(format!("{case}.log"));
    match run_measured(cmd, &log) {
        Ok(f) if f.ok => {
            let tps = f
                .stdout
                .lines()
                .find(|l| l.starts_with("tps = "))
                .and_then(|l| l.split_whitespace().nth(2))
                .and_then(|v| v.parse::<f64>().ok());
            match tps {
                Some(tps) => {
                    let m = Measured {
                        seconds: 1.0,
                        ops: (tps * 64.0) as u64,
                        ..Default::default()
                    };
                    b.push(w, case, "ops/s", &m, None, note.into());
                }
                None => b.skipped(w, case, "ops/s", format!("no tps in: {}", f.stdout)),
            }
        }
        Ok(f) => b.skipped(
            w,
            case,
            "ops/s",
            std::fs::read_to_string(f.log).unwrap_or_default(),
        ),
        Err(e) => b.skipped(w, case, "ops/s", format!("{e}")),
    }
}
