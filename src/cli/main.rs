//! Reference host for the filestore-s3 executor: migrations, mount registration, one-shot
//! operations, a demo of the whole protocol, and a long-running `serve`.

use std::sync::Arc;
use std::time::Duration;

use filestore_s3::actors::multipart::ProgressSink;
use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use filestore_s3::actors::mount::MountSpec;
use filestore_s3::liveness::Liveness;
use filestore_s3::s3::S3StoreFactory;
use filestore_s3::{
    DeleteOptions, Error, ExecutorConfig, ListOptions, MountRow, PutOptions, S3Executor,
    TransferOptions,
};

mod calls;

#[derive(Parser)]
#[command(
    name = "filestore-s3",
    version,
    about = "S3 executor of Filestore (reference host)"
)]
struct Cli {
    /// Configuration file of `NAME=value` lines (the FILESTORE_* variables; the environment wins).
    #[arg(long, global = true, env = "FILESTORE_CONFIG_FILE")]
    config: Option<std::path::PathBuf>,
    /// Refuse at once when another executor that may be alive holds the mount's lease, instead
    /// of waiting for it.
    #[arg(long, global = true)]
    no_wait: bool,
    /// How long a command that changes a mount waits for the mount's lease while another
    /// executor that may be alive holds it (a provably dead one on this machine is taken over at
    /// once).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        env = "FILESTORE_LEASE_WAIT_SECS",
        default_value_t = 20
    )]
    lease_wait: u64,
    /// Where commands remember the idempotency key of a call until its outcome is known, so that
    /// a killed command sent again continues the same operation (default:
    /// $XDG_STATE_HOME/filestore-s3 or ~/.local/state/filestore-s3).
    #[arg(long, global = true, env = "FILESTORE_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply the schema migrations (idempotent).
    Migrate,
    /// Manage backend_mounts rows.
    #[command(subcommand)]
    Mount(MountCmd),
    /// Upload a file (multipart above the mount's threshold, with a progress bar).
    Put {
        mount: String,
        path: String,
        file: std::path::PathBuf,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        /// User metadata NAME=VALUE (repeatable), stored as x-amz-meta-NAME.
        #[arg(long = "meta", value_name = "NAME=VALUE", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// Print progress as JSON lines on stdout instead of a progress bar.
        #[arg(long)]
        progress_json: bool,
        #[command(flatten)]
        condition: ConditionArgs,
    },
    /// Copy an object (within a mount or to another mount: `MOUNT:PATH` names another mount).
    Cp(TransferArgs),
    /// Move an object (within a mount or to another mount: `MOUNT:PATH` names another mount).
    Mv(TransferArgs),
    /// Download an object into a file, checking its SHA-256.
    Get {
        mount: String,
        path: String,
        file: std::path::PathBuf,
        /// Continue a partial download already in FILE.
        #[arg(long)]
        resume: bool,
    },
    /// Show the object and its node.
    Stat { mount: String, path: String },
    /// List a directory.
    Ls {
        mount: String,
        #[arg(default_value = "")]
        dir: String,
        /// Everything below, not one level.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Delete an object.
    Rm {
        mount: String,
        path: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Run the whole protocol once against a bucket and show what it produced.
    Demo(DemoArgs),
    /// Run the executor until SIGTERM / Ctrl-C, with /healthz and /metrics over HTTP.
    Serve {
        /// Address of the HTTP endpoints.
        #[arg(long, env = "FILESTORE_SERVE_ADDR", default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
    },
}

#[derive(Args)]
struct ConditionArgs {
    /// Create only: fail if the destination path exists.
    #[arg(long)]
    if_none_match: bool,
    /// Replace only if the destination's node is at this generation.
    #[arg(long)]
    if_generation: Option<i64>,
}

#[derive(Args)]
struct TransferArgs {
    /// Mount of the source (and of the destination unless DEST names one).
    mount: String,
    /// Source path.
    source: String,
    /// Destination: `PATH` on the same mount, or `MOUNT:PATH`.
    dest: String,
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    condition: ConditionArgs,
}

impl TransferArgs {
    /// (source mount, source path, destination mount, destination path)
    fn ends(&self) -> (&str, &str, &str, &str) {
        match self.dest.split_once(':') {
            Some((m, p)) if !m.is_empty() && !m.contains('/') => (&self.mount, &self.source, m, p),
            _ => (&self.mount, &self.source, &self.mount, &self.dest),
        }
    }

    fn options(&self) -> TransferOptions {
        TransferOptions {
            idempotency_key: self.idempotency_key.clone(),
            if_none_match: self.condition.if_none_match,
            if_generation: self.condition.if_generation,
        }
    }
}

#[derive(Subcommand)]
enum MountCmd {
    /// Insert or replace a mount.
    Add(Box<MountArgs>),
    /// Show all mounts and their state.
    List,
}

#[derive(Args)]
struct MountArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Endpoint URL of an S3-compatible store.
    #[arg(long)]
    endpoint: Option<String>,
    /// Accept a plain-http endpoint that is not loopback (unencrypted; off by default).
    #[arg(long)]
    allow_insecure_http: bool,
    #[arg(long)]
    path_style: bool,
    /// none | aes256 | aws:kms
    #[arg(long, default_value = "none")]
    sse_mode: String,
    #[arg(long)]
    kms_key_id: Option<String>,
    #[arg(long)]
    canned_acl: Option<String>,
    #[arg(long)]
    storage_class: Option<String>,
    /// sha256 | none
    #[arg(long, default_value = "sha256")]
    checksum: String,
    #[arg(long)]
    disabled: bool,
    /// Objects larger than this (bytes) go through multipart upload.
    #[arg(long)]
    multipart_threshold: Option<i64>,
    /// Multipart part size in bytes.
    #[arg(long)]
    part_size: Option<i64>,
    /// Parts in flight per upload.
    #[arg(long)]
    part_concurrency: Option<i32>,
    /// Largest range (bytes) of a download to a file; ranges are fetched in parallel.
    #[arg(long)]
    download_range_size: Option<i64>,
    /// Ranges in flight per download to a file.
    #[arg(long)]
    download_concurrency: Option<i32>,
    /// How long verification may wait for the store to show a write.
    #[arg(long)]
    verify_window_ms: Option<i64>,
    /// abort | retain: what happens to a multipart upload whose part failed for good.
    #[arg(long)]
    multipart_failure_policy: Option<String>,
    /// Objects larger than this (bytes) are copied part by part.
    #[arg(long)]
    copy_threshold: Option<i64>,
    /// strict | lenient: when the store ignores SSE / KMS key / storage class.
    #[arg(long)]
    settings_policy: Option<String>,
    /// head | put-response | response: how a single-request write is proven (put-response: a
    /// put by the PUT's answer echoing the SHA-256 sent; response: that, a copy by the SHA-256 in
    /// the CopyObject answer and a delete by the store's success; for strongly consistent stores).
    #[arg(long)]
    verify: Option<String>,
    /// Take the mount's credentials from this profile of the shared AWS config files.
    #[arg(long, conflicts_with = "role_arn")]
    profile: Option<String>,
    /// Assume this role (STS AssumeRole, authorised by the executor's default chain).
    #[arg(long)]
    role_arn: Option<String>,
    /// External id for the role's trust policy.
    #[arg(long, requires = "role_arn")]
    external_id: Option<String>,
    /// Session name of the assumed role (default filestore-s3-<mount>).
    #[arg(long, requires = "role_arn")]
    session_name: Option<String>,
}

