//! The actix face: a host's actor drives the executor purely by messages — put, copy, move,
//! stat, list, delete — gets typed results and typed errors back, and receives a mount's change
//! events through a subscription of its own `Recipient`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;

use crate::common::{sha256_hex, Backend, TestEnv};
use filestore_s3::messages::{
    ChangeEventMsg, Copy, Delete, List, Location, Move, Put, StatPath, Subscribe,
};
use filestore_s3::{Error, FeedEvent, ListOptions, PutOptions};

/// A host actor that keeps the events its subscription delivers.
struct Watcher {
    seen: Arc<Mutex<Vec<FeedEvent>>>,
}

impl Actor for Watcher {
    type Context = Context<Self>;
}

impl Handler<ChangeEventMsg> for Watcher {
    type Result = ();

    fn handle(&mut self, msg: ChangeEventMsg, _ctx: &mut Self::Context) {
        self.seen.lock().unwrap().push(msg.0);
    }
}

#[actix_rt::test]
async fn a_host_actor_drives_every_operation_by_message() {
    let mut env = TestEnv::new(Backend::S3sFs).await;
    env.add_mount("other", |_| {}).await;
    let exec = env.exec.actor();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watcher = Watcher { seen: seen.clone() }.start();
    exec.send(Subscribe {
        mount: "m".into(),
        after: 0,
        to: watcher.clone().recipient(),
        ended: None,
    })
    .await
    .unwrap();

    let put = exec
        .send(Put {
            mount: "m".into(),
            path: "a.txt".into(),
            body: Bytes::from_static(b"alpha"),
            opts: PutOptions::default(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(put.generation, 1);
    let copy = exec
        .send(Copy {
            from: Location::new("m", "a.txt"),
            to: Location::new("other", "b.txt"),
            opts: Default::default(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(copy.path, "b.txt");
    exec.send(Move {
        from: Location::new("m", "a.txt"),
        to: Location::new("m", "c.txt"),
        opts: Default::default(),
    })
    .await
    .unwrap()
    .unwrap();
    let stat = exec
        .send(StatPath {
            at: Location::new("m", "c.txt"),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stat.node.unwrap().meta.sha256.to_hex(),
        sha256_hex(b"alpha")
    );
    let page = exec
        .send(List {
            mount: "m".into(),
            dir: "".into(),
            opts: ListOptions::default(),
        })
        .await
        .unwrap()
        .unwrap();
    let paths: Vec<&str> = page.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["c.txt"]);
    exec.send(Delete {
        at: Location::new("m", "c.txt"),
        opts: Default::default(),
    })
    .await
    .unwrap()
    .unwrap();
    // Errors come back typed.
    let gone = exec
        .send(Delete {
            at: Location::new("m", "c.txt"),
            opts: Default::default(),
        })
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(gone, Error::NotFound { .. }), "{gone}");

    // Mount m's events, in commit order: the put, the move, the delete.
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = seen.lock().unwrap().clone();
        if events.len() >= 3 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ops: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.event.op.as_str().to_owned(), e.event.path.clone()))
        .collect();
    assert_eq!(
        ops,
        [
            ("put".to_owned(), "a.txt".to_owned()),
            ("move".to_owned(), "c.txt".to_owned()),
            ("delete".to_owned(), "c.txt".to_owned()),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));
    env.cleanup().await;
}
