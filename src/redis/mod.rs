//! Redis adapter: the [`ChangePublisher`] port on redis-rs. Each event goes to a per-mount stream
//! (XADD, bounded with `MAXLEN ~`) and a per-mount Pub/Sub channel.

use std::time::Duration;

use async_trait::async_trait;
use filestore_s3_actors::model::{OutboxRow, UploadProgress};
use filestore_s3_actors::ports::{ChangePublisher, PublishError};
use filestore_s3_actors::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Retry classes of Redis failures, decided here once; the notifier acts on
/// [`PublishError::retryable`]. Either way the events stay in the outbox and are sent again.
///
/// | failure | class | why |
/// |---|---|---|
/// | I/O error, connection refused / dropped, response timeout | transient | Redis restarting, network |
/// | `LOADING` | transient | Redis is loading its dataset after a restart |
/// | `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN` | transient | cluster resharding / failover |
/// | `READONLY` | transient | the node was demoted to replica in a failover |
/// | `BUSY` | transient | a script is running |
/// | `OOM` | transient | memory pressure; eviction or stream trimming frees room |
/// | `NOAUTH`, `WRONGPASS`, authentication failed, `NOPERM` | permanent | credentials / ACL: configuration |
/// | `WRONGTYPE` | permanent | the stream key holds another type: another program uses the key |
/// | `ERR` and other replies, invalid client configuration, unparsable reply | permanent | a bug or a misconfiguration |
pub(crate) fn retryable(e: &redis::RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return true;
    }
    matches!(
        e.code(),
        Some("LOADING" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN" | "READONLY" | "BUSY" | "OOM")
    )
}

fn publish_error(e: &redis::RedisError) -> PublishError {
    PublishError {
        retryable: retryable(e),
        message: e.to_string(),
    }
}

/// Key names for one prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    /// Keys under `prefix` (e.g. `filestore`).
    pub fn new(prefix: &str) -> Self {
        RedisKeys {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of a mount's change events: `{prefix}:{mount}:events`.
    pub fn stream(&self, mount: &str) -> String {
        format!("{}:{mount}:events", self.prefix)
    }

    /// The Pub/Sub channel of a mount's change events: `{prefix}:{mount}:changes`.
    pub fn channel(&self, mount: &str) -> String {
        format!("{}:{mount}:changes", self.prefix)
    }

    /// The Pub/Sub channel of a mount's upload progress: `{prefix}:{mount}:progress`.
    pub fn progress_channel(&self, mount: &str) -> String {
        format!("{}:{mount}:progress", self.prefix)
    }
}

/// Publishes change events. The connection is made lazily and re-made after failures, so Redis
/// being down at start-up only delays events.
pub struct RedisPublisher {
    conn: ConnectionManager,
    keys: RedisKeys,
    stream_maxlen: usize,
}

impl RedisPublisher {
    /// A publisher; must be created on the runtime (arbiter) that will use it.
    pub fn new(url: &str, keys: RedisKeys, stream_maxlen: usize) -> Result<Self, Error> {
        let client = crate::tls::redis_client(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::Config(format!("Redis connection manager: {e}")))?;
        Ok(RedisPublisher {
            conn,
            keys,
            stream_maxlen,
        })
    }
}

#[async_trait]
impl ChangePublisher for RedisPublisher {
    async fn publish(&self, mount: &str, rows: &[OutboxRow]) -> Result<(), PublishError> {
        let stream = self.keys.stream(mount);
        let channel = self.keys.channel(mount);
        let mut pipe = redis::pipe();
        for row in rows {
            let (event_id, payload) = match row {
                OutboxRow::Event(e) => (
                    e.event.event_id.to_string(),
                    String::from_utf8(e.event.encode()).map_err(|err| PublishError {
                        retryable: false,
                        message: format!("encoding event: {err}"),
                    })?,
                ),
                OutboxRow::Unreadable {
                    event_id, payload, ..
                } => (event_id.to_string(), payload.clone()),
            };
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.stream_maxlen)
                .arg("*")
                .arg("event_id")
                .arg(event_id)
                .arg("payload")
                .arg(&payload)
                .ignore();
            pipe.cmd("PUBLISH").arg(&channel).arg(&payload).ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| publish_error(&e))
    }

    async fn publish_progress(
        &self,
        mount: &str,
        progress: &UploadProgress,
    ) -> Result<(), PublishError> {
        let payload = serde_json::to_string(progress).map_err(|e| PublishError {
            retryable: false,
            message: format!("encoding progress: {e}"),
        })?;
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(self.keys.progress_channel(mount))
            .arg(payload)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| publish_error(&e))
    }
}
