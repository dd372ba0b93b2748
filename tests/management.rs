//! Webhook management on the device: drop-in sink files merged after the main file, and
//! `edgehook sink add|update|remove` changing them while the daemon runs and events flow.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
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

/// Every file of `dir` with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .map(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&p).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused_with_78(out: &std::process::Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains(reason), "{reason:?} not in: {stderr}");
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
        "sink `bad`: the url must be http(s)://host/… or mqtt(s)://host:port",
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
    for id in &got {
        let at = position[id];
        assert!(
            (add_before..remove_after).contains(&at),
            "event {at} reached the sink outside its lifetime ({add_before}..{remove_after})"
        );
    }
    for id in &acked[add_after..remove_before] {
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
            .all(|id| position[id] < update_after)
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
fn drop_ins_merge_after_the_main_file_in_name_order_and_a_name_defined_twice_names_both_files() {
    let (main, a, b) = (Receiver::ok(), Receiver::ok(), Receiver::ok());
    let setup = Setup::new(&http_sink("main", &main.url(), SECRET, ""));
    let dropins = setup.dir.path().join("sinks.d");
    std::fs::create_dir(&dropins).unwrap();
    let sink = |name: &str, url: &str, extra: &str| {
        format!(
            "[[sink]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [\"sensor.*\"]\n{extra}[sink.signing]\nscheme = \"none\"\n"
        )
    };
    std::fs::write(dropins.join("20-b.toml"), sink("b", &b.url(), "")).unwrap();
    std::fs::write(
        dropins.join("10-a.toml"),
        sink(
            "a",
            &a.url(),
            "description = \"Plant floor\"\nmetadata = { site = \"berlin\" }\n",
        ),
    )
    .unwrap();
    std::fs::write(dropins.join("notes.txt"), "not a drop-in").unwrap();
    std::fs::write(dropins.join(".hidden.toml"), "not = \"read\"").unwrap();

    let names = |doc: &Value| -> Vec<String> {
        doc["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    succeeded(&run(&setup.config, &["check-config"]));
    let list: Value =
        serde_json::from_str(&succeeded(&sink_cmd(&setup, &["list", "--json"]))).unwrap();
    assert_eq!(names(&list), ["main", "a", "b"]);
    assert_eq!(
        list["sinks"][1]["file"],
        dropins.join("10-a.toml").display().to_string()
    );
    assert_eq!(names(&setup.status()), ["main", "a", "b"]);
    let a_status = setup.sink_status("a");
    assert_eq!(a_status["description"], "Plant floor");
    assert_eq!(a_status["metadata"], json!({"site": "berlin"}));
    let table = succeeded(&run(&setup.config, &["status"]));
    assert!(
        table.contains("Plant floor") && table.contains("site=berlin"),
        "{table}"
    );

    let daemon = setup.start();
    let id = emit_one(&setup.socket(), "sensor.reading", json!(1));
    wait_until(Duration::from_secs(10), "one delivery each", || {
        [&main, &a, &b]
            .iter()
            .all(|r| r.delivered_ids() == [id.clone()])
    });

    // `a` again, in a later file: refused, naming both files; the running daemon keeps going.
    std::fs::write(dropins.join("30-again.toml"), sink("a", &b.url(), "")).unwrap();
    let out = run(&setup.config, &["check-config"]);
    let expected = format!(
        "{}:2:8: sink `a` is defined twice; first at {}:2:8",
        dropins.join("30-again.toml").display(),
        dropins.join("10-a.toml").display()
    );
    refused_with_78(&out, &expected);
    daemon.hup();
    wait_until(Duration::from_secs(10), "the refused reload", || {
        daemon
            .log()
            .contains("Reload refused, the running config stays")
    });
    assert!(daemon.log().contains(&expected), "{}", daemon.log());
    let before = snapshot(&dropins);
    refused_with_78(
        &sink_cmd(&setup, &["add", "c", "--url", &a.url()]),
        &expected,
    );
    assert_eq!(snapshot(&dropins), before);
    let id2 = emit_one(&setup.socket(), "sensor.reading", json!(2));
    wait_until(
        Duration::from_secs(10),
        "delivery with the running config",
        || a.delivered_ids().contains(&id2) && b.delivered_ids().contains(&id2),
    );
    assert_eq!(b.delivered_count(), 2, "the duplicate was never started");
    drop(daemon);
    let out = run(&setup.config, &["run"]);
    refused_with_78(&out, &expected);
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
fn an_mqtt_sink_added_with_metadata_publishes_on_the_topic_its_metadata_fills() {
    if !common::broker::mosquitto_available() {
        return;
    }
    let setup = Setup::new("[device]\nid = \"pi-17\"\n");
    let broker = common::broker::Broker::start(setup.dir.path(), "allow_anonymous true");
    let sub = common::broker::Subscriber::connect(broker.port, "plants/#");
    let daemon = setup.start();
    let said = succeeded(&sink_cmd(
        &setup,
        &[
            "add",
            "plant",
            "--url",
            &broker.url(),
            "--events",
            "sensor.*",
            "--topic",
            "plants/{metadata.site}/{metadata.line}/{device_id}/{type}",
            "--metadata",
            "site=berlin",
            "--metadata",
            "line=4",
            "--scheme",
            "mender",
        ],
    ));
    assert!(said.contains("1 sink(s) running"), "{said}");
    let topic = "plants/berlin/4/pi-17/sensor.reading";
    let on_topic = || -> Vec<String> {
        sub.all()
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.event_id())
            .collect()
    };
    let id = emit_one(&setup.socket(), "sensor.reading", json!({"c": 20}));
    wait_until(Duration::from_secs(20), "the message", || {
        on_topic() == [id.clone()]
    });
    // A template naming a key the sink's metadata lacks is refused, and nothing changes.
    refused_with_78(
        &sink_cmd(
            &setup,
            &[
                "update",
                "plant",
                "--topic",
                "plants/{metadata.room}/{type}",
            ],
        ),
        "`{metadata.room}` in `plants/{metadata.room}/{type}` names no key of this sink's `metadata`",
    );
    let id2 = emit_one(&setup.socket(), "sensor.reading", json!({"c": 21}));
    wait_until(Duration::from_secs(20), "the second message", || {
        on_topic() == [id.clone(), id2.clone()]
    });
    assert!(
        sub.all().iter().all(|m| !m.topic.contains("room")),
        "nothing went elsewhere"
    );
    drop(daemon);
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
