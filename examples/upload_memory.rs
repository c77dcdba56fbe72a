//! Memory benchmark (not a test): uploads a generated stream through a multipart mount and reports
//! the process's peak RSS against the bound `part size × parts in flight + 64 MiB`, and the upload
//! rate against a baseline measured in the same run (generating and hashing the same stream
//! without uploading it).
//!
//! Needs Postgres and Redis (scripts/dev-services.sh); S3 is s3s-fs in this process, so its memory
//! counts too and the figure is an upper bound for the executor.
//!
//!     scripts/bench.sh            # 4 GiB
//!     scripts/bench.sh 1          # 1 GiB

#[path = "../tests/suite/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{hash_reader, Backend, GeneratedReader, TestEnv};
use filestore_s3::PutOptions;

const MIB: u64 = 1024 * 1024;

fn vm_hwm_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let gib: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("size in GiB"))
        .unwrap_or(4);
    let size = gib * 1024 * MIB;
    let part = 16 * MIB;
    let concurrency = 4u64;
    let env = TestEnv::builder(Backend::S3sFs)
        .mount(|r| {
            r.multipart_threshold = part as i64;
            r.part_size = part as i64;
            r.part_concurrency = concurrency as i32;
        })
        .build()
        .await;

    // Baseline: the same stream generated and hashed, nothing uploaded.
    let t = Instant::now();
    let (expected, _) = hash_reader(GeneratedReader::new(1, size)).await;
    let baseline_secs = t.elapsed().as_secs_f64();
    // Warm up the connections and pools with a small multipart upload.
    env.exec
        .put_reader(
            &env.mount,
            "bench/warmup.bin",
            GeneratedReader::new(2, 2 * part + 1),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let rss_before = vm_hwm_bytes();

    let t = Instant::now();
    let r = env
        .exec
        .put_reader(
            &env.mount,
            "bench/big.bin",
            GeneratedReader::new(1, size),
            PutOptions::default(),
        )
        .await
        .unwrap();
    let upload_secs = t.elapsed().as_secs_f64();
    assert_eq!(r.node.as_ref().unwrap().sha256, expected);
    let peak = vm_hwm_bytes();

    let bound = part * concurrency + 64 * MIB;
    let mib = |b: u64| b as f64 / MIB as f64;
    println!(
        "upload of {gib} GiB, part {} MiB x {concurrency} in flight",
        part / MIB
    );
    println!(
        "peak RSS            {:>9.1} MiB (whole process, s3s-fs included)",
        mib(peak)
    );
    println!(
        "peak RSS before     {:>9.1} MiB (after warm-up)",
        mib(rss_before)
    );
    println!(
        "bound               {:>9.1} MiB (part x in flight + 64 MiB)",
        mib(bound)
    );
    println!("peak / bound        {:>9.3}", peak as f64 / bound as f64);
    println!(
        "growth / (part x n) {:>9.3}",
        (peak - rss_before) as f64 / (part * concurrency) as f64
    );
    println!(
        "rate                {:>9.1} MiB/s upload, {:.1} MiB/s generate+hash baseline, ratio {:.3}",
        mib(size) / upload_secs,
        mib(size) / baseline_secs,
        baseline_secs / upload_secs
    );
    println!(
        "verdict             {}",
        if peak <= bound {
            "within bound"
        } else {
            "OVER BOUND"
        }
    );
    env.cleanup().await;
}
