//! Drop-in sink files merged after the main file, and what every sink may carry beside its
//! URL: a description and metadata, shown by `status` and filling MQTT topics.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

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
