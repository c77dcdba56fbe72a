//! Records of multipart uploads and their parts (resume after a crash, orphan sweep).

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use filestore_s3_actors::model::UploadRecord;
use filestore_s3_actors::ports::{MetaError, UploadedPart};
use filestore_s3_actors::Sha256Digest;
use tokio_postgres::Row;

use super::{pg, to_i64, PgMetaStore};

impl PgMetaStore {
    pub(super) async fn do_upload_of(
        &self,
        journal_id: i64,
    ) -> Result<Option<UploadRecord>, MetaError> {
        let c = self.client().await?;
        let Some(row) = c
            .query_opt(
                &cached!(
                    c,
                    "SELECT upload_id, journal_id, mount, object_key, part_size, total_size, source_etag
                 FROM multipart_uploads WHERE journal_id = $1 AND state = 'open'"
                ),
                &[&journal_id],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(None);
        };
        let mut record = upload_from_row(&row);
        let parts = c
            .query(
                &cached!(
                    c,
                    "SELECT part_number, etag, size, checksum_sha256 FROM multipart_parts
                 WHERE upload_id = $1 ORDER BY part_number"
                ),
                &[&record.upload_id],
            )
            .await
            .map_err(pg)?;
        record.parts = parts
            .iter()
            .map(|p| UploadedPart {
                part_number: p.get(0),
                etag: Some(p.get::<_, String>(1)).filter(|e| !e.is_empty()),
                size: p.get::<_, i64>(2) as u64,
                // An unreadable part checksum is treated as unknown: the part is then checked by
                // size only on resume, and Complete is the final check.
                sha256: p
                    .get::<_, Option<String>>(3)
                    .and_then(|h| Sha256Digest::from_hex(&h).ok()),
            })
            .collect();
        Ok(Some(record))
    }

    pub(super) async fn do_recorded_uploads(
        &self,
        mount: &str,
        key: &str,
    ) -> Result<Vec<String>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &cached!(
                    c,
                    "SELECT upload_id FROM multipart_uploads WHERE mount = $1 AND object_key = $2"
                ),
                &[&mount, &key],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(super) async fn do_mark_upload_aborted(&self, upload_id: &str) -> Result<(), MetaError> {
        let c = self.client().await?;
        c.execute(
            &cached!(c, "UPDATE multipart_uploads SET state = 'aborted', updated_at = now() WHERE upload_id = $1"),
            &[&upload_id],
        )
        .await
        .map_err(pg)?;
        Ok(())
    }

    pub(super) async fn do_orphaned_uploads(
        &self,
        mount: &str,
        older_than: DateTime<Utc>,
    ) -> Result<Vec<UploadRecord>, MetaError> {
        let c = self.client().await?;
        let rows = c
            .query(
                &cached!(c, "SELECT u.upload_id, u.journal_id, u.mount, u.object_key, u.part_size, u.total_size,
                        u.source_etag
                 FROM multipart_uploads u JOIN journal j ON j.id = u.journal_id
                 WHERE u.mount = $1 AND u.state = 'open' AND j.state <> 'pending'
                   AND u.updated_at < $2
                 ORDER BY u.updated_at"),
                &[&mount, &older_than],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(upload_from_row).collect())
    }
}

fn upload_from_row(row: &Row) -> UploadRecord {
    UploadRecord {
        upload_id: row.get(0),
        journal_id: row.get(1),
        mount: row.get(2),
        key: row.get(3),
        part_size: row.get::<_, i64>(4) as u64,
        total_size: row.get::<_, Option<i64>>(5).map(|t| t as u64),
        source_etag: row.get(6),
        parts: Vec::new(),
    }
}

/// Records a started upload inside `tx`.
pub(super) async fn upload_in(tx: &Transaction<'_>, u: &UploadRecord) -> Result<(), MetaError> {
    // An earlier upload of the same journal row that is still open is no longer used (the store
    // lost it, or it could not be resumed): kept as history, marked aborted (V10).
    tx.execute(
        &cached!(
            tx,
            "UPDATE multipart_uploads SET state = 'aborted', updated_at = now()
             WHERE journal_id = $1 AND state = 'open' AND upload_id <> $2"
        ),
        &[&u.journal_id, &u.upload_id],
    )
    .await
    .map_err(pg)?;
    let part_size = to_i64(u.part_size, "part size")?;
    let total = u.total_size.map(|t| to_i64(t, "total size")).transpose()?;
    tx.execute(
        &cached!(
            tx,
            "INSERT INTO multipart_uploads (upload_id, journal_id, mount, object_key, part_size,
                                        total_size, source_etag, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'open')
         ON CONFLICT (upload_id) DO NOTHING"
        ),
        &[
            &u.upload_id,
            &u.journal_id,
            &u.mount,
            &u.key,
            &part_size,
            &total,
            &u.source_etag,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Records accepted parts inside `c` (idempotent per part number).
pub(super) async fn parts_in(
    c: &Transaction<'_>,
    upload_id: &str,
    parts: &[UploadedPart],
) -> Result<(), MetaError> {
    let numbers: Vec<i32> = parts.iter().map(|p| p.part_number).collect();
    let etags: Vec<String> = parts
        .iter()
        .map(|p| p.etag.clone().unwrap_or_default())
        .collect();
    let sizes: Vec<i64> = parts.iter().map(|p| p.size as i64).collect();
    let shas: Vec<Option<String>> = parts.iter().map(|p| p.sha256.map(|d| d.to_hex())).collect();
    c.execute(
        &cached!(
            c,
            "WITH p AS (SELECT * FROM unnest($2::int[], $3::text[], $4::bigint[], $5::text[])
                     AS t(part_number, etag, size, sha256))
         INSERT INTO multipart_parts (upload_id, part_number, etag, size, checksum_sha256)
         SELECT $1, part_number, etag, size, sha256 FROM p
         ON CONFLICT (upload_id, part_number) DO UPDATE SET etag = EXCLUDED.etag,
            size = EXCLUDED.size, checksum_sha256 = EXCLUDED.checksum_sha256"
        ),
        &[&upload_id, &numbers, &etags, &sizes, &shas],
    )
    .await
    .map_err(pg)?;
    c.execute(
        &cached!(
            c,
            "UPDATE multipart_uploads SET updated_at = now() WHERE upload_id = $1"
        ),
        &[&upload_id],
    )
    .await
    .map_err(pg)?;
    Ok(())
}
