//! Webhook management on the device: `edgehook sink add|update|remove` changing drop-in files
//! while the daemon runs and events flow, refusing what would be invalid, and leaving the main
//! file's sinks alone.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// A producer emitting `total` events one at a time, never past the gate the test opens.
struct Producer {
    acked: Arc<Mutex<Vec<String>>>,
    gate: Arc<(Mutex<usize>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(socket: &Path, total: usize) -> Producer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(0usize), Condvar::new()));
        let (a, g, socket) = (acked.clone(), gate.clone(), socket.to_owned());
        let thread = std::thread::spawn(move || {
            for n in 0..total {
                let (open, changed) = &*g;
                let mut limit = open.lock().unwrap();
                while n >= *limit {
                    limit = changed.wait(limit).unwrap();
                }
                drop(limit);
                let id = emit_one(&socket, "sensor.reading", json!({ "n": n }));
                a.lock().unwrap().push(id);
            }
        });
        Producer {
            acked,
            gate,
            thread: Some(thread),
        }
    }

    /// Lets the producer go on up to `n` events.
    fn open_to(&self, n: usize) {
        *self.gate.0.lock().unwrap() = n;
        self.gate.1.notify_all();
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    fn wait_for(&self, n: usize) {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} events acknowledged"),
            || self.count() >= n,
        );
    }

    fn finish(mut self) -> Vec<String> {
        self.open_to(usize::MAX);
        self.thread.take().unwrap().join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

#[test]
fn sinks_added_updated_and_removed_while_2000_events_flow_take_effect_at_once_and_lose_nothing() {
    let main = Receiver::ok();
    let (first, second, back) = (Receiver::ok(), Receiver::ok(), Receiver::ok());
    let setup = Setup::new(&http_sink("main", &main.url(), SECRET, ""));
    let daemon = setup.start();
    let dropins = setup.dir.path().join("sinks.d");
    let producer = Producer::start(&setup.socket(), 2000);
    producer.open_to(600);

    producer.wait_for(300);
    let add_before = producer.count();
    let out = sink_cmd(
        &setup,
        &[
            "add",
            "live",
            "--url",
            &first.url(),
            "--events",
            "sensor.*",
            "--scheme",
            "none",
            "--description",
            "Data pipeline",
            "--metadata",
            "site=berlin",
        ],
    );
    let add_after = producer.count();
    let said = succeeded(&out);
    assert!(said.contains("Added sink live in"), "{said}");
    assert!(
        said.contains("The running daemon reloaded its config: 2 sink(s) running."),
        "{said}"
    );
    producer.open_to(1100);

    // Invalid additions change nothing, on disk or in the daemon.
    let files = snapshot(&dropins);
    let reloads = daemon.log().matches("Reloaded").count();
    refused_with_78(
        &sink_cmd(&setup, &["add", "bad", "--url", "ftp://nowhere"]),
        "sink `bad`: the url must be http(s)://host/…, mqtt(s)://host:port or wss://host/path",
    );
    refused_with_78(
        &sink_cmd(&setup, &["add", "main", "--url", &first.url()]),
        "sink `main` is defined already, in",
    );
    refused_with_78(
        &sink_cmd(&setup, &["add", "live", "--url", &second.url()]),
        "sink `live` is defined already, in",
    );
    refused_with_78(
        &sink_cmd(&setup, &["add", "../escape", "--url", &first.url()]),
        "cannot name a sink",
    );
    assert_eq!(snapshot(&dropins), files, "sinks.d is unchanged");
    assert_eq!(daemon.log().matches("Reloaded").count(), reloads);

    producer.wait_for(800);
    let update_before = producer.count();
    let out = sink_cmd(
        &setup,
        &[
            "update",
            "live",
            "--url",
            &second.url(),
            "--header",
            "X-Api-Key: k-2",
            "--metadata",
            "line=4",
        ],
    );
    let update_after = producer.count();
    succeeded(&out);
    let live = setup.sink_status("live");
    assert_eq!(live["description"], "Data pipeline");
    assert_eq!(live["metadata"], json!({"line": "4", "site": "berlin"}));
    producer.open_to(1600);

    producer.wait_for(1300);
    let remove_before = producer.count();
    let said = succeeded(&sink_cmd(&setup, &["remove", "live"]));
    let remove_after = producer.count();
    assert!(said.contains("Removed sink live"), "{said}");
    assert!(!dropins.join("live.toml").exists());
    let acked = producer.finish();
    eprintln!(
        "acknowledged at add {add_before}..{add_after}, update {update_before}..{update_after}, remove {remove_before}..{remove_after}"
    );
    assert!(
        remove_after < 2000,
        "every command ran while events flowed (the last at event {remove_after})"
    );

    // The main file's sink got everything, once, in order.
    wait_until(Duration::from_secs(60), "2000 events at main", || {
        main.delivered_count() >= 2000
    });
    assert_eq!(main.delivered_ids(), acked);

    // The removed sink's queue is kept, orphaned; a sink of that name drains it.
    assert_eq!(setup.sink_status("live")["state"], "orphaned");
    let orphaned = setup.sink_status("live")["pending"].as_u64().unwrap() as usize;
    let out = sink_cmd(
        &setup,
        &[
            "add",
            "live",
            "--url",
            &back.url(),
            "--events",
            "sensor.*",
            "--scheme",
            "none",
        ],
    );
    succeeded(&out);
    wait_until(
        Duration::from_secs(30),
        "the orphaned queue to drain",
        || back.delivered_count() >= orphaned && setup.sink_status("live")["pending"] == 0,
    );

    let position: HashMap<&String, usize> =
        acked.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let got: Vec<String> = [&first, &second, &back]
        .iter()
        .flat_map(|r| r.delivered_ids())
        .collect();
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no event reached the sink twice");
    // The producer has one event in flight: the one it counts just after a command returned
    // may have been stored either side of the reload, so each bound takes one event of slack.
    for id in &got {
        let at = position[id];
        assert!(
            (add_before..=remove_after).contains(&at),
            "event {at} reached the sink outside its lifetime ({add_before}..{remove_after})"
        );
    }
    for id in &acked[add_after + 1..remove_before] {
        assert!(
            unique.contains(id),
            "event {} never reached the sink",
            position[id]
        );
    }
    // After the update: the new URL, with its header; nothing more at the old one.
    assert!(
        first
            .delivered_ids()
            .iter()
            .all(|id| position[id] <= update_after)
    );
    assert!(
        second
            .delivered_ids()
            .iter()
            .all(|id| position[id] >= update_before)
    );
    for req in second.delivered() {
        assert_eq!(req.header("X-Api-Key"), Some("k-2"));
    }
    assert_eq!(back.delivered_count(), orphaned);
}

#[test]
fn update_and_remove_leave_the_main_files_sinks_alone_and_show_hides_header_values() {
    let r = Receiver::ok();
    let setup = Setup::new(&http_sink("main", &r.url(), SECRET, ""));
    refused_with_78(
        &sink_cmd(&setup, &["add", "hook", "--url", "https://"]),
        "sink `hook`: the url must be",
    );
    assert!(
        !setup.dir.path().join("sinks.d").exists(),
        "a refused addition creates nothing"
    );
    refused_with_78(
        &sink_cmd(&setup, &["update", "main", "--url", &r.url()]),
        "is defined in the main config file",
    );
    refused_with_78(
        &sink_cmd(&setup, &["remove", "main"]),
        "is defined in the main config file",
    );
    assert_eq!(sink_cmd(&setup, &["show", "nope"]).status.code(), Some(64));
    assert_eq!(
        sink_cmd(&setup, &["remove", "nope"]).status.code(),
        Some(64)
    );
    let said = succeeded(&sink_cmd(
        &setup,
        &[
            "add",
            "hook",
            "--url",
            &r.url(),
            "--header",
            "Authorization: Bearer t-secret",
            "--format",
            "data",
        ],
    ));
    assert!(
        said.contains("The daemon is not running: the change applies when it starts."),
        "{said}"
    );
    let shown = succeeded(&sink_cmd(&setup, &["show", "hook"]));
    assert!(shown.contains("Authorization: (hidden)"), "{shown}");
    let doc: Value =
        serde_json::from_str(&succeeded(&sink_cmd(&setup, &["show", "hook", "--json"]))).unwrap();
    assert_eq!(doc["headers"], json!({"Authorization": "(hidden)"}));
    assert_eq!(doc["format"], "data");
    assert_eq!(doc["signing"]["secret"], "generated");
    for text in [shown, doc.to_string()] {
        assert!(
            !text.contains("t-secret") && !text.contains(SECRET),
            "{text}"
        );
    }
    assert_eq!(
        sink_cmd(&setup, &["update", "hook", "--header", "no colon"])
            .status
            .code(),
        Some(64)
    );
    succeeded(&sink_cmd(
        &setup,
        &[
            "update",
            "hook",
            "--remove-header",
            "Authorization",
            "--disable",
        ],
    ));
    let doc: Value =
        serde_json::from_str(&succeeded(&sink_cmd(&setup, &["show", "hook", "--json"]))).unwrap();
    assert_eq!(doc["headers"], json!({}));
    assert_eq!(doc["enabled"], false);
}

#[test]
fn a_change_the_running_daemon_refuses_is_undone() {
    let r = Receiver::ok();
    let setup = Setup::new(&http_sink("main", &r.url(), SECRET, ""));
    let daemon = setup.start();
    // The daemon cannot keep a generated secret where a file stands in for `secrets/`; the
    // command's own check cannot know that.
    std::fs::write(setup.dir.path().join("secrets"), "in the way").unwrap();
    let out = sink_cmd(&setup, &["add", "signed", "--url", &r.url()]);
    refused_with_78(
        &out,
        "the running daemon refused the new config, so the change was undone",
    );
    refused_with_78(&out, "cannot keep the generated secret of sink signed");
    assert!(!setup.dir.path().join("sinks.d/signed.toml").exists());
    assert!(
        daemon
            .log()
            .contains("Reload refused, the running config stays")
    );
    let id = emit_one(&setup.socket(), "sensor.reading", json!(1));
    wait_until(
        Duration::from_secs(10),
        "delivery with the running config",
        || r.delivered_ids() == [id.clone()],
    );
    let names: Vec<String> = setup.status()["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["main"]);
}