impl MountArgs {
    fn row(&self) -> MountRow {
        let mut r = MountRow::new(&self.name, &self.bucket, &self.prefix);
        r.region = self.region.clone();
        r.endpoint = self.endpoint.clone();
        r.allow_insecure_http = self.allow_insecure_http;
        r.path_style = self.path_style;
        r.sse_mode = self.sse_mode.clone();
        r.kms_key_id = self.kms_key_id.clone();
        r.canned_acl = self.canned_acl.clone();
        r.storage_class = self.storage_class.clone();
        r.checksum = self.checksum.clone();
        r.enabled = !self.disabled;
        if let Some(v) = self.multipart_threshold {
            r.multipart_threshold = v;
        }
        if let Some(v) = self.part_size {
            r.part_size = v;
        }
        if let Some(v) = self.part_concurrency {
            r.part_concurrency = v;
        }
        if let Some(v) = self.download_range_size {
            r.download_range_size = v;
        }
        if let Some(v) = self.download_concurrency {
            r.download_concurrency = v;
        }
        if let Some(v) = self.verify_window_ms {
            r.verify_window_ms = v;
        }
        if let Some(v) = &self.multipart_failure_policy {
            r.multipart_failure_policy = v.clone();
        }
        if let Some(v) = self.copy_threshold {
            r.copy_threshold = v;
        }
        if let Some(v) = &self.settings_policy {
            r.settings_policy = v.clone();
        }
        if let Some(v) = &self.verify {
            r.verify = v.clone();
        }
        if let Some(p) = &self.profile {
            r.credentials_source = "profile".into();
            r.credentials_profile = Some(p.clone());
        }
        if let Some(arn) = &self.role_arn {
            r.credentials_source = "assume_role".into();
            r.role_arn = Some(arn.clone());
            r.role_external_id = self.external_id.clone();
            r.role_session_name = self.session_name.clone();
        }
        r
    }
}

