//! Reference host for the filestore-s3 executor: migrations, mount registration, one-shot
//! operations, a demo of the whole protocol, and a long-running `serve`.

mod demo;
use demo::demo;
use filestore_s3::Location;

mod args;
use args::{Cli, Cmd, DemoArgs, MountCmd};

use std::sync::Arc;
use std::time::Duration;

use filestore_s3::ProgressSink;
use indicatif::{ProgressBar, ProgressStyle};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use filestore_s3::liveness::Liveness;
use filestore_s3::s3::S3StoreFactory;
use filestore_s3::MountSpec;
use filestore_s3::{
    DeleteOptions, Error, ExecutorConfig, ListOptions, MountRow, PutOptions, S3Executor,
    TransferOptions,
};

mod calls;
mod remote;

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
            Cmd::Mount(_)
            | Cmd::Get { .. }
            | Cmd::Stat { .. }
            | Cmd::Ls { .. }
            | Cmd::Check { .. } => Needs::Reads,
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

/// `check` found drift: exit 1, the report already printed.
#[derive(Debug)]
struct DriftFound;

impl std::fmt::Display for DriftFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("drift found")
    }
}

impl std::error::Error for DriftFound {}

#[actix_rt::main]
async fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let checking = matches!(cli.cmd, Cmd::Check { .. });
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<DriftFound>() => std::process::ExitCode::from(1),
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
            if checking {
                // The check could not run: not the same as drift found.
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(url) = cli.serve_url.as_deref().filter(|u| !u.is_empty()) {
        if let Some(r) = remote::run_remote(url, cli.serve_token.clone(), &cli).await {
            return r;
        }
    }
    let config = if matches!(cli.cmd, Cmd::Serve { .. }) {
        // `serve` joins the fleet unless FILESTORE_FLEET=false.
        ExecutorConfig::for_host_from_env_and_file(cli.config.as_deref())?
    } else {
        ExecutorConfig::from_env_and_file(cli.config.as_deref())?
    };
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
            Cmd::Serve {
                listen,
                ref tls_cert,
                ref tls_key,
            } => {
                let tls = match (tls_cert, tls_key) {
                    (Some(c), Some(k)) => Some(filestore_s3::tls::serve_tls_config(c, k)?),
                    _ => None,
                };
                serve(config, listen, tls, &cli).await
            }
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
                // What the store was probed to honour of conditional writes, when known.
                let conditions = match exec.store_conditions(&name).await {
                    Ok(Some(k)) => format!(
                        "\tconditions: put If-None-Match {}, put If-Match {}, delete If-Match {}, complete If-None-Match {}, complete If-Match {} (probed {})",
                        k.put_if_none_match,
                        k.put_if_match,
                        k.delete_if_match,
                        k.complete_if_none_match,
                        k.complete_if_match,
                        k.probed_at.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    Ok(None) => "\tconditions: not probed yet".into(),
                    Err(e) => format!("\tconditions: unknown ({e})"),
                };
                println!("{name}\t{state:?}{conditions}");
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
                filestore_s3_actors::multipart::file_identity(&abs.to_string_lossy())
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
            let (bar, sink) = put_progress(size, progress_json);
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
                        mode: condition.mode(),
                    },
                )
                .await;
            key.settle(&r);
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            print_put(&r?, progress_json)?;
        }
        Cmd::Get {
            mount,
            path,
            file,
            resume,
        } => {
            if file.as_os_str() == "-" {
                // Streamed to standard output; the summary goes to standard error.
                if *resume {
                    bail!("--resume needs a file, not standard output");
                }
                let mut out = tokio::io::stdout();
                let r = exec
                    .get(mount, path, &mut out, filestore_s3::GetOptions::default())
                    .await?;
                tokio::io::AsyncWriteExt::flush(&mut out).await?;
                eprintln!(
                    "{} bytes written to standard output (sha256 {})",
                    r.bytes_written,
                    r.sha256_verified.as_deref().unwrap_or("not recorded")
                );
                return Ok(());
            }
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
        Cmd::Check {
            mount,
            json,
            examples,
            pending_older_than,
            unpublished_older_than,
            head_etags,
        } => {
            let opts = filestore_s3::CheckOptions {
                head_unlisted_etags: *head_etags,
                examples: *examples,
                pending_older_than: Duration::from_secs(*pending_older_than),
                unpublished_older_than: Duration::from_secs(*unpublished_older_than),
                ..Default::default()
            };
            let report = exec.check(mount, opts).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_check(&report);
            }
            if !report.clean {
                return Err(DriftFound.into());
            }
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
                print_page(&page);
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
                exec.move_object(&Location::new(sm, sp), &Location::new(dm, dp), opts)
                    .await
            } else {
                exec.copy(&Location::new(sm, sp), &Location::new(dm, dp), opts)
                    .await
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

/// A put's progress: a bar on the terminal (with the parts of a multipart upload), or JSON lines
/// on standard output with `--progress-json`.
pub(crate) fn put_progress(size: u64, json: bool) -> (Option<ProgressBar>, ProgressSink) {
    let bar = (!json).then(|| {
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
            if let Some(total) = p.parts_total {
                bar.set_message(format!("part {}/{total}", p.parts_done));
            }
        }
        None => {
            // Not println!: a closed stdout (`| head`) must not panic the executor's thread.
            use std::io::Write as _;
            let line = serde_json::to_string(p).expect("progress serialises");
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    });
    (bar, sink)
}

/// A put's outcome: pretty JSON, or one `{"result": ...}` line after the progress lines.
pub(crate) fn print_put(r: &filestore_s3::OpResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string(&serde_json::json!({ "result": r }))?
        );
    } else {
        println!("{}", serde_json::to_string_pretty(r)?);
    }
    Ok(())
}

