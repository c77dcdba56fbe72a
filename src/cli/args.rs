//! The reference binary's command line (clap): commands, their arguments and options.

use super::*;

#[derive(Parser)]
#[command(
    name = "filestore-s3",
    version,
    about = "S3 executor of Filestore (reference host)"
)]
pub(crate) struct Cli {
    /// Configuration file of `NAME=value` lines (the FILESTORE_* variables; the environment wins).
    #[arg(long, global = true, env = "FILESTORE_CONFIG_FILE")]
    pub(crate) config: Option<std::path::PathBuf>,
    /// Refuse at once when another executor that may be alive holds the mount's lease, instead
    /// of waiting for it.
    #[arg(long, global = true)]
    pub(crate) no_wait: bool,
    /// How long a command that changes a mount waits for the mount's lease while another
    /// executor that may be alive holds it (a provably dead one on this machine is taken over at
    /// once).
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        env = "FILESTORE_LEASE_WAIT_SECS",
        default_value_t = 20
    )]
    pub(crate) lease_wait: u64,
    /// Where commands remember the idempotency key of a call until its outcome is known, so that
    /// a killed command sent again continues the same operation (default:
    /// $XDG_STATE_HOME/filestore-s3 or ~/.local/state/filestore-s3).
    #[arg(long, global = true, env = "FILESTORE_STATE_DIR")]
    pub(crate) state_dir: Option<std::path::PathBuf>,
    /// Send put / get / stat / ls / rm / cp / mv to the operations API of a running `serve` at
    /// this URL (http://HOST:PORT) instead of running them here.
    #[arg(long, global = true, env = "FILESTORE_SERVE_URL")]
    pub(crate) serve_url: Option<String>,
    /// The bearer token of the operations API (of `serve`, and sent by commands to it).
    #[arg(
        long,
        global = true,
        env = "FILESTORE_SERVE_TOKEN",
        hide_env_values = true
    )]
    pub(crate) serve_token: Option<String>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Apply the schema migrations (idempotent).
    Migrate,
    /// Manage backend_mounts rows.
    #[command(subcommand)]
    Mount(MountCmd),
    /// Upload a file (multipart above the mount's threshold, with a progress bar).
    Put {
        mount: String,
        path: String,
        file: std::path::PathBuf,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        /// User metadata NAME=VALUE (repeatable), stored as x-amz-meta-NAME.
        #[arg(long = "meta", value_name = "NAME=VALUE", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// Print progress as JSON lines on stdout instead of a progress bar.
        #[arg(long)]
        progress_json: bool,
        #[command(flatten)]
        condition: ConditionArgs,
    },
    /// Copy an object (within a mount or to another mount: `MOUNT:PATH` names another mount).
    Cp(TransferArgs),
    /// Move an object (within a mount or to another mount: `MOUNT:PATH` names another mount).
    Mv(TransferArgs),
    /// Download an object into a file (`-`: standard output), checking its SHA-256.
    Get {
        mount: String,
        path: String,
        file: std::path::PathBuf,
        /// Continue a partial download already in FILE.
        #[arg(long)]
        resume: bool,
    },
    /// Show the object and its node.
    Stat { mount: String, path: String },
    /// Audit a mount without changing anything: its nodes against its bucket, its journal and
    /// its feed (docs/operations.md). Exit 0 when clean, 1 when drift was found, 2 when the
    /// check could not run.
    Check {
        mount: String,
        /// Print the report as JSON (docs/operations.md#the-report).
        #[arg(long)]
        json: bool,
        /// Examples shown per kind of finding.
        #[arg(long, default_value_t = 20)]
        examples: usize,
        /// Report pending journal rows unchanged for longer than this.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        pending_older_than: u64,
        /// Report events not relayed to Redis for longer than this.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        unpublished_older_than: u64,
        /// HEAD each object whose listing entry has no ETag, to compare it (stores such as
        /// s3s-fs list none; without this they are compared by size only).
        #[arg(long)]
        head_etags: bool,
    },
    /// List a directory.
    Ls {
        mount: String,
        #[arg(default_value = "")]
        dir: String,
        /// Everything below, not one level.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Delete an object.
    Rm {
        mount: String,
        path: String,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Run the whole protocol once against a bucket and show what it produced.
    Demo(DemoArgs),
    /// Run the executor until SIGTERM / Ctrl-C, with /healthz and /metrics over HTTP.
    Serve {
        /// Address of the HTTP endpoints.
        #[arg(long, env = "FILESTORE_SERVE_ADDR", default_value = "127.0.0.1:9464")]
        listen: std::net::SocketAddr,
        /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, env = "FILESTORE_SERVE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, env = "FILESTORE_SERVE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
    },
}

#[derive(Args)]
pub(crate) struct ConditionArgs {
    /// Create only: fail if the destination path exists.
    #[arg(long, conflicts_with = "if_generation")]
    pub(crate) if_none_match: bool,
    /// Replace only if the destination's node is at this generation.
    #[arg(long)]
    pub(crate) if_generation: Option<i64>,
}

#[derive(Args)]
pub(crate) struct TransferArgs {
    /// Mount of the source (and of the destination unless DEST names one).
    pub(crate) mount: String,
    /// Source path.
    pub(crate) source: String,
    /// Destination: `PATH` on the same mount, or `MOUNT:PATH`.
    pub(crate) dest: String,
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    #[command(flatten)]
    pub(crate) condition: ConditionArgs,
}

impl TransferArgs {
    /// (source mount, source path, destination mount, destination path)
    pub(crate) fn ends(&self) -> (&str, &str, &str, &str) {
        match self.dest.split_once(':') {
            Some((m, p)) if !m.is_empty() && !m.contains('/') => (&self.mount, &self.source, m, p),
            _ => (&self.mount, &self.source, &self.mount, &self.dest),
        }
    }

    pub(crate) fn options(&self) -> TransferOptions {
        TransferOptions {
            idempotency_key: self.idempotency_key.clone(),
            mode: self.condition.mode(),
        }
    }
}

impl ConditionArgs {
    /// The mode the flags name (clap refuses both at once).
    pub(crate) fn mode(&self) -> filestore_s3::PutMode {
        match (self.if_none_match, self.if_generation) {
            (true, _) => filestore_s3::PutMode::Create,
            (false, Some(g)) => filestore_s3::PutMode::IfGeneration(g),
            (false, None) => filestore_s3::PutMode::Overwrite,
        }
    }
}

#[derive(Subcommand)]
pub(crate) enum MountCmd {
    /// Insert or replace a mount.
    Add(Box<MountArgs>),
    /// Show all mounts and their state.
    List,
}

#[derive(Args)]
pub(crate) struct MountArgs {
    #[arg(long)]
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) bucket: String,
    #[arg(long, default_value = "")]
    pub(crate) prefix: String,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub(crate) region: String,
    /// Endpoint URL of an S3-compatible store.
    #[arg(long)]
    pub(crate) endpoint: Option<String>,
    /// Accept a plain-http endpoint that is not loopback (unencrypted; off by default).
    #[arg(long)]
    pub(crate) allow_insecure_http: bool,
    #[arg(long)]
    pub(crate) path_style: bool,
    /// none | aes256 | aws:kms
    #[arg(long, default_value = "none")]
    pub(crate) sse_mode: String,
    #[arg(long)]
    pub(crate) kms_key_id: Option<String>,
    #[arg(long)]
    pub(crate) canned_acl: Option<String>,
    #[arg(long)]
    pub(crate) storage_class: Option<String>,
    /// sha256 | none
    #[arg(long, default_value = "sha256")]
    pub(crate) checksum: String,
    #[arg(long)]
    pub(crate) disabled: bool,
    /// Objects larger than this (bytes) go through multipart upload.
    #[arg(long)]
    pub(crate) multipart_threshold: Option<i64>,
    /// Multipart part size in bytes.
    #[arg(long)]
    pub(crate) part_size: Option<i64>,
    /// Parts in flight per upload.
    #[arg(long)]
    pub(crate) part_concurrency: Option<i32>,
    /// Largest range (bytes) of a download to a file; ranges are fetched in parallel.
    #[arg(long)]
    pub(crate) download_range_size: Option<i64>,
    /// Ranges in flight per download to a file.
    #[arg(long)]
    pub(crate) download_concurrency: Option<i32>,
    /// How long verification may wait for the store to show a write.
    #[arg(long)]
    pub(crate) verify_window_ms: Option<i64>,
    /// abort | retain: what happens to a multipart upload whose part failed for good.
    #[arg(long)]
    pub(crate) multipart_failure_policy: Option<String>,
    /// Objects larger than this (bytes) are copied part by part.
    #[arg(long)]
    pub(crate) copy_threshold: Option<i64>,
    /// strict | lenient: when the store ignores SSE / KMS key / storage class.
    #[arg(long)]
    pub(crate) settings_policy: Option<String>,
    /// head | put-response | response: how a single-request write is proven (put-response: a
    /// put by the PUT's answer echoing the SHA-256 sent; response: that, a copy by the SHA-256 in
    /// the CopyObject answer and a delete by the store's success; for strongly consistent stores).
    #[arg(long)]
    pub(crate) verify: Option<String>,
    /// Take the mount's credentials from this profile of the shared AWS config files.
    #[arg(long, conflicts_with = "role_arn")]
    pub(crate) profile: Option<String>,
    /// Assume this role (STS AssumeRole, authorised by the executor's default chain).
    #[arg(long)]
    pub(crate) role_arn: Option<String>,
    /// External id for the role's trust policy.
    #[arg(long, requires = "role_arn")]
    pub(crate) external_id: Option<String>,
    /// Session name of the assumed role (default filestore-s3-<mount>).
    #[arg(long, requires = "role_arn")]
    pub(crate) session_name: Option<String>,
}