#[derive(Args)]
struct DemoArgs {
    /// Endpoint of the S3 server.
    #[arg(
        long,
        env = "FILESTORE_DEMO_ENDPOINT",
        default_value = "http://127.0.0.1:5055"
    )]
    endpoint: String,
    /// Bucket to use (created when missing).
    #[arg(long, default_value = "filestore-demo")]
    bucket: String,
}

/// The configuration of a one-shot command that changes no object (reads, mount management): a
/// passive executor that takes no lease — so it never holds up the mounts' owners — and does not
/// follow `backend_mounts`.
fn one_shot_reader(mut config: ExecutorConfig) -> ExecutorConfig {
    config.passive = true;
    config.watch_mounts = false;
    config
}

/// What a one-shot command needs of the mounts: nothing but reads, or the leases of these.
enum Needs {
    Reads,
    Leases(Vec<String>),
}

impl Cmd {
    fn needs(&self) -> Option<Needs> {
        Some(match self {
            Cmd::Migrate | Cmd::Demo(_) | Cmd::Serve { .. } => return None,
            Cmd::Mount(_) | Cmd::Get { .. } | Cmd::Stat { .. } | Cmd::Ls { .. } => Needs::Reads,
            Cmd::Put { mount, .. } | Cmd::Rm { mount, .. } => Needs::Leases(vec![mount.clone()]),
            Cmd::Cp(t) | Cmd::Mv(t) => {
                let (sm, _, dm, _) = t.ends();
                let mut m = vec![sm.to_owned()];
                if dm != sm {
                    m.push(dm.to_owned());
                }
                Needs::Leases(m)
            }
        })
    }
}

#[actix_rt::main]
async fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and the causes it does not already say, on one line; no backtrace
            // for a user's mistake.
            let mut line = e.to_string();
            for cause in e.chain().skip(1).map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("Error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = ExecutorConfig::from_env_and_file(cli.config.as_deref())?;
    let Some(needs) = cli.cmd.needs() else {
        return match cli.cmd {
            Cmd::Migrate => {
                let applied =
                    filestore_s3::pg::migrate(&config.database_url, &config.schema).await?;
                println!(
                    "schema '{}': {} migration(s) applied {:?}",
                    config.schema,
                    applied.len(),
                    applied
                );
                Ok(())
            }
            Cmd::Demo(args) => demo(config, args).await,
            Cmd::Serve { listen } => serve(config, listen).await,
            _ => unreachable!("every other command is one-shot"),
        };
    };
    let (config, leases) = match needs {
        Needs::Reads => (one_shot_reader(config), Vec::new()),
        Needs::Leases(mounts) => {
            let mut config = config;
            // Only the mounts this command changes are leased; the others stay with their
            // owners. A one-shot command does not follow backend_mounts.
            config.leased_mounts = Some(mounts.iter().cloned().collect());
            config.watch_mounts = false;
            (config, mounts)
        }
    };
    let exec = S3Executor::start(config).await?;
    // Every way out gives the mounts back: the command's end, its error, or a signal.
    let work = async {
        for mount in &leases {
            take_lease(&exec, mount, &cli).await?;
        }
        run_one_shot(&exec, &cli).await
    };
    let outcome = tokio::select! {
        r = work => Some(r),
        () = interrupted() => None,
    };
    match outcome {
        Some(r) => {
            // Recovery this command started on the mount may still be running: it gets the
            // shutdown deadline, and an interrupt meanwhile quits at once.
            tokio::select! {
                drained = exec.shutdown_within(exec.config().shutdown_deadline) => {
                    if drained {
                        // Every lease is given back: the lock file that would let the next
                        // command prove this process dead is no longer needed.
                        filestore_s3::liveness::OwnerLock::retire_current();
                    }
                }
                () = interrupted() => {
                    eprintln!("interrupted while stopping: quitting at once");
                    std::process::exit(130);
                }
            }
            r
        }
        None => {
            eprintln!(
                "interrupted: stopping; running operations get up to {} s to finish (a cut-off \
                 upload stays resumable: send the same command again); interrupt again to quit at once",
                INTERRUPT_DEADLINE.as_secs()
            );
            tokio::select! {
                drained = exec.shutdown_within(INTERRUPT_DEADLINE) => {
                    if drained {
                        filestore_s3::liveness::OwnerLock::retire_current();
                    }
                }
                () = interrupted() => {}
            }
            std::process::exit(130);
        }
    }
}

