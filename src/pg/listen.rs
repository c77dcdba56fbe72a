//! LISTEN for changes of `backend_mounts` (the trigger of migration V5 notifies on every change).

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::meta_error;
use super::migrate::pg_config;
use filestore_s3_actors::Error;

/// A dedicated connection listening on `<schema>.backend_mounts`. Each notification sends `()`
/// on the receiver; the receiver ends when the connection is lost (listen again then). Keep the
/// returned client alive as long as the receiver is used.
pub async fn listen_mount_changes(
    url: &str,
    schema: &str,
) -> Result<(tokio_postgres::Client, mpsc::Receiver<()>), Error> {
    let cfg = pg_config(url, schema)?;
    let (client, mut conn) = cfg.connect(NoTls).await.map_err(meta_error)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                // A full channel already holds a pending wake-up: one reload covers them all.
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("mount change listener: connection lost ({e})");
                    break;
                }
            }
        }
    });
    // The schema name is validated ([a-z_][a-z0-9_]*), so it can be spliced into the identifier.
    client
        .batch_execute(&format!("LISTEN \"{schema}.backend_mounts\""))
        .await
        .map_err(meta_error)?;
    Ok((client, rx))
}