impl MountArgs {
    pub(crate) fn row(&self) -> MountRow {
        let mut r = MountRow::new(&self.name, &self.bucket, &self.prefix);
        r.region = self.region.clone();
        r.endpoint = self.endpoint.clone();
        r.allow_insecure_http = self.allow_insecure_http;
        r.path_style = self.path_style;
        r.sse_mode = self.sse_mode.clone();
        r.kms_key_id = self.kms_key_id.clone();
        r.canned_acl = self.canned_acl.clone();
        r.storage_class = self.storage_class.clone();
        r.checksum = self.checksum.clone();
        r.enabled = !self.disabled;
        if let Some(v) = self.multipart_threshold {
            r.multipart_threshold = v;
        }
        if let Some(v) = self.part_size {
            r.part_size = v;
        }
        if let Some(v) = self.part_concurrency {
            r.part_concurrency = v;
        }
        if let Some(v) = self.download_range_size {
            r.download_range_size = v;
        }
        if let Some(v) = self.download_concurrency {
            r.download_concurrency = v;
        }
        if let Some(v) = self.verify_window_ms {
            r.verify_window_ms = v;
        }
        if let Some(v) = &self.multipart_failure_policy {
            r.multipart_failure_policy = v.clone();
        }
        if let Some(v) = self.copy_threshold {
            r.copy_threshold = v;
        }
        if let Some(v) = &self.settings_policy {
            r.settings_policy = v.clone();
        }
        if let Some(v) = &self.verify {
            r.verify = v.clone();
        }
        if let Some(p) = &self.profile {
            r.credentials_source = "profile".into();
            r.credentials_profile = Some(p.clone());
        }
        if let Some(arn) = &self.role_arn {
            r.credentials_source = "assume_role".into();
            r.role_arn = Some(arn.clone());
            r.role_external_id = self.external_id.clone();
            r.role_session_name = self.session_name.clone();
        }
        r
    }
}

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Endpoint of the S3 server.
    #[arg(
        long,
        env = "FILESTORE_DEMO_ENDPOINT",
        default_value = "http://127.0.0.1:5055"
    )]
    pub(crate) endpoint: String,
    /// Bucket to use (created when missing).
    #[arg(long, default_value = "filestore-demo")]
    pub(crate) bucket: String,
}

/// `NAME=VALUE` of `put --meta`.
fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{s}' is not NAME=VALUE"))
}
