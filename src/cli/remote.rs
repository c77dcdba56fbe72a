//! The commands sent to a running `serve` (`--serve-url` / `FILESTORE_SERVE_URL`) instead of run
//! one-shot: the host that owns the mount (or forwards to it) runs them, and this process takes
//! no lease and opens no connection to Postgres, Redis or S3.

use super::*;
use filestore_s3::api::client::ServeClient;
use filestore_s3::OpKind;

/// Runs `cli`'s command through the operations API at `url`. `None` for commands that are not
/// sent there (migrate, mount, demo, serve).
pub(crate) async fn run_remote(
    url: &str,
    token: Option<String>,
    cli: &Cli,
) -> Option<anyhow::Result<()>> {
    let client = match ServeClient::new(url, token) {
        Ok(c) => c,
        Err(e) => return Some(Err(e.into())),
    };
    let state_dir = cli.state_dir.clone().or_else(calls::default_state_dir);
    // What makes two calls the same call: the command, whichever host of the fleet it is sent
    // to (sent again to another host after the first died, it must continue the same call).
    let call_key = |given: &Option<String>, call: &[&str]| {
        let mut all = vec!["serve"];
        all.extend_from_slice(call);
        calls::CallKey::for_call(state_dir.as_deref(), given.clone(), &all)
    };
    let run = async {
        match &cli.cmd {
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
                let abs = std::path::absolute(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let f = tokio::fs::File::open(&abs)
                    .await
                    .with_context(|| format!("reading {}", file.display()))?;
                let (size, mtime_ns) =
                    filestore_s3_actors::multipart::file_identity(&abs.to_string_lossy())
                        .await
                        .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
                let (size_s, mtime_s, condition_s) = (
                    size.to_string(),
                    mtime_ns.to_string(),
                    format!(
                        "{:?}/{:?}",
                        condition.if_none_match, condition.if_generation
                    ),
                );
                let meta_s: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
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
                let (bar, sink) = put_progress(size, *progress_json);
                let r = client
                    .put(
                        mount,
                        path,
                        f,
                        Some(size),
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
                print_put(&r?, *progress_json)?;
            }
            Cmd::Get {
                mount,
                path,
                file,
                resume,
            } => {
                if *resume {
                    bail!("--resume is not supported through serve: run the command without FILESTORE_SERVE_URL");
                }
                if file.as_os_str() == "-" {
                    let mut out = tokio::io::stdout();
                    let n = client.get(mount, path, &mut out).await?;
                    tokio::io::AsyncWriteExt::flush(&mut out).await?;
                    eprintln!("{n} bytes written to standard output (checked by serve)");
                } else {
                    // Into a file beside the target, renamed once complete.
                    let tmp =
                        file.with_extension(format!("part-{}", uuid::Uuid::new_v4().simple()));
                    let mut out = tokio::fs::File::create(&tmp)
                        .await
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    let n = match client.get(mount, path, &mut out).await {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(e.into());
                        }
                    };
                    tokio::io::AsyncWriteExt::flush(&mut out).await?;
                    out.sync_all().await?;
                    std::fs::rename(&tmp, file)
                        .with_context(|| format!("writing {}", file.display()))?;
                    println!("{n} bytes written to {} (checked by serve)", file.display());
                }
            }
            Cmd::Stat { mount, path } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&client.stat(mount, path).await?)?
                );
            }
            Cmd::Ls {
                mount,
                dir,
                recursive,
            } => {
                let mut token = None;
                loop {
                    let page = client
                        .list(
                            mount,
                            dir,
                            &ListOptions {
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
                let r = client.delete(mount, path, Some(&key.key)).await;
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
                let op = if is_move { OpKind::Move } else { OpKind::Copy };
                let r = client
                    .transfer(
                        op,
                        &Location::new(sm, sp),
                        &Location::new(dm, dp),
                        Some(key.key.clone()),
                        args.condition.mode(),
                    )
                    .await;
                key.settle(&r);
                println!("{}", serde_json::to_string_pretty(&r?)?);
            }
            Cmd::Migrate | Cmd::Mount(_) | Cmd::Demo(_) | Cmd::Serve { .. } | Cmd::Check { .. } => {
                unreachable!("not sent to serve")
            }
        }
        Ok(())
    };
    match &cli.cmd {
        // The check reads Postgres and the bucket itself.
        Cmd::Migrate | Cmd::Mount(_) | Cmd::Demo(_) | Cmd::Serve { .. } | Cmd::Check { .. } => None,
        _ => Some(run.await),
    }
}