/// How long an interrupted command lets its running operations finish before it exits.
const INTERRUPT_DEADLINE: Duration = Duration::from_secs(5);

/// Ctrl-C, SIGTERM or SIGHUP.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

/// Makes sure this process holds `mount`'s lease: at once when it is free, expired, or its
/// holder is provably dead on this machine; else after waiting for it up to `--lease-wait`
/// (unless `--no-wait`), saying who holds it and why it is waited for.
async fn take_lease(exec: &S3Executor, mount: &str, cli: &Cli) -> anyhow::Result<()> {
    let why = |holder: Option<filestore_s3::pg::LeaseHolder>| match holder.map(|h| h.liveness) {
        Some(Liveness::MaybeAlive(why)) | Some(Liveness::Dead(why)) => why,
        None => "no lease recorded".into(),
    };
    let held = match exec.wait_for_lease(mount, Duration::ZERO).await {
        Ok(()) => return Ok(()),
        Err(Error::NotOwner { owner, until, .. }) => {
            let reason = why(exec.lease_holder(mount).await.ok().flatten());
            format!("held by executor '{owner}' until {until} ({reason})")
        }
        // The lease could not be looked at yet (Postgres unreachable for a moment).
        Err(Error::Shutdown) => "not known yet: the lease could not be looked at".to_owned(),
        Err(e) => return Err(e.into()),
    };
    if cli.no_wait {
        bail!(
            "mount '{mount}': lease {held}; not waiting (--no-wait): retry later, or send the call \
             to that executor's host"
        );
    }
    let wait = Duration::from_secs(cli.lease_wait);
    eprintln!(
        "waiting up to {} s for the mount's lease, {held}",
        wait.as_secs()
    );
    let started = std::time::Instant::now();
    match exec.wait_for_lease(mount, wait).await {
        Ok(()) => {
            eprintln!(
                "mount '{mount}': lease taken after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Err(Error::NotOwner { owner, until, .. }) => {
            let reason = why(exec.lease_holder(mount).await.ok().flatten());
            bail!(
                "gave up after waiting {} s: mount '{mount}' is still leased by executor '{owner}' \
                 until {until} ({reason}); retry later, wait longer (--lease-wait), or send the \
                 call to that executor's host",
                wait.as_secs()
            )
        }
        Err(Error::Shutdown) => bail!(
            "gave up after waiting {} s: the lease of mount '{mount}' could not be looked at \
             (is Postgres reachable?)",
            wait.as_secs()
        ),
        Err(e) => Err(e.into()),
    }
}

/// Runs a one-shot command on a started executor.
async fn run_one_shot(exec: &S3Executor, cli: &Cli) -> anyhow::Result<()> {
    let config = exec.config();
    let state_dir = cli.state_dir.clone().or_else(calls::default_state_dir);
    // What makes two calls the same call: the database and schema, then the command.
    let db = filestore_s3::redact::redact(&config.database_url);
    let call_key = |given: &Option<String>, call: &[&str]| {
        let mut all = vec![db.as_str(), config.schema.as_str()];
        all.extend_from_slice(call);
        calls::CallKey::for_call(state_dir.as_deref(), given.clone(), &all)
    };
    match &cli.cmd {
        Cmd::Mount(MountCmd::Add(args)) => {
            let state = exec.register_mount(args.row()).await?;
            println!("mount '{}': {state:?}", args.name);
        }
        Cmd::Mount(MountCmd::List) => {
            let mut states: Vec<_> = exec.mount_states().into_iter().collect();
            states.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, state) in states {
                println!("{name}\t{state:?}");
            }
        }
        Cmd::Put {
            mount,
            path,
            file,
            idempotency_key,
            content_type,
            meta,
            progress_json,
            condition,
        } => {
            let progress_json = *progress_json;
            let abs =
                std::path::absolute(file).with_context(|| format!("reading {}", file.display()))?;
            let (size, mtime_ns) =
                filestore_s3::actors::multipart::file_identity(&abs.to_string_lossy())
                    .await
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let (size_s, mtime_s) = (size.to_string(), mtime_ns.to_string());
            let meta_s: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let condition_s = format!(
                "{:?}/{:?}",
                condition.if_none_match, condition.if_generation
            );
            let mut call = vec![
                "put",
                mount.as_str(),
                path.as_str(),
                abs.to_str().unwrap_or(""),
                &size_s,
                &mtime_s,
                content_type.as_deref().unwrap_or(""),
                &condition_s,
            ];
            call.extend(meta_s.iter().map(String::as_str));
            let key = call_key(idempotency_key, &call);
            let bar = (!progress_json).then(|| {
                let bar = ProgressBar::new(size);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
                    )
                    .expect("valid template"),
                );
                bar
            });
            let shown = bar.clone();
            let sink: ProgressSink = Arc::new(move |p| match &shown {
                Some(bar) => {
                    bar.set_position(p.bytes_done);
                    bar.set_message(format!(
                        "part {}/{}",
                        p.parts_done,
                        p.parts_total.unwrap_or(0)
                    ));
                }
                None => {
                    // Not println!: a closed stdout (`| head`) must not panic the executor's thread.
                    use std::io::Write as _;
                    let line = serde_json::to_string(p).expect("progress serialises");
                    let _ = writeln!(std::io::stdout(), "{line}");
                }
            });
            let r = exec
                .put_file(
                    mount,
                    path,
                    file,
                    PutOptions {
                        idempotency_key: Some(key.key.clone()),
                        content_type: content_type.clone(),
                        metadata: meta.iter().cloned().collect(),
                        progress: Some(sink),
                        if_none_match: condition.if_none_match,
                        if_generation: condition.if_generation,
                    },
                )
                .await;
            key.settle(&r);
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            let r = r?;
            if progress_json {
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({ "result": r }))?
                );
            } else {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
        }
        Cmd::Get {
            mount,
            path,
            file,
            resume,
        } => {
            let r = exec.get_to_file(mount, path, file, *resume).await?;
            println!(
                "{} bytes written to {} (object {} bytes, sha256 {})",
                r.bytes_written,
                file.display(),
                r.object_size,
                r.sha256_verified.as_deref().unwrap_or("not recorded")
            );
        }
        Cmd::Stat { mount, path } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&exec.stat(mount, path).await?)?
            );
        }
        Cmd::Ls {
            mount,
            dir,
            recursive,
        } => {
            let mut token = None;
            loop {
                let page = exec
                    .list(
                        mount,
                        dir,
                        ListOptions {
                            delimited: !recursive,
                            token,
                            max_keys: None,
                        },
                    )
                    .await?;
                for d in &page.directories {
                    println!("{d}/");
                }
                for e in &page.entries {
                    println!("{}\t{}\t{}", e.size, e.etag, e.path);
                }
                for u in &page.unmapped {
                    eprintln!("unmapped key {:?}: {}", u.key, u.reason);
                }
                token = page.next_token;
                if token.is_none() {
                    break;
                }
            }
        }
        Cmd::Rm {
            mount,
            path,
            idempotency_key,
        } => {
            let key = call_key(idempotency_key, &["rm", mount, path]);
            let r = exec
                .delete(
                    mount,
                    path,
                    DeleteOptions {
                        idempotency_key: Some(key.key.clone()),
                    },
                )
                .await;
            key.settle(&r);
            println!("{}", serde_json::to_string_pretty(&r?)?);
        }
        Cmd::Cp(args) | Cmd::Mv(args) => {
            let is_move = matches!(&cli.cmd, Cmd::Mv(_));
            let (sm, sp, dm, dp) = args.ends();
            let condition_s = format!(
                "{:?}/{:?}",
                args.condition.if_none_match, args.condition.if_generation
            );
            let verb = if is_move { "mv" } else { "cp" };
            let key = call_key(&args.idempotency_key, &[verb, sm, sp, dm, dp, &condition_s]);
            let mut opts = args.options();
            opts.idempotency_key = Some(key.key.clone());
            let r = if is_move {
                exec.move_object(sm, sp, dm, dp, opts).await
            } else {
                exec.copy(sm, sp, dm, dp, opts).await
            };
            key.settle(&r);
            println!("{}", serde_json::to_string_pretty(&r?)?);
        }
        Cmd::Migrate | Cmd::Demo(_) | Cmd::Serve { .. } => {
            unreachable!("not a one-shot command")
        }
    }
    Ok(())
}

