//! Property runs over the parsers that take outside input (issue 10): path <-> key translation,
//! listed keys that may not map, change-event payloads, mount rows. Each property also runs on the
//! corpus in `tests/corpus/` (one JSON string per line: hostile and ordinary inputs, and any
//! input a run once found).
//!
//! The case count is `FILESTORE_FUZZ_CASES` (default 2,000 per property, seconds in a debug
//! build); the long run is
//! `FILESTORE_FUZZ_CASES=1000000 cargo test --release -p filestore-s3-actors --test properties`.

use chrono::TimeZone;
use filestore_s3_actors::digest::Sha256Digest;
use filestore_s3_actors::model::{ChangeEvent, OpKind, EVENT_VERSION};
use filestore_s3_actors::mount::{validate_endpoint, MountRow, MountSpec};
use filestore_s3_actors::path::{DirPath, FsPath, KeyMapper, MAX_KEY_BYTES};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FILESTORE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn corpus(name: &str) -> Vec<String> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {l}: {e}")))
        .collect()
}

/// Strings that mix ordinary characters with the ones the rules are about.
fn hostile_text(max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9 ._-]{1,6}",
        2 => Just("/".to_string()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just("%".to_string()),
        1 => "%[0-9a-fA-F]{2}",
        1 => Just("%2e".to_string()),
        1 => Just("%252e".to_string()),
        1 => Just("\\".to_string()),
        1 => "[\\x00-\\x1f\\x7f]",
        1 => "[\u{200b}-\u{200f}\u{202a}-\u{202e}\u{2066}-\u{2069}\u{feff}]",
        1 => "[\u{0300}-\u{036f}]",
        1 => "[\u{e9}\u{430}\u{a0}\u{ff0e}\u{2215}]",
        1 => "\\PC{1,3}",
    ];
    prop::collection::vec(piece, 0..max).prop_map(|v| v.concat())
}

/// What an accepted path must satisfy.
fn check_accepted_path(raw: &str, p: &FsPath) {
    let s = p.as_str();
    assert!(
        !s.is_empty() && !s.starts_with('/') && !s.ends_with('/'),
        "{raw:?}"
    );
    assert!(!s.contains('\\'), "{raw:?}");
    for seg in s.split('/') {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{raw:?}");
        assert!(!seg.chars().any(char::is_control), "{raw:?}");
        let decoded = percent_encoding_decode(seg);
        assert!(
            decoded != "." && decoded != ".." && !decoded.contains(['/', '\\']),
            "{raw:?}: segment {seg:?} decodes to {decoded:?}"
        );
    }
    // Parsing is idempotent: the accepted form parses to itself.
    assert_eq!(FsPath::parse(s).as_ref(), Ok(p), "{raw:?}");
}

