//! Reading `nodes`.

use chrono::{DateTime, Utc};
use filestore_s3_actors::model::{Node, NodeMeta, Verification};
use filestore_s3_actors::ports::MetaError;
use filestore_s3_actors::Sha256Digest;

use super::{corrupt, pg, PgMetaStore};

impl PgMetaStore {
    pub(super) async fn do_node(&self, mount: &str, path: &str) -> Result<Option<Node>, MetaError> {
        let c = self.client().await?;
        // Prepared once per connection: every mutating operation reads its node.
        let row = c
            .query_opt(
                &cached!(
                    c,
                    "SELECT object_key, size, etag, sha256, storage_class, last_modified, generation,
                            verified, sse, not_applied, user_metadata
                     FROM nodes WHERE mount = $1 AND path = $2"
                ),
                &[&mount, &path],
            )
            .await
            .map_err(pg)?;
        let Some(r) = row else { return Ok(None) };
        let size: i64 = r.get("size");
        let sha: String = r.get("sha256");
        let verified: String = r.get("verified");
        Ok(Some({
            Node {
                mount: mount.to_owned(),
                path: path.to_owned(),
                key: r.get("object_key"),
                meta: NodeMeta {
                    size: size as u64,
                    etag: r.get("etag"),
                    sha256: Sha256Digest::from_hex(&sha).map_err(|e| corrupt("node sha256", e))?,
                    storage_class: r.get("storage_class"),
                    last_modified: r.get::<_, Option<DateTime<Utc>>>("last_modified"),
                    verified: Verification::parse(&verified)
                        .ok_or_else(|| corrupt("node verification", &verified))?,
                    sse: r.get("sse"),
                    not_applied: r.get("not_applied"),
                    user_metadata: serde_json::from_value(r.get("user_metadata"))
                        .map_err(|e| corrupt("node user_metadata", e))?,
                },
                generation: r.get("generation"),
            }
        }))
    }
}