/// Runs every enabled mount until SIGTERM or Ctrl-C, serving /healthz and /metrics; on the
/// signal, running operations get the shutdown deadline (`FILESTORE_SHUTDOWN_DEADLINE_MS`, 30 s by
/// default) to finish (multipart uploads cut off stay resumable) and the leases are released.
async fn serve(config: ExecutorConfig, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let exec = S3Executor::start(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!(
        "listening on http://{} (/healthz, /metrics); owner id {}",
        listener.local_addr()?,
        exec.config().owner_id
    );
    let mut states: Vec<_> = exec.mount_states().into_iter().collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, state) in states {
        println!("mount {name}: {state:?}");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let http = tokio::spawn(filestore_s3::http::serve_http(
        exec.clone(),
        listener,
        prometheus,
        stopped,
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!(
        "stopping: running operations get up to {:?} to finish",
        exec.config().shutdown_deadline
    );
    if exec.shutdown_within(exec.config().shutdown_deadline).await {
        filestore_s3::liveness::OwnerLock::retire_current();
    }
    let _ = stop.send(true);
    let _ = http.await;
    println!("stopped");
    Ok(())
}

async fn demo(config: ExecutorConfig, args: DemoArgs) -> anyhow::Result<()> {
    println!(
        "== filestore-s3 demo: schema '{}', S3 at {}",
        config.schema, args.endpoint
    );
    let applied = filestore_s3::pg::migrate(&config.database_url, &config.schema).await?;
    println!("migrations applied now: {applied:?} (empty when already up to date)");

    let mut row = MountRow::new("demo", &args.bucket, "demo-prefix");
    row.endpoint = Some(args.endpoint.clone());
    row.path_style = true;
    let spec = MountSpec::from_row(&row)?;
    let factory = S3StoreFactory::new(config.s3.clone()).await;
    let client = factory.client_for(&spec)?;
    if client
        .head_bucket()
        .bucket(&args.bucket)
        .send()
        .await
        .is_err()
    {
        client
            .create_bucket()
            .bucket(&args.bucket)
            .send()
            .await
            .with_context(|| format!("creating bucket {} at {}", args.bucket, args.endpoint))?;
        println!("created bucket {}", args.bucket);
    }

    let exec = S3Executor::start(config.clone()).await?;
    println!("registered mount: {:?}", exec.register_mount(row).await?);
    let run = chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string();
    let files: [(&str, &[u8]); 3] = [
        ("reports/2026/summary.txt", b"quarterly numbers\n"),
        ("reports/empty.bin", b""),
        ("photos/café menu ✓.txt", b"espresso 2.50\n"),
    ];
    for (path, body) in files {
        let r = exec
            .put_bytes(
                "demo",
                path,
                body.to_vec(),
                PutOptions {
                    idempotency_key: Some(format!("demo-{run}-{path}")),
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                },
            )
            .await?;
        let n = r.node.as_ref().expect("put has a node");
        println!(
            "put   {path:<28} {:>3} bytes  generation {}  sha256 {}…",
            n.size,
            r.generation,
            &n.sha256.to_hex()[..16]
        );
    }
    let again = exec
        .put_bytes(
            "demo",
            files[0].0,
            files[0].1.to_vec(),
            PutOptions {
                idempotency_key: Some(format!("demo-{run}-{}", files[0].0)),
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "put   (same idempotency key again) -> journal {} generation {} (recorded result, no new write)",
        again.journal_id, again.generation
    );
    let st = exec.stat("demo", files[0].0).await?;
    println!(
        "stat  {}: {} bytes, etag {}, storage class {}",
        st.path, st.object.size, st.object.etag, st.object.storage_class
    );
    let page = exec
        .list(
            "demo",
            "",
            ListOptions {
                delimited: true,
                ..Default::default()
            },
        )
        .await?;
    println!(
        "list  / -> directories {:?}, files {:?}",
        page.directories,
        page.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    let page = exec.list("demo", "reports", ListOptions::default()).await?;
    println!(
        "list  reports/ (recursive) -> {:?}",
        page.entries.iter().map(|e| &e.path).collect::<Vec<_>>()
    );
    let d = exec
        .delete(
            "demo",
            files[1].0,
            DeleteOptions {
                idempotency_key: Some(format!("demo-{run}-rm")),
            },
        )
        .await?;
    println!("rm    {} -> generation {}", files[1].0, d.generation);

    let c = exec
        .copy(
            "demo",
            files[0].0,
            "demo",
            "archive/2026/summary.txt",
            TransferOptions {
                idempotency_key: Some(format!("demo-{run}-cp")),
                ..Default::default()
            },
        )
        .await?;
    let cn = c.node.as_ref().expect("copy has a node");
    println!(
        "cp    {} -> {}  generation {}  verified {}",
        files[0].0,
        c.path,
        c.generation,
        cn.verified.as_str()
    );
    let m = exec
        .move_object(
            "demo",
            files[2].0,
            "demo",
            "photos/menus/café menu ✓.txt",
            TransferOptions {
                idempotency_key: Some(format!("demo-{run}-mv")),
                ..Default::default()
            },
        )
        .await?;
    println!(
        "mv    {} -> {}  generation {}  (one commit: the source node is gone)",
        files[2].0, m.path, m.generation
    );
    let refused = exec
        .copy(
            "demo",
            files[0].0,
            "demo",
            "archive/2026/summary.txt",
            TransferOptions {
                if_none_match: true,
                ..Default::default()
            },
        )
        .await;
    println!(
        "cp    --if-none-match onto an existing path -> {}",
        match refused {
            Ok(_) => "accepted (unexpected)".to_string(),
            Err(e) => format!("refused: {e}"),
        }
    );

    // Give the notifier a moment to relay the last commit, then show what landed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    exec.shutdown().await;

    let pg = filestore_s3::pg::connect(&config.database_url).await?;
    println!("\n-- {}.nodes (mount 'demo')", config.schema);
    for r in pg
        .query(
            &format!(
                "SELECT path, object_key, size, generation, left(sha256, 16) FROM {}.nodes
                 WHERE mount = 'demo' ORDER BY path",
                config.schema
            ),
            &[],
        )
        .await?
    {
        let (p, k, s, g, h): (String, String, i64, i64, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("{p:<28} key={k:<40} size={s:<3} gen={g} sha256={h}…");
    }
    let unpublished: i64 = pg
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.outbox WHERE published_at IS NULL",
                config.schema
            ),
            &[],
        )
        .await?
        .get(0);

    let client = filestore_s3::tls::redis_client(&config.redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let stream = filestore_s3::redis::RedisKeys::new(&config.redis_prefix).stream("demo");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(8)
        .query_async(&mut conn)
        .await?;
    println!("\n-- Redis stream {stream} (latest 8 of this and earlier runs)");
    for e in entries.ids.iter().rev() {
        let payload: String = e.get("payload").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&payload)?;
        println!(
            "{}  {} {} gen={} source={} event_id={}",
            e.id, v["op"], v["path"], v["generation"], v["source_path"], v["event_id"]
        );
    }
    if unpublished > 0 {
        bail!("{unpublished} outbox events are still unpublished");
    }
    println!("\nall outbox events published; demo done");
    Ok(())
}

/// `NAME=VALUE` of `put --meta`.
fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not NAME=VALUE"))
}