/// Percent-decoding to a fixed point (bounded), the way a consumer that decodes keys might.
fn percent_encoding_decode(seg: &str) -> String {
    let mut cur = seg.to_owned();
    for _ in 0..3 {
        let bytes = cur.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

fn path_property(raw: &str, prefix: &str) {
    match FsPath::parse(raw) {
        Ok(p) => {
            check_accepted_path(raw, &p);
            if let Ok(m) = KeyMapper::new(prefix) {
                match m.key_for(&p) {
                    Ok(key) => {
                        assert!(key.len() <= MAX_KEY_BYTES);
                        assert_eq!(
                            m.path_for(&key).as_ref(),
                            Ok(&p),
                            "{raw:?} under {prefix:?}"
                        );
                    }
                    Err(_) => assert!(m.prefix().len() + p.as_str().len() > MAX_KEY_BYTES),
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // Directories follow the same rules, with one trailing slash allowed.
    if let Ok(d) = DirPath::parse(raw) {
        if !d.as_str().is_empty() {
            check_accepted_path(raw, &FsPath::parse(d.as_str()).unwrap());
        }
    }
}

/// A key listed from the bucket maps back to a path only if that path maps to the same key.
fn key_property(key: &str, prefix: &str) {
    let Ok(m) = KeyMapper::new(prefix) else {
        return;
    };
    match m.path_for(key) {
        Ok(p) => assert_eq!(
            m.key_for(&p).as_deref(),
            Ok(key),
            "{key:?} under {prefix:?}"
        ),
        Err(u) => {
            assert_eq!(u.key, key);
            assert!(!u.reason.is_empty());
        }
    }
    if let Ok(d) = m.dir_for(key) {
        // A common prefix ends in the delimiter; one without it names the same directory.
        let want = if key.ends_with('/') {
            key.to_owned()
        } else {
            format!("{key}/")
        };
        assert_eq!(m.list_prefix(&d), Ok(want), "{key:?} under {prefix:?}");
    }
}

fn event_property(payload: &[u8]) {
    if let Ok(e) = ChangeEvent::decode(payload) {
        // Accepted events survive a round trip unchanged, and their paths are valid.
        assert_eq!(ChangeEvent::decode(&e.encode()).as_ref(), Ok(&e));
        assert!(FsPath::parse(&e.path).is_ok());
    }
}

fn endpoint_property(ep: &str) {
    for allow in [false, true] {
        if validate_endpoint(ep, allow).is_ok() {
            let url = url::Url::parse(ep).unwrap();
            assert!(matches!(url.scheme(), "http" | "https"), "{ep:?}");
            assert!(
                url.username().is_empty() && url.password().is_none(),
                "{ep:?}"
            );
            assert!(url.query().is_none() && url.fragment().is_none(), "{ep:?}");
            if !allow && url.scheme() == "http" {
                let loopback = match url.host().unwrap() {
                    url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
                    url::Host::Ipv4(ip) => ip.is_loopback(),
                    url::Host::Ipv6(ip) => ip.is_loopback(),
                };
                assert!(loopback, "{ep:?}");
            }
        }
    }
}

fn event_strategy() -> impl Strategy<Value = ChangeEvent> {
    let seg =
        "[a-zA-Z0-9 ._\u{e9}\u{430}-]{1,8}".prop_filter("valid", |s| FsPath::parse(s).is_ok());
    let path = prop::collection::vec(seg, 1..4).prop_map(|v| v.join("/"));
    (
        path.clone(),
        prop::option::of(path),
        prop_oneof![
            Just(OpKind::Put),
            Just(OpKind::Delete),
            Just(OpKind::Copy),
            Just(OpKind::Move)
        ],
        any::<[u8; 16]>(),
        0i64..1_000_000,
        1i64..1_000_000_000,
        prop::option::of(any::<u64>()),
        any::<[u8; 8]>(),
    )
        .prop_map(|(path, source, op, id, generation, journal_id, size, h)| {
            let source = source.filter(|_| matches!(op, OpKind::Copy | OpKind::Move));
            ChangeEvent {
                v: EVENT_VERSION,
                event_id: uuid::Uuid::from_bytes(id),
                mount: "m-1".into(),
                op,
                key: format!("pre/{path}"),
                path,
                source_mount: source.as_ref().map(|_| "m-2".into()),
                source_path: source,
                size,
                etag: size.map(|s| format!("\"{s:x}\"")),
                sha256: size.map(|_| Sha256Digest::of(&h)),
                generation,
                journal_id,
                time: chrono::Utc
                    .timestamp_opt(1_700_000_000 + generation, 0)
                    .unwrap(),
            }
        })
}

/// A valid row with up to three fields replaced by arbitrary or hostile values.
fn row_strategy() -> impl Strategy<Value = MountRow> {
    let text = prop_oneof![
        2 => "[a-z0-9][a-z0-9.-]{1,10}[a-z0-9]",
        2 => hostile_text(4),
        1 => "(https?|file|ftp)://[a-z0-9.@:-]{0,20}(/[a-z?#=]{0,5})?",
        1 => Just(String::new()),
    ];
    let number = prop_oneof![
        3 => 0i64..=64 * 1024 * 1024,
        1 => any::<i64>(),
    ];
    let edit = (0usize..22, text, number, any::<bool>());
    prop::collection::vec(edit, 0..4).prop_map(|edits| {
        let mut r = MountRow::new("m-1", "bucket-1", "data");
        r.endpoint = Some("http://127.0.0.1:9000".into());
        for (field, t, n, b) in edits {
            let some = Some(t.clone());
            match field {
                0 => r.name = t,
                1 => r.bucket = t,
                2 => r.prefix = t,
                3 => r.region = t,
                4 => r.endpoint = some,
                5 => r.allow_insecure_http = b,
                6 => r.sse_mode = if b { "aws:kms".into() } else { t },
                7 => r.kms_key_id = some,
                8 => r.canned_acl = some,
                9 => r.storage_class = some,
                10 => r.multipart_threshold = n,
                11 => r.part_size = n,
                12 => r.part_concurrency = n as i32,
                13 => r.verify_window_ms = n,
                14 => r.copy_threshold = n,
                15 => r.checksum = t,
                16 => {
                    r.credentials_source = "profile".into();
                    r.credentials_profile = some;
                }
                17 => {
                    r.credentials_source = "assume_role".into();
                    r.role_arn = Some(if b {
                        "arn:aws:iam::123456789012:role/r".into()
                    } else {
                        t
                    });
                }
                18 => r.role_external_id = some,
                19 => r.download_range_size = n,
                20 => r.download_concurrency = n as i32,
                _ => r.multipart_failure_policy = t,
            }
        }
        r
    })
}

fn row_property(r: &MountRow) -> bool {
    match MountSpec::from_row(r) {
        Ok(spec) => {
            assert!(spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
            if let Some(ep) = &spec.endpoint {
                assert!(validate_endpoint(ep, r.allow_insecure_http).is_ok());
            }
            assert!(spec.part_size >= 5 * 1024 * 1024 && spec.multipart_threshold >= 1);
            assert!((1..=64).contains(&spec.part_concurrency));
            assert!(spec.download_range_size >= 1024 * 1024);
            assert!((1..=64).contains(&spec.download_concurrency));
            let p = spec.keys.prefix();
            assert!(p.is_empty() || (p.ends_with('/') && FsPath::parse(&p[..p.len() - 1]).is_ok()));
            true
        }
        Err(e) => {
            // The error names a column and never echoes a password from an endpoint URL.
            assert!(!e.field.is_empty());
            if let Some(ep) = &r.endpoint {
                if let Ok(u) = url::Url::parse(ep) {
                    if let Some(pw) = u.password().filter(|p| p.len() > 3) {
                        assert!(!e.to_string().contains(pw), "{e}");
                    }
                }
            }
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn paths_translate_to_keys_and_back(raw in hostile_text(8), prefix in hostile_text(3)) {
        path_property(&raw, &prefix);
    }

    #[test]
    fn listed_keys_map_back_only_when_they_round_trip(key in hostile_text(8), prefix in "[a-z]{0,3}(/[a-z%.]{1,3}){0,2}") {
        let with_prefix = format!("{}{}", if prefix.is_empty() { String::new() } else { format!("{prefix}/") }, key);
        key_property(&key, &prefix);
        key_property(&with_prefix, &prefix);
    }

    #[test]
    fn events_round_trip(e in event_strategy()) {
        let bytes = e.encode();
        prop_assert_eq!(ChangeEvent::decode(&bytes), Ok(e));
    }

    #[test]
    fn damaged_events_never_panic(e in event_strategy(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4), junk in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = e.encode();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        event_property(&bytes);
        event_property(&junk);
    }

    #[test]
    fn endpoints_are_checked(ep in prop_oneof![hostile_text(6), "(https?|file)://[a-z0-9.@:\\[\\]-]{0,24}(/[a-z?#=%]{0,6})?"]) {
        endpoint_property(&ep);
    }

    #[test]
    fn mount_rows_parse_or_name_the_field(r in row_strategy()) {
        row_property(&r);
    }
}

/// The row strategy reaches the accepting branch, not only refusals.
#[test]
fn some_generated_rows_are_valid() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut accepted = 0;
    for _ in 0..500 {
        let r = row_strategy().new_tree(&mut runner).unwrap().current();
        accepted += u32::from(row_property(&r));
    }
    assert!(accepted > 0, "none of 500 generated rows was valid");
}

#[test]
fn the_corpus_holds() {
    let paths = corpus("paths.txt");
    for p in &paths {
        for prefix in ["", "data", "a/b"] {
            path_property(p, prefix);
        }
    }
    for k in corpus("keys.txt") {
        for prefix in ["", "data"] {
            key_property(&k, prefix);
        }
    }
    for e in corpus("events.txt") {
        event_property(e.as_bytes());
    }
    for ep in corpus("endpoints.txt") {
        endpoint_property(&ep);
    }
    // A few outcomes pinned, so the corpus cannot pass by refusing everything.
    assert!(FsPath::parse("emoji/\u{1F600}.png").is_ok());
    assert!(
        FsPath::parse("x/\u{ff0e}\u{ff0e}/y").is_ok(),
        "full-width dots are look-alikes, kept"
    );
    assert!(
        validate_endpoint("http://127.1", false).is_ok(),
        "127.1 is loopback"
    );
    assert!(validate_endpoint("http://localhost.evil.com", false).is_err());
    assert!(validate_endpoint("http://127.0.0.1.nip.io", false).is_err());
    assert!(ChangeEvent::decode(corpus("events.txt")[0].as_bytes()).is_ok());
    println!("{} corpus paths", paths.len());
}
