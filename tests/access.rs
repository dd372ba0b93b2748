//! Who may do what on the socket, and its limits on clients (SPEC §7): an emitter running as an
//! unprivileged user the test creates may emit and ping, and is answered `forbidden` for every
//! other op (its CLI admin commands exit 77); a member of `ingest.admin_group` may ask them; no
//! uid holds more than half of `max_connections`, and one over the total is answered `busy`;
//! a connection with no request for `idle_timeout` is closed; and a daemon started by
//! `systemd-socket-activate` as an unprivileged user serves a socket whose group is neither
//! its own nor `edgehook`, and leaves it in place when it stops.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The ops only an administrator may ask, one request line each.
const ADMIN_OPS: [&str; 7] = [
    r#"{"op":"set-status","status":"maintenance"}"#,
    r#"{"op":"decommission"}"#,
    r#"{"op":"provision"}"#,
    r#"{"op":"inventory-refresh"}"#,
    r#"{"op":"redeliver","all":true}"#,
    r#"{"op":"resume","sink":"cloud"}"#,
    r#"{"op":"reload"}"#,
];

/// Whether users can be made here: the test needs root; in CI it must run.
fn can_make_users() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "creating users needs root"
    );
    eprintln!("cannot run this test here: creating users needs root");
    false
}

/// A name unique to this test process and `tag`.
fn unique(tag: &str) -> String {
    format!("ehk{}-{tag}", std::process::id())
}

/// Runs a user or group tool, trying again while another process holds the password files'
/// lock (tests in parallel, in this binary and others, create users too).
fn shadow_tool(args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A group made for the test, removed when dropped.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new(tag: &str) -> TestGroup {
        let name = unique(tag);
        shadow_tool(&["groupadd", &name]);
        let gid = nix::unistd::Group::from_name(&name)
            .unwrap()
            .expect("the group exists")
            .gid
            .as_raw();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A user made for the test (with a group of its own, no home, no shell), in `groups` too;
/// removed when dropped.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new(tag: &str, groups: &[&TestGroup]) -> TestUser {
        let name = unique(tag);
        let list: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let list = list.join(",");
        let mut args = vec![
            "useradd",
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
        ];
        if !list.is_empty() {
            args.extend(["--groups", &list]);
        }
        args.push(&name);
        shadow_tool(&args);
        let user = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the user exists");
        TestUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            name,
        }
    }

    /// `edgehook --config CONFIG ARGS…` run as this user (its own groups, from the group
    /// database), within `COMMAND_LIMIT`.
    fn run(&self, config: &Path, args: &[&str]) -> Output {
        let daemon = edgehook();
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(daemon.get_program())
            .args(daemon.get_args())
            .arg("--config")
            .arg(config)
            .args(args);
        output_within(&mut cmd, COMMAND_LIMIT)
    }

    /// A connection to `socket` with this user's uid and primary group, and `groups` as its
    /// supplementary groups.
    fn connect(&self, socket: &Path, groups: &[u32]) -> std::io::Result<UnixStream> {
        connect_as(self.uid, self.gid, groups, socket)
    }
}

