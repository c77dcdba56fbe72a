//! LISTEN for changes of `backend_mounts` (the trigger of migration V5 notifies on every change).

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::meta_error;
use super::migrate::pg_config;
use filestore_s3_actors::Error;

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `backend_mounts` changed.
    Mounts,
    /// A commit wrote outbox events for this mount.
    Outbox(String),
}

/// A dedicated connection listening on `<schema>.backend_mounts` and `<schema>.outbox`. Each
/// notification is sent on the receiver; the receiver ends when the connection is lost (listen
/// again then). Keep the returned client alive as long as the receiver is used.
pub async fn listen_mount_changes(
    url: &str,
    schema: &str,
) -> Result<(tokio_postgres::Client, mpsc::Receiver<Change>), Error> {
    let cfg = pg_config(url, schema)?;
    let (client, mut conn) = cfg
        .connect(crate::tls::pg_connector(&cfg)?)
        .await
        .map_err(meta_error)?;
    let (tx, rx) = mpsc::channel(256);
    let outbox_channel = format!("{schema}.outbox");
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                // A full channel already holds pending wake-ups; the periodic reload and the
                // notifiers' own polls cover anything dropped here.
                Ok(AsyncMessage::Notification(n)) => {
                    let change = if n.channel() == outbox_channel {
                        Change::Outbox(n.payload().to_owned())
                    } else {
                        Change::Mounts
                    };
                    let _ = tx.try_send(change);
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
        .batch_execute(&format!(
            "LISTEN \"{schema}.backend_mounts\"; LISTEN \"{schema}.outbox\""
        ))
        .await
        .map_err(meta_error)?;
    Ok((client, rx))
}
