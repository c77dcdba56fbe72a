//! `backend_mounts` rows.

use filestore_s3_actors::model::StoreConditions;
use filestore_s3_actors::mount::MountRow;
use filestore_s3_actors::ports::MetaError;

use super::{pg, PgMetaStore};

impl PgMetaStore {
    /// Inserts or replaces a `backend_mounts` row.
    pub async fn upsert_mount(&self, r: &MountRow) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO backend_mounts (name, bucket, prefix, region, endpoint, path_style, sse_mode,
                kms_key_id, canned_acl, storage_class, multipart_threshold, part_size, part_concurrency,
                verify_window_ms, checksum, enabled, multipart_failure_policy, copy_threshold,
                settings_policy, credentials_source, credentials_profile, role_arn,
                role_external_id, role_session_name, allow_insecure_http, verify,
                download_range_size, download_concurrency)
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,
                $23,$24,$25,$26,$27,$28)
             ON CONFLICT (name) DO UPDATE SET bucket = EXCLUDED.bucket, prefix = EXCLUDED.prefix,
                region = EXCLUDED.region, endpoint = EXCLUDED.endpoint, path_style = EXCLUDED.path_style,
                sse_mode = EXCLUDED.sse_mode, kms_key_id = EXCLUDED.kms_key_id,
                canned_acl = EXCLUDED.canned_acl, storage_class = EXCLUDED.storage_class,
                multipart_threshold = EXCLUDED.multipart_threshold, part_size = EXCLUDED.part_size,
                part_concurrency = EXCLUDED.part_concurrency, verify_window_ms = EXCLUDED.verify_window_ms,
                checksum = EXCLUDED.checksum, enabled = EXCLUDED.enabled,
                multipart_failure_policy = EXCLUDED.multipart_failure_policy,
                copy_threshold = EXCLUDED.copy_threshold, settings_policy = EXCLUDED.settings_policy,
                credentials_source = EXCLUDED.credentials_source,
                credentials_profile = EXCLUDED.credentials_profile, role_arn = EXCLUDED.role_arn,
                role_external_id = EXCLUDED.role_external_id,
                role_session_name = EXCLUDED.role_session_name,
                allow_insecure_http = EXCLUDED.allow_insecure_http, verify = EXCLUDED.verify,
                download_range_size = EXCLUDED.download_range_size,
                download_concurrency = EXCLUDED.download_concurrency,
                updated_at = now()",
            &[
                &r.name,
                &r.bucket,
                &r.prefix,
                &r.region,
                &r.endpoint,
                &r.path_style,
                &r.sse_mode,
                &r.kms_key_id,
                &r.canned_acl,
                &r.storage_class,
                &r.multipart_threshold,
                &r.part_size,
                &r.part_concurrency,
                &r.verify_window_ms,
                &r.checksum,
                &r.enabled,
                &r.multipart_failure_policy,
                &r.copy_threshold,
                &r.settings_policy,
                &r.credentials_source,
                &r.credentials_profile,
                &r.role_arn,
                &r.role_external_id,
                &r.role_session_name,
                &r.allow_insecure_http,
                &r.verify,
                &r.download_range_size,
                &r.download_concurrency,
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    pub(super) async fn do_load_mounts(&self) -> Result<Vec<MountRow>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT name, bucket, prefix, region, endpoint, path_style, sse_mode, kms_key_id,
                        canned_acl, storage_class, multipart_threshold, part_size, part_concurrency,
                        verify_window_ms, checksum, enabled, multipart_failure_policy,
                        copy_threshold, settings_policy, credentials_source, credentials_profile,
                        role_arn, role_external_id, role_session_name, allow_insecure_http, verify,
                        download_range_size, download_concurrency
                 FROM backend_mounts ORDER BY name",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| MountRow {
                name: r.get("name"),
                bucket: r.get("bucket"),
                prefix: r.get("prefix"),
                region: r.get("region"),
                endpoint: r.get("endpoint"),
                path_style: r.get("path_style"),
                sse_mode: r.get("sse_mode"),
                kms_key_id: r.get("kms_key_id"),
                canned_acl: r.get("canned_acl"),
                storage_class: r.get("storage_class"),
                multipart_threshold: r.get("multipart_threshold"),
                part_size: r.get("part_size"),
                part_concurrency: r.get("part_concurrency"),
                download_range_size: r.get("download_range_size"),
                download_concurrency: r.get("download_concurrency"),
                verify_window_ms: r.get("verify_window_ms"),
                checksum: r.get("checksum"),
                enabled: r.get("enabled"),
                multipart_failure_policy: r.get("multipart_failure_policy"),
                copy_threshold: r.get("copy_threshold"),
                settings_policy: r.get("settings_policy"),
                credentials_source: r.get("credentials_source"),
                credentials_profile: r.get("credentials_profile"),
                role_arn: r.get("role_arn"),
                role_external_id: r.get("role_external_id"),
                role_session_name: r.get("role_session_name"),
                allow_insecure_http: r.get("allow_insecure_http"),
                verify: r.get("verify"),
            })
            .collect())
    }
}

impl PgMetaStore {
    pub(super) async fn do_record_conditions(
        &self,
        mount: &str,
        conditions: &StoreConditions,
    ) -> Result<(), MetaError> {
        let c = self.client().await?;
        let by = self.fence.as_ref().map_or("", |f| f.owner.as_str());
        c.execute(
            &cached!(
                c,
                "INSERT INTO mount_store_conditions
                     (mount, put_if_none_match, put_if_match, delete_if_match,
                      complete_if_none_match, complete_if_match, probed_at, probed_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (mount) DO UPDATE SET
                     put_if_none_match = EXCLUDED.put_if_none_match,
                     put_if_match = EXCLUDED.put_if_match,
                     delete_if_match = EXCLUDED.delete_if_match,
                     complete_if_none_match = EXCLUDED.complete_if_none_match,
                     complete_if_match = EXCLUDED.complete_if_match,
                     probed_at = EXCLUDED.probed_at,
                     probed_by = EXCLUDED.probed_by"
            ),
            &[
                &mount,
                &conditions.put_if_none_match,
                &conditions.put_if_match,
                &conditions.delete_if_match,
                &conditions.complete_if_none_match,
                &conditions.complete_if_match,
                &conditions.probed_at,
                &by,
            ],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }
    pub(super) async fn do_conditions(
        &self,
        mount: &str,
    ) -> Result<Option<StoreConditions>, MetaError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                &cached!(
                    c,
                    "SELECT put_if_none_match, put_if_match, delete_if_match, probed_at,
                            complete_if_none_match, complete_if_match
                     FROM mount_store_conditions WHERE mount = $1"
                ),
                &[&mount],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| StoreConditions {
            put_if_none_match: r.get(0),
            put_if_match: r.get(1),
            delete_if_match: r.get(2),
            probed_at: r.get(3),
            complete_if_none_match: r.get(4),
            complete_if_match: r.get(5),
        }))
    }
}