/// A connection to `socket` made with these credentials, as a process holding them would
/// make it: the kernel checks the socket's permissions and records `SO_PEERCRED` with the
/// connecting thread's credentials. A helper thread takes them on (the raw system calls change
/// one thread, where libc's would change the whole test process) and ends once connected.
fn connect_as(uid: u32, gid: u32, groups: &[u32], socket: &Path) -> std::io::Result<UnixStream> {
    let (groups, socket) = (groups.to_vec(), socket.to_owned());
    std::thread::spawn(move || {
        use nix::libc::{SYS_setgroups, SYS_setresgid, SYS_setresuid, syscall};
        // SAFETY: the calls change only this thread's credentials; `groups` outlives them.
        let failed = unsafe {
            syscall(SYS_setgroups, groups.len(), groups.as_ptr()) != 0
                || syscall(SYS_setresgid, gid, gid, gid) != 0
                || syscall(SYS_setresuid, uid, uid, uid) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error());
        }
        let s = UnixStream::connect(&socket)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(s)
    })
    .join()
    .expect("the connecting thread")
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// Sends `line` and reads one reply line as JSON.
fn ask(s: &mut UnixStream, line: &str) -> serde_json::Value {
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&*s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

/// A daemon whose socket (group `socket_group`) others can reach: the test's directory is
/// entered by all, the socket is the group's. `ingest` goes into `[ingest]`.
fn daemon(socket_group: &TestGroup, ingest: &str) -> (Setup, Daemon) {
    let setup = Setup::new("");
    let ingest = format!("group = \"{}\"\n{ingest}", socket_group.name);
    setup.write_config_sections("", &ingest, "");
    std::fs::set_permissions(setup.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let daemon = setup.start();
    (setup, daemon)
}

#[test]
fn an_emitter_may_emit_and_ping_but_is_forbidden_every_admin_op_and_the_cli_exits_77() {
    if !can_make_users() {
        return;
    }
    let apps = TestGroup::new("apps");
    let emitter = TestUser::new("emitter", &[&apps]);
    let (setup, _daemon) = daemon(&apps, "");

    let mut s = emitter.connect(&setup.socket(), &[apps.gid]).unwrap();
    assert_eq!(ask(&mut s, r#"{"op":"ping"}"#)["ok"], true);
    let stored = ask(&mut s, r#"{"type":"app.reading","data":1}"#);
    assert_eq!(stored["ok"], true, "{stored}");
    for op in ADMIN_OPS {
        let v = ask(&mut s, op);
        assert_eq!(v["ok"], false, "{op}: {v}");
        assert_eq!(v["code"], "forbidden", "{op}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("uid {}", emitter.uid)) && error.contains("admin_group"),
            "{op}: {v}"
        );
    }
    // Refused, the connection still serves: a bad request never closes it.
    assert_eq!(
        ask(&mut s, r#"{"type":"app.reading","data":2}"#)["ok"],
        true
    );

    let out = emitter.run(&setup.config, &["emit", "app.reading", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commands: [&[&str]; 6] = [
        &["set-status", "maintenance"],
        &["decommission"],
        &["provision"],
        &["inventory", "--refresh"],
        &["redeliver", "--all"],
        &["resume", "cloud"],
    ];
    for args in commands {
        let out = emitter.run(&setup.config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains("forbidden"), "{args:?}: {stderr}");
    }
    // Nothing an administrator decides changed: no status was set, and events are taken
    // (`decommission` would refuse them).
    assert!(setup.status()["device"]["status"].is_null());
    let out = emitter.run(&setup.config, &["emit", "app.reading", "4"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_member_of_the_admin_group_may_ask_the_admin_ops() {
    if !can_make_users() {
        return;
    }
    let apps = TestGroup::new("apps2");
    let admins = TestGroup::new("admins");
    let operator = TestUser::new("operator", &[&apps, &admins]);
    let other = TestUser::new("other", &[&apps]);
    let (setup, daemon) = daemon(&apps, &format!("admin_group = \"{}\"", admins.name));

    let out = operator.run(&setup.config, &["set-status", "maintenance"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = operator.run(&setup.config, &["redeliver", "--all"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Listed in the group database, the operator is an administrator even from a process
    // that dropped its supplementary groups (the socket's group aside).
    let mut s = operator.connect(&setup.socket(), &[apps.gid]).unwrap();
    let v = ask(&mut s, r#"{"op":"resume","sink":"cloud"}"#);
    assert_eq!(v["code"], "invalid", "no sink is called cloud: {v}");
    // A process whose primary group is the admin group is one too.
    let mut s = connect_as(other.uid, admins.gid, &[apps.gid], &setup.socket()).unwrap();
    assert_eq!(
        ask(&mut s, r#"{"op":"set-status","status":"ready"}"#)["ok"],
        true
    );
    // Anyone else is not, until added to the group and the daemon reloaded.
    let mut s = other.connect(&setup.socket(), &[apps.gid]).unwrap();
    assert_eq!(ask(&mut s, r#"{"op":"provision"}"#)["code"], "forbidden");
    shadow_tool(&["gpasswd", "--add", &other.name, &admins.name]);
    let out = other.run(&setup.config, &["set-status", "promoted"]);
    assert_eq!(out.status.code(), Some(77), "before the reload");
    daemon.hup();
    wait_until(Duration::from_secs(30), "the new member let in", || {
        other
            .run(&setup.config, &["set-status", "promoted"])
            .status
            .success()
    });
}

/// Whether `s` is served: it answers a ping (a refused connection got a `busy` line).
fn served(s: &mut UnixStream) -> Result<(), serde_json::Value> {
    let v = ask(s, r#"{"op":"ping"}"#);
    if v["ok"] == true { Ok(()) } else { Err(v) }
}

#[test]
fn no_uid_holds_more_than_half_the_connections_and_one_over_the_total_is_busy() {
    if !can_make_users() {
        return;
    }
    let apps = TestGroup::new("apps3");
    let greedy = TestUser::new("greedy", &[&apps]);
    let late = TestUser::new("late", &[&apps]);
    let (setup, _daemon) = daemon(&apps, "max_connections = 4");
    let connect = |u: &TestUser| u.connect(&setup.socket(), &[apps.gid]).unwrap();

    // Idle connections hold their slots.
    let mut held: Vec<UnixStream> = (0..2).map(|_| connect(&greedy)).collect();
    for s in &mut held {
        served(s).unwrap();
    }
    let v = served(&mut connect(&greedy)).unwrap_err();
    assert_eq!(v["code"], "busy", "{v}");
    let error = v["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("from uid {} (at most 2 of 4)", greedy.uid)),
        "{v}"
    );
    let mut root: Vec<UnixStream> = (0..2).map(|_| setup.client_stream()).collect();
    for s in &mut root {
        served(s).unwrap();
    }
    let mut extra = connect(&late);
    let v = served(&mut extra).unwrap_err();
    assert_eq!(v["code"], "busy", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("too many connections (at most 4)"),
        "{v}"
    );
    // The refused connection is closed after its line.
    let mut rest = String::new();
    extra.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    // A slot given back is taken again.
    drop(held.pop());
    wait_until(Duration::from_secs(20), "a slot for the late user", || {
        served(&mut connect(&late)).is_ok()
    });
}

trait ClientStream {
    fn client_stream(&self) -> UnixStream;
}

impl ClientStream for Setup {
    /// A raw connection of the test's own uid (root).
    fn client_stream(&self) -> UnixStream {
        let s = UnixStream::connect(self.socket()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }
}

#[test]
fn a_connection_with_no_request_for_idle_timeout_is_closed() {
    let setup = Setup::new("");
    setup.write_config_sections("", "idle_timeout = \"1s\"", "");
    let _daemon = setup.start();
    let mut quiet = setup.client_stream();
    let mut busy = setup.client_stream();
    served(&mut quiet).unwrap();
    let since = Instant::now();
    // One asking every 300 ms stays open past the timeout.
    while since.elapsed() < Duration::from_millis(2500) {
        served(&mut busy).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut rest = Vec::new();
    let n = quiet
        .read_to_end(&mut rest)
        .expect("end of file, not an error");
    assert_eq!(n, 0, "closed without a line: {rest:?}");
    served(&mut busy).unwrap();
}

#[test]
fn a_client_that_reads_no_reply_for_idle_timeout_is_closed() {
    let setup = Setup::new("");
    setup.write_config_sections("", "idle_timeout = \"1s\"", "");
    let _daemon = setup.start();
    let mut s = setup.client_stream();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    // Requests whose replies are large (every id is `missing`), more of them than the socket
    // holds: the daemon's writer waits on a client that reads nothing, answers pending.
    let ids: Vec<String> = (0..1000).map(|n| format!("{n:0>40}")).collect();
    let request = format!("{}\n", json!({"op": "redeliver", "ids": ids}));
    let sent = 40;
    for _ in 0..sent {
        s.write_all(request.as_bytes()).unwrap();
    }
    // Then nothing more: no request, no reply read. The daemon's end closing shows as a
    // hang-up on ours.
    let since = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the connection to be closed",
        || hung_up(&s),
    );
    let took = since.elapsed();
    eprintln!("{sent} replies of 45 KB unread; closed {took:?} after the last request");
    assert!(took < Duration::from_secs(20), "closed only after {took:?}");
    assert!(edgehook::client::daemon_running(&setup.socket()));
    eprintln!(
        "{}",
        std::fs::read_to_string(setup.dir.path().join("daemon.log")).unwrap()
    );
}

/// Whether the other end of `s` has closed (`POLLHUP`), whatever is left unread.
fn hung_up(s: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = nix::libc::pollfd {
        fd: s.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { nix::libc::poll(&mut fd, 1, 0) };
    n == 1 && fd.revents & nix::libc::POLLHUP != 0
}

#[test]
fn out_of_range_ingest_limits_are_refused_with_their_line_and_column() {
    let setup = Setup::new("");
    for (key, message) in [
        (
            "idle_timeout = \"0s\"",
            "`idle_timeout` must be between 1s and 1d",
        ),
        (
            "idle_timeout = \"2d\"",
            "`idle_timeout` must be between 1s and 1d",
        ),
        (
            "max_connections = 1",
            "`max_connections` must be between 2 and 65536",
        ),
        ("admin_group = \"\"", "`admin_group` must name a group"),
    ] {
        setup.write_config_sections("", key, "");
        let text = std::fs::read_to_string(&setup.config).unwrap();
        let line = text.lines().position(|l| l == key).unwrap() + 1;
        let col = key.find('=').unwrap() + 3;
        let out = run(&setup.config, &["check-config"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{key}: {stderr}");
        let at = format!("{}:{line}:{col}: {message}", setup.config.display());
        assert!(stderr.contains(&at), "{key}: wanted {at}, got {stderr}");
    }
}

/// A process run for the test, killed if the test ends first.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_socket_activated_unprivileged_daemon_serves_a_group_other_than_its_own() {
    if !can_make_users() {
        return;
    }
    let apps = TestGroup::new("sockgrp");
    let service = TestUser::new("service", &[]);
    let emitter = TestUser::new("actemit", &[&apps]);
    let setup = Setup::new("");
    // The daemon's `group` would be `edgehook`; systemd's socket decides instead.
    setup.write_config_sections("", "", "");
    let dir = setup.dir.path();
    std::os::unix::fs::chown(dir, Some(service.uid), Some(service.gid)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = setup.socket();

    // The service runs as its own user, in neither `apps` nor `edgehook`, with no capability.
    let daemon = edgehook();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("--listen")
        .arg(&socket)
        .arg("--fdname=ingest")
        .arg("setpriv")
        .arg(format!("--reuid={}", service.uid))
        .arg(format!("--regid={}", service.gid))
        .arg("--clear-groups")
        .arg(daemon.get_program())
        .args(daemon.get_args())
        .arg("--config")
        .arg(&setup.config)
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    let mut running = Running(cmd.spawn().unwrap());
    let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    // systemd-socket-activate starts the daemon at the first connection, which the daemon
    // then serves: the client waits in the socket's queue meanwhile.
    wait_until(Duration::from_secs(10), "the socket", || socket.exists());
    // What the socket unit's SocketGroup= and SocketMode= do (systemd-socket-activate makes
    // it 0644, root's): done before the first connection starts the daemon.
    std::os::unix::fs::chown(&socket, None, Some(apps.gid)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660)).unwrap();
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.gid(), apps.gid);
    assert_eq!(meta.mode() & 0o777, 0o660, "mode {:o}", meta.mode());
    let mut s = emitter.connect(&socket, &[apps.gid]).unwrap();
    let v = ask(&mut s, r#"{"type":"app.reading","data":1}"#);
    assert_eq!(v["ok"], true, "{v}: {}", log());
    let out = emitter.run(&setup.config, &["emit", "app.reading", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log().contains("passed by systemd"), "{}", log());
    // The daemon runs as the service user; the socket is still root's, in group `apps`.
    let pid = running.0.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&service.uid.to_string())),
        "{status}"
    );
    drop(s);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(st) = running.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit on SIGTERM: {}", log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exited.code(), Some(0), "{}", log());
    // The socket is systemd's: it stays for the next start.
    assert!(
        socket.exists(),
        "the daemon removed the socket it was passed"
    );
}
