//! Health of an executor: Postgres, Redis, and per mount its state, lease, store reachability
//! and outbox backlog. Served as `/healthz` by the reference host (`crate::http`).

use std::collections::BTreeMap;
use std::time::Duration;

use filestore_s3_actors::commands::LeaseStatus;
use filestore_s3_actors::ports::{StoreError, StoreErrorKind};
use serde::Serialize;

use super::runtime::on_arbiter;
use super::{MountState, S3Executor};

/// How long each probe of a health check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether a dependency answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reach {
    /// It answered.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reach {
    fn from<E: std::fmt::Display>(r: Result<(), E>) -> Self {
        match r {
            Ok(()) => Reach {
                ok: true,
                error: None,
            },
            Err(e) => Reach {
                ok: false,
                error: Some(e.to_string()),
            },
        }
    }
}

/// One mount's health.
#[derive(Debug, Clone, Serialize)]
pub struct MountHealth {
    /// `ready`, `disabled` or `invalid: …`.
    pub state: String,
    /// `owned`, `held_by`, `unknown` (ready mounts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// Owner id of the lease holder, when another executor holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Lease epoch, when owned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// Where the mount's credentials come from (`default chain`, `profile 'p'`, `role 'arn'`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// The bucket answered a one-key listing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<Reach>,
    /// Why the mount's credentials could not be obtained, when the probe failed for that reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_error: Option<String>,
    /// Outbox rows not yet relayed to Redis.
    pub outbox_backlog: i64,
    /// Journal rows pending: operations running, or left for recovery to settle.
    pub journal_pending: i64,
    /// Seconds since the least recently changed pending row last changed (0 without one). A
    /// row that stays pending longer than the mount's longest operation plus a recovery interval
    /// is stuck: its log lines say why (a commit Postgres keeps refusing, a store that does not
    /// answer).
    pub oldest_pending_seconds: f64,
    /// Operations running or queued.
    pub operations: usize,
    /// Which conditional requests the mount's store honours (`put_if_none_match`,
    /// `put_if_match`, `delete_if_match`, `complete_if_none_match`, `complete_if_match`,
    /// `probed_at`), once the owner's probe ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions: Option<filestore_s3_actors::model::StoreConditions>,
    /// The last scheduled check of the mount (`FILESTORE_CHECK_INTERVAL_SECS`), by its owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_check: Option<super::CheckSummary>,
}

/// An executor's health.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    /// Postgres answered.
    pub postgres: Reach,
    /// Redis answered `PING`.
    pub redis: Reach,
    /// Per mount.
    pub mounts: BTreeMap<String, MountHealth>,
    /// The fleet as this host sees it, when it balances mounts with others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStatus>,
}

impl Health {
    /// Healthy: Postgres answers and every ready mount's store answers. (Redis being down only
    /// delays events, so it does not make the executor unhealthy.)
    pub fn healthy(&self) -> bool {
        self.postgres.ok
            && self
                .mounts
                .values()
                .all(|m| m.s3.as_ref().is_none_or(|r| r.ok))
    }
}

impl S3Executor {
    /// Checks Postgres, Redis and every mount (each probe bounded by a few seconds).
    pub async fn health(&self) -> Health {
        self.health_with(true).await
    }

    /// As [`S3Executor::health`]; `probe_stores = false` skips the listing sent to every mount's
    /// bucket (`s3` is then absent), for frequent callers such as a metrics scrape.
    pub async fn health_with(&self, probe_stores: bool) -> Health {
        let inner = self.inner.clone();
        let figures = tokio::time::timeout(
            PROBE_TIMEOUT,
            on_arbiter(&inner.arbiter.clone(), async move {
                inner.services.meta.mount_figures().await
            }),
        )
        .await;
        let (postgres, figures) = match figures {
            Ok(Ok(Ok(b))) => (Reach::from(Ok::<(), String>(())), b),
            Ok(Ok(Err(e))) => (Reach::from(Err(e)), Default::default()),
            Ok(Err(e)) => (Reach::from(Err(e)), Default::default()),
            Err(_) => (Reach::from(Err("no answer in time")), Default::default()),
        };
        let redis = Reach::from(self.ping_redis().await);
        let mut mounts = BTreeMap::new();
        for (name, state) in self.mount_states() {
            let mut h = MountHealth {
                state: match &state {
                    MountState::Ready => "ready".into(),
                    MountState::Disabled => "disabled".into(),
                    MountState::Invalid(e) => format!("invalid: {e}"),
                },
                lease: None,
                owner: None,
                epoch: None,
                credentials: None,
                s3: None,
                credentials_error: None,
                outbox_backlog: figures.get(&name).map_or(0, |f| f.outbox_backlog),
                journal_pending: figures.get(&name).map_or(0, |f| f.journal_pending),
                oldest_pending_seconds: figures
                    .get(&name)
                    .map_or(0.0, |f| f.oldest_pending_seconds),
                operations: 0,
                conditions: None,
                last_check: self
                    .inner
                    .checks
                    .lock()
                    .expect("checks lock")
                    .get(&name)
                    .cloned(),
            };
            if matches!(state, MountState::Ready) {
                if let Ok(status) = self.status(&name).await {
                    h.operations = status.operations;
                    h.conditions = status.conditions;
                    match status.lease {
                        LeaseStatus::Owned { epoch } => {
                            h.lease = Some("owned".into());
                            h.epoch = Some(epoch);
                        }
                        LeaseStatus::HeldBy { owner, .. } => {
                            h.lease = Some("held_by".into());
                            h.owner = Some(owner);
                        }
                        LeaseStatus::Unknown => h.lease = Some("unknown".into()),
                    }
                }
                if let Ok((_, spec, _)) = self.mount(&name) {
                    h.credentials = Some(spec.credentials.describe());
                }
                if probe_stores {
                    let probe = self.probe_store(&name).await;
                    if let Err(ProbeError::Store(e)) = &probe {
                        if e.kind == StoreErrorKind::Credentials {
                            h.credentials_error = Some(e.message.clone());
                        }
                    }
                    h.s3 = Some(Reach::from(probe));
                }
            }
            mounts.insert(name, h);
        }
        Health {
            postgres,
            redis,
            mounts,
            fleet: self.inner.fleet.as_ref().map(|f| f.status()),
        }
    }

    async fn ping_redis(&self) -> Result<(), String> {
        let client =
            crate::tls::redis_client(&self.config().redis_url).map_err(|e| e.to_string())?;
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(PROBE_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    }

    async fn probe_store(&self, mount: &str) -> Result<(), ProbeError> {
        let (_, spec, store) = self
            .mount(mount)
            .map_err(|e| ProbeError::Other(e.to_string()))?;
        let prefix = spec.keys.prefix().to_owned();
        let list = on_arbiter(&self.inner.arbiter, async move {
            // One attempt, no retry: the probe reports the store as it is now.
            store
                .raw()
                .list_objects(&prefix, Some("/"), None, Some(1))
                .await
        });
        match tokio::time::timeout(PROBE_TIMEOUT, list).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ProbeError::Store(e)),
            Ok(Err(e)) => Err(ProbeError::Other(e.to_string())),
            Err(_) => Err(ProbeError::Other("no answer in time".into())),
        }
    }
}

/// Why a store probe failed.
enum ProbeError {
    Store(StoreError),
    Other(String),
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeError::Store(e) => e.fmt(f),
            ProbeError::Other(e) => f.write_str(e),
        }
    }
}
