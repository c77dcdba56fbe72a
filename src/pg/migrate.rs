//! Migrations (refinery, embedded from `migrations/`) and the connection settings every
//! connection shares (`search_path` = the executor's schema).

use std::time::Duration;

use filestore_s3_actors::Error;

use super::meta_error;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Longest accepted schema name (Postgres identifiers are at most 63 bytes).
const MAX_SCHEMA_NAME_BYTES: usize = 63;

/// Checks that `schema` is a plain lowercase identifier, safe to splice into SQL.
pub fn validate_schema(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_NAME_BYTES
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "schema '{schema}' must match [a-z_][a-z0-9_]* and be at most {MAX_SCHEMA_NAME_BYTES} bytes"
        )))
    }
}

/// TLS only when the URL asks for it (`sslmode=require`, verified: see [`crate::tls`]); `prefer`,
/// the default, would otherwise try TLS against servers with self-signed certificates.
fn tls_only_when_required(cfg: &mut tokio_postgres::Config) {
    if cfg.get_ssl_mode() != tokio_postgres::config::SslMode::Require {
        cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
}

/// One connection to `url` as it stands (no schema set), with TLS as for the executor's own
/// connections; the connection's task is spawned.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, Error> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Config(format!("database URL is invalid: {e}")))?;
    tls_only_when_required(&mut cfg);
    let (client, conn) = cfg
        .connect(crate::tls::pg_connector(&cfg)?)
        .await
        .map_err(meta_error)?;
    tokio::spawn(conn);
    Ok(client)
}

pub(super) fn pg_config(url: &str, schema: &str) -> Result<tokio_postgres::Config, Error> {
    validate_schema(schema)?;
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Config(format!("database URL is invalid: {e}")))?;
    cfg.options(format!("-c search_path={schema}"));
    tls_only_when_required(&mut cfg);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.application_name("filestore-s3");
    Ok(cfg)
}

/// Creates `schema` if needed and applies the embedded migrations to it. Applying twice is a no-op.
/// Returns the versions applied by this call.
pub async fn migrate(url: &str, schema: &str) -> Result<Vec<i32>, Error> {
    let cfg = pg_config(url, schema)?;
    let (mut client, conn) = cfg
        .connect(crate::tls::pg_connector(&cfg)?)
        .await
        .map_err(meta_error)?;
    let conn_task = tokio::spawn(conn);
    let result = async {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(meta_error)?;
        let report = embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| Error::Config(format!("migrations into schema '{schema}' failed: {e}")))?;
        Ok(report
            .applied_migrations()
            .iter()
            .map(|m| m.version())
            .collect())
    }
    .await;
    drop(client);
    let _ = conn_task.await;
    result
}