/// One page of `ls`: directories, entries, and the keys that map to no path (on stderr).
pub(crate) fn print_page(page: &filestore_s3::ListPage) {
    for d in &page.directories {
        println!("{d}/");
    }
    for e in &page.entries {
        println!("{}\t{}\t{}", e.size, e.etag, e.path);
    }
    for u in &page.unmapped {
        eprintln!("unmapped key {:?}: {}", u.key, u.reason);
    }
}

/// The human summary of a check.
fn print_check(r: &filestore_s3::CheckReport) {
    println!(
        "mount {} (bucket {}, prefix '{}'): {} nodes, {} objects, checked in {:.1} s",
        r.mount, r.bucket, r.prefix, r.nodes, r.objects, r.seconds
    );
    if r.etags_unlisted > 0 {
        println!(
            "{} objects listed without an ETag: compared by size only (--head-etags to HEAD them)",
            r.etags_unlisted
        );
    }
    if let Some(l) = &r.lease {
        println!("lease: {l}");
    }
    if let Some(k) = &r.capabilities {
        println!(
            "store honours: put If-None-Match {}, put If-Match {}, delete If-Match {}, complete If-None-Match {}, complete If-Match {} (probed {})",
            k.put_if_none_match,
            k.put_if_match,
            k.delete_if_match,
            k.complete_if_none_match,
            k.complete_if_match,
            k.probed_at.format("%Y-%m-%dT%H:%M:%SZ")
        );
    }
    if r.clean {
        println!("clean: no drift found");
        return;
    }
    for (kind, f) in &r.findings {
        println!("{kind}: {}", f.count);
        for e in &f.examples {
            println!("  {e}");
        }
    }
}

/// Runs every enabled mount until SIGTERM or Ctrl-C, serving /healthz and /metrics; on the
/// signal, running operations get the shutdown deadline (`FILESTORE_SHUTDOWN_DEADLINE_MS`, 30 s by
/// default) to finish (multipart uploads cut off stay resumable) and the leases are released.
async fn serve(
    mut config: ExecutorConfig,
    listen: std::net::SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    cli: &Cli,
) -> anyhow::Result<()> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    // One token for both: the API's, and the one sent when forwarding (flag, environment or file).
    let token = cli
        .serve_token
        .clone()
        .or_else(|| config.fleet.as_ref().and_then(|f| f.token.clone()))
        .filter(|t| !t.is_empty());
    let scheme = if tls.is_some() { "https" } else { "http" };
    if !local.ip().is_loopback() && token.is_some() && tls.is_none() {
        log::warn!(
            "the operations API listens on {local}, beyond loopback, over plain HTTP: its token and data cross the network unencrypted (serve --tls-cert / --tls-key, or a TLS-terminating proxy)"
        );
    }
    if let Some(fleet) = config.fleet.as_mut() {
        fleet.token = token.clone();
        if fleet.address.is_none() {
            if token.is_none() {
                log::warn!("FILESTORE_SERVE_TOKEN is not set: this host takes no forwarded call (its operations API is off)");
            } else if tls.is_some() {
                // The certificate names a host, not the address listened on.
                log::warn!(
                    "serving TLS: set FILESTORE_ADVERTISE_URL to https://NAME:{} with a name of the certificate, or this host takes no forwarded call",
                    local.port()
                );
            } else if local.ip().is_unspecified() {
                log::warn!(
                    "listening on {local}: other hosts cannot be told where to forward calls; set FILESTORE_ADVERTISE_URL"
                );
            } else {
                fleet.address = Some(format!("http://{local}"));
                if local.ip().is_loopback() {
                    log::warn!(
                        "other hosts forward calls to http://{local}: only hosts on this machine can; set FILESTORE_ADVERTISE_URL for a fleet across machines"
                    );
                }
            }
        }
    }
    let exec = S3Executor::start(config).await?;
    println!(
        "listening on {scheme}://{local} (/healthz, /metrics{}); owner id {}",
        if token.is_some() {
            ", operations API /v1/"
        } else {
            "; operations API off: FILESTORE_SERVE_TOKEN not set"
        },
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
        filestore_s3::http::ServeOptions { token, tls },
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
