//! The ingest and control socket: newline-delimited JSON, one reply per request, in order.
//! Each connection reads requests as fast as the client sends them and queues their answers,
//! so a client that pipelines many events gets them committed together; a bounded queue keeps
//! a client that never reads its replies from growing memory. A line left unfinished is timed
//! out, a connection with no request for `idle_timeout` (or whose client reads none of its
//! replies for that long) is closed, and a connection over `max_connections`, or over its
//! uid's half of them, gets one `busy` line and is closed. The peer's credentials
//! (`SO_PEERCRED`) decide who may ask the ops that change the device or its deliveries
//! (`access.rs`).

mod access;
mod listen;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, FramedRead};

pub use access::{Access, Peer, Rules};
pub use listen::{Listening, listen};

use super::control::{self, Answer, Op};
use crate::event;
use crate::outbox::{AppendError, Appended, Outbox};
use crate::protocol::{Control, Done, Emit, Reply};

/// Replies queued per connection before the connection stops reading: how many requests a
/// pipelining client can usefully keep in flight.
pub const PIPELINE: usize = 256;

/// How long the start of a request line may wait for its newline. A client that stalls
/// mid-line holds up to `max_event_bytes` of buffer and a connection slot; between lines a
/// connection holds no buffer, and `idle_timeout` bounds how long it keeps its slot.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused connection gets to take its error line.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long accepting pauses after a failure (no file descriptors left, …), so a failure
/// that persists is not retried in a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(500);

/// What the socket needs to serve requests.
pub struct Ingest {
    /// Where events go.
    pub outbox: Outbox,
    /// The longest line accepted.
    pub max_line: usize,
    /// Connections served at once; no uid gets more than half of them.
    pub max_connections: usize,
    /// How long a connection may go without a request before it is closed.
    pub idle_timeout: Duration,
    /// Who may ask the ops that change the device or its deliveries.
    pub access: Arc<Rules>,
    /// Where control requests go.
    pub control: mpsc::Sender<control::Request>,
    /// Slots for lines over [`LARGE_LINE`]: a connection reads the rest of such a line only
    /// while it holds one, so the bytes all connections hold bound themselves (SPEC §13).
    large_lines: Arc<Semaphore>,
}

/// What connections may hold of lines over [`LARGE_LINE`] at once, all together. A line of
/// `max_event_bytes` costs about twice that while it is read (the read buffer grows by
/// doubling) and once more as the event it becomes, until the outbox takes it.
const LARGE_LINES_BUDGET: usize = 8 * 1024 * 1024;

/// How many connections may read a line over [`LARGE_LINE`] at once, for lines of at most
/// `max_line` bytes: 4 at 1 MiB, 16 at 256 KiB.
fn large_line_slots(max_line: usize) -> usize {
    (LARGE_LINES_BUDGET / max_line.saturating_mul(2).max(1)).clamp(2, 64)
}

impl Ingest {
    /// The socket's settings from `[ingest]`, with the access rules the daemon keeps current.
    pub fn new(
        outbox: Outbox,
        config: &crate::config::Ingest,
        access: Arc<Rules>,
        control: mpsc::Sender<control::Request>,
    ) -> Ingest {
        Ingest {
            outbox,
            max_line: config.max_event_bytes as usize,
            max_connections: config.max_connections as usize,
            idle_timeout: config.idle_timeout,
            access,
            control,
            large_lines: Arc::new(Semaphore::new(large_line_slots(
                config.max_event_bytes as usize,
            ))),
        }
    }

    /// Why one more connection, of `uid` which holds `held`, is refused while `open` are
    /// served; `None` when it is not.
    fn over_limit(&self, open: usize, uid: u32, held: usize) -> Option<String> {
        let share = (self.max_connections / 2).max(1);
        let max = self.max_connections;
        let why = if open >= max {
            format!("too many connections (at most {max})")
        } else if held >= share {
            format!("too many connections from uid {uid} (at most {share} of {max})")
        } else {
            return None;
        };
        Some(format!("{why}; nothing was done; try again later"))
    }
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another daemon answers on the socket.
    #[error("another edgehook is already listening on {0}")]
    InUse(std::path::PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Creates the socket: a stale file is replaced, mode 0660, group `group` where it exists.
pub fn bind(path: &Path, group: &str) -> Result<std::os::unix::net::UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => {
            if let Err(e) = std::os::unix::fs::chown(path, None, Some(g.gid.as_raw())) {
                log::warn!(
                    "Cannot give the socket {} to group {group}: {e}",
                    path.display()
                );
            }
        }
        _ => log::warn!(
            "Group {group} does not exist; the socket {} keeps the daemon's own group",
            path.display()
        ),
    }
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

/// Serves the socket until `shutdown` turns true, then lets every connection answer what it
/// has already read.
pub async fn serve(
    listener: UnixListener,
    ingest: Arc<Ingest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    // The uid of each connection served, and how many each uid holds.
    let mut served: HashMap<tokio::task::Id, u32> = HashMap::new();
    let mut per_uid: HashMap<u32, usize> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(done) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(uid) = served.remove(&id) {
                    release(&mut per_uid, uid);
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = Peer::of(&stream, &ingest.access.get());
                    let held = per_uid.get(&peer.uid).copied().unwrap_or(0);
                    if let Some(error) = ingest.over_limit(served.len(), peer.uid, held) {
                        connections.spawn(refuse(stream, error));
                        continue;
                    }
                    let ingest = ingest.clone();
                    let shutdown = shutdown.clone();
                    let uid = peer.uid;
                    let task = connections.spawn(connection(stream, peer, ingest, shutdown));
                    served.insert(task.id(), uid);
                    *per_uid.entry(uid).or_default() += 1;
                }
                Err(e) => {
                    let pause = ACCEPT_PAUSE.as_millis();
                    log::warn!("Cannot accept a connection on the ingest socket: {e}; pausing {pause} ms");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Gives back a connection of `uid`.
fn release(per_uid: &mut HashMap<u32, usize>, uid: u32) {
    if let Some(n) = per_uid.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            per_uid.remove(&uid);
        }
    }
}

/// Answers a connection over `ingest.max_connections`, or over its uid's share, with one
/// `busy` line and closes it: nothing was done, and trying again later is right.
async fn refuse(stream: UnixStream, error: String) {
    let line = reply_err("busy", &error);
    let (mut read, mut write) = stream.into_split();
    let answer = async {
        write.write_all(&line).await?;
        write.shutdown().await?;
        // Closing with the client's request unread would make its read fail with "connection
        // reset" before it sees the line; so its request is read, and thrown away.
        let mut buf = [0u8; 4096];
        while read.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSE_TIMEOUT, answer).await;
}

enum Pending {
    Ready(Vec<u8>),
    Append(oneshot::Receiver<Result<Appended, AppendError>>),
    Control(oneshot::Receiver<Answer>),
}

async fn connection(
    stream: UnixStream,
    peer: Peer,
    ingest: Arc<Ingest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (read, write) = stream.into_split();
    let mut lines = FramedRead::new(read, LineCodec::new(ingest.max_line));
    let (tx, rx) = mpsc::channel::<Pending>(PIPELINE);
    let progress = Arc::new(Progress::default());
    let writer = tokio::spawn(write_replies(write, rx, progress.clone()));
    let mut seen = 0;
    // When the line being read must be finished; none between lines.
    let mut line_due: Option<tokio::time::Instant> = None;
    // Between lines: one timer, moved on only when it fires, so a busy connection does not
    // set a timer per request.
    let mut last_request = tokio::time::Instant::now();
    let idle = tokio::time::sleep(ingest.idle_timeout);
    tokio::pin!(idle);
    // The slot a line over `LARGE_LINE` is read in, until that line is handled.
    let mut large: Option<OwnedSemaphorePermit> = None;
    loop {
        let stalled = async {
            match line_due {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            _ = shutdown.changed() => break,
            _ = stalled => {
                let error = format!(
                    "a request line was not finished within {} s; closing the connection",
                    LINE_TIMEOUT.as_secs()
                );
                let _ = tx.send(Pending::Ready(reply_err("invalid", &error))).await;
                break;
            }
            () = &mut idle, if line_due.is_none() => {
                let now = tokio::time::Instant::now();
                let due = last_request + ingest.idle_timeout;
                if due > now {
                    idle.as_mut().reset(due);
                    continue;
                }
                if progress.idle(&mut seen) {
                    log::debug!("Closing an ingest connection of uid {} idle for {:?}", peer.uid, ingest.idle_timeout);
                    // A writer still writing waits on a client that reads nothing.
                    if progress.writing.load(Ordering::Acquire) {
                        writer.abort();
                    }
                    break;
                }
                idle.as_mut().reset(now + ingest.idle_timeout);
                continue;
            }
            next = lines.next() => next,
        };
        line_due = None;
        let pending = match next {
            None => break,
            Some(Ok(Line::Started)) => {
                line_due = Some(tokio::time::Instant::now() + LINE_TIMEOUT);
                continue;
            }
            Some(Ok(Line::Large)) if large.is_some() => continue,
            Some(Ok(Line::Large)) => {
                // Nothing more is read from this client until a slot is free; its line's time
                // runs from then.
                tokio::select! {
                    _ = shutdown.changed() => break,
                    permit = ingest.large_lines.clone().acquire_owned() => large = permit.ok(),
                }
                line_due = Some(tokio::time::Instant::now() + LINE_TIMEOUT);
                continue;
            }
            Some(Ok(Line::Complete(line))) => {
                last_request = tokio::time::Instant::now();
                let answer = handle(&line, &peer, &ingest).await;
                drop(line);
                if large.is_some() && shrink_read_buffer(&mut lines) {
                    drop(large.take());
                }
                match answer {
                    Some(p) => p,
                    None => continue,
                }
            }
            Some(Ok(Line::TooLong)) => {
                last_request = tokio::time::Instant::now();
                if large.is_some() && shrink_read_buffer(&mut lines) {
                    drop(large.take());
                }
                Pending::Ready(reply_err(
                    "too_large",
                    &format!("a request line is at most {} bytes", ingest.max_line),
                ))
            }
            Some(Err(_)) => break,
        };
        progress.waiting.fetch_add(1, Ordering::AcqRel);
        let pending = match tx.try_send(pending) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Closed(_)) => break,
            Err(mpsc::error::TrySendError::Full(pending)) => pending,
        };
        // The queue is full: the client may have stopped reading its replies, which is idle
        // too.
        let sent = tokio::select! {
            sent = tx.send(pending) => sent.is_ok(),
            () = progress.stuck(ingest.idle_timeout) => {
                log::debug!("Closing an ingest connection of uid {} that read no reply for {:?}", peer.uid, ingest.idle_timeout);
                writer.abort();
                false
            }
        };
        if !sent {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// How far a connection's answers are, as its writer tells the reading side.
#[derive(Default)]
struct Progress {
    /// Requests read and not yet answered.
    waiting: AtomicUsize,
    /// Replies written so far.
    written: AtomicUsize,
    /// Whether the writer waits for the client to take bytes (rather than for an answer).
    writing: AtomicBool,
}

impl Progress {
    /// Whether a connection whose idle timer ran out is idle: every request is answered, or
    /// the client has read no reply since the last look (`seen`). A connection waiting for
    /// the daemon's answer is not.
    fn idle(&self, seen: &mut usize) -> bool {
        let written = self.written.load(Ordering::Acquire);
        let progressed = std::mem::replace(seen, written) != written;
        let writing = self.writing.load(Ordering::Acquire);
        (self.waiting.load(Ordering::Acquire) == 0 && !writing) || (writing && !progressed)
    }

    /// Returns once the writer has waited on a client that reads nothing for `timeout`.
    async fn stuck(&self, timeout: Duration) {
        let mut seen = self.written.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(timeout).await;
            if self.writing.load(Ordering::Acquire) && self.idle(&mut seen) {
                return;
            }
        }
    }
}

/// A line longer than this is read only in one of the few slots for large lines; a buffer
/// that grew for one is replaced by one just large enough for what is left in it.
const LARGE_LINE: usize = 64 * 1024;

/// After a large line is taken from the buffer: where at most [`LARGE_LINE`] bytes of what
/// follows are left, moves them into a buffer of their own and returns true, so the
/// connection may give up its slot. The line was cut from the buffer's allocation, which the
/// rest would otherwise keep alive, however small it is, for as long as the connection reads
/// (about `max_event_bytes` for each connection waiting for a slot for its next line, or idle).
/// The start of another large line keeps the buffer and the slot.
fn shrink_read_buffer(lines: &mut FramedRead<OwnedReadHalf, LineCodec>) -> bool {
    let buf = lines.read_buffer();
    if buf.len() > LARGE_LINE {
        return false;
    }
    let rest = BytesMut::from(&buf[..]);
    *lines.read_buffer_mut() = rest;
    true
}

/// Writes each reply as its answer comes, in request order; flushes when none is waiting.
async fn write_replies(
    write: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Pending>,
    progress: Arc<Progress>,
) {
    let mut out = BufWriter::new(write);
    while let Some(p) = rx.recv().await {
        let line = match p {
            Pending::Ready(line) => line,
            Pending::Append(answer) => append_reply(answer.await),
            Pending::Control(answer) => control_reply(answer.await),
        };
        progress.waiting.fetch_sub(1, Ordering::AcqRel);
        progress.writing.store(true, Ordering::Release);
        if out.write_all(&line).await.is_err() {
            return;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
        progress.writing.store(false, Ordering::Release);
        progress.written.fetch_add(1, Ordering::AcqRel);
    }
    let _ = out.flush().await;
}

/// One line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its newline.
    Complete(Bytes),
    /// A line over the limit; the rest of it is discarded as it arrives.
    TooLong,
    /// The start of a line arrived without its newline (once per line), so the connection can
    /// time the rest.
    Started,
    /// The unfinished line passed [`LARGE_LINE`] bytes (once per line, and only where lines may
    /// be longer), so the connection can take a slot before it reads more.
    Large,
}

/// Newline-delimited frames of at most `max` bytes. An over-long line is an item, not an
/// error, because a decoder error would end the connection. (tokio-util's `AnyDelimiterCodec`
/// cut the same lines, looking at each byte against a list of delimiters: a tenth of the
/// socket thread's time in a durable ingest run; `memchr` finds the newline many bytes at a
/// time.)
pub struct LineCodec {
    max: usize,
    /// How much of the buffer is known to hold no newline.
    searched: usize,
    /// The rest of an over-long line is being thrown away.
    discarding: bool,
    /// Whether `Line::Started` was given for the line now in the buffer.
    started: bool,
    /// Whether `Line::Large` was given for the line now in the buffer.
    large: bool,
}

impl LineCodec {
    /// A decoder of lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineCodec {
            max,
            searched: 0,
            discarding: false,
            started: false,
            large: false,
        }
    }
}

impl Decoder for LineCodec {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Line>> {
        loop {
            // A newline beyond `max` bytes would end a line over the limit: no need to look.
            let read_to = self.max.saturating_add(1).min(buf.len());
            let newline = memchr::memchr(b'\n', &buf[self.searched..read_to]);
            match (self.discarding, newline) {
                (true, Some(at)) => {
                    buf.advance(self.searched + at + 1);
                    self.discarding = false;
                    self.searched = 0;
                }
                (true, None) => {
                    buf.advance(read_to);
                    self.searched = 0;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                }
                (false, Some(at)) => {
                    let end = self.searched + at;
                    self.searched = 0;
                    self.started = false;
                    self.large = false;
                    let mut line = buf.split_to(end + 1);
                    line.truncate(end);
                    return Ok(Some(Line::Complete(line.freeze())));
                }
                (false, None) if buf.len() > self.max => {
                    self.discarding = true;
                    self.started = false;
                    self.large = false;
                    return Ok(Some(Line::TooLong));
                }
                (false, None) => {
                    self.searched = read_to;
                    if !buf.is_empty() && !self.started {
                        self.started = true;
                        return Ok(Some(Line::Started));
                    }
                    if buf.len() > LARGE_LINE && !self.large {
                        self.large = true;
                        return Ok(Some(Line::Large));
                    }
                    return Ok(None);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> std::io::Result<Option<Line>> {
        // At the end a partial line is taken as a line; there is nothing left to time.
        self.started = true;
        Ok(match self.decode(buf)? {
            Some(line) => Some(line),
            None if buf.is_empty() => None,
            None => {
                self.searched = 0;
                self.started = false;
                self.large = false;
                Some(Line::Complete(buf.split().freeze()))
            }
        })
    }
}

/// What one request line asks for, decided from the line alone, before anything is done.
#[derive(Debug)]
pub enum Decoded {
    /// An answer that needs nobody else: an error reply or `ping`'s, one JSON line with its
    /// newline.
    Reply(Vec<u8>),
    /// A control request, checked: only an administrator may ask it.
    Control(Control),
    /// An event to store.
    Event(event::NewEvent),
}

/// Decodes one request line (without its newline): `None` for a blank line, which is no
/// request. Never fails: anything malformed becomes an error reply.
pub fn decode(line: &[u8]) -> Option<Decoded> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let refuse = |code: &str, msg: &str| Some(Decoded::Reply(reply_err(code, msg)));
    let emit: Emit<'_> = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return refuse("invalid", &format!("not a JSON request object: {e}")),
    };
    let op = match emit.op {
        Some("emit") | None => return decode_event(emit),
        Some(op) => op,
    };
    let control = match serde_json::from_slice::<Control>(line) {
        Ok(c) => c,
        Err(e) => {
            let op: String = op.chars().take(64).collect();
            return refuse("invalid", &format!("a bad `{op}` request: {e}"));
        }
    };
    match control {
        Control::Unknown => {
            let op: String = op.chars().take(64).collect();
            refuse("unknown_op", &format!("unknown op `{op}`"))
        }
        Control::Ping => Some(Decoded::Reply(Reply::Ok(Done::default()).line())),
        Control::Redeliver {
            ids: Some(ref ids),
            all: None | Some(false),
            ..
        } if !ids.is_empty() => Some(Decoded::Control(control)),
        Control::Redeliver {
            ids: None,
            all: Some(true),
            ..
        } => Some(Decoded::Control(control)),
        Control::Redeliver { .. } => refuse(
            "invalid",
            "`redeliver` needs either `ids` (a non-empty list) or `\"all\": true`",
        ),
        control => Some(Decoded::Control(control)),
    }
}

fn decode_event(req: Emit<'_>) -> Option<Decoded> {
    let refuse = |msg: &str| Some(Decoded::Reply(reply_err("invalid", msg)));
    let Some(event_type) = req.event_type else {
        return refuse("an event needs a `type`");
    };
    if let Err(e) = event::check_app_type(&event_type) {
        return refuse(&e.to_string());
    }
    if let Some(id) = &req.id {
        if let Err(e) = event::check_id(id) {
            return refuse(&e.to_string());
        }
    }
    let data = req.data.unwrap_or(RawValue::NULL);
    if let Err(e) = event::check_depth(data.get()).and_then(|_| event::check_data(data)) {
        return refuse(&e.to_string());
    }
    Some(Decoded::Event(event::build(
        req.id,
        &event_type,
        data,
        SystemTime::now(),
    )))
}

/// The daemon's command for a control request (`ping` and unknown ops have none: `decode`
/// answers them).
fn op(control: Control) -> Option<Op> {
    Some(match control {
        Control::SetStatus { status } => Op::SetStatus(status),
        Control::Decommission => Op::Decommission,
        Control::Provision => Op::Provision,
        Control::InventoryRefresh => Op::InventoryRefresh,
        Control::Redeliver { sink, ids, all } => Op::Redeliver(crate::outbox::Redeliver {
            sink,
            ids: ids.filter(|_| all != Some(true)),
        }),
        Control::Resume { sink } => Op::Resume(sink),
        Control::Reload => Op::ReloadFiles,
        Control::Ping | Control::Unknown => return None,
    })
}

/// Turns one line into its answer (or `None` for a blank line, which is no request).
async fn handle(line: &[u8], peer: &Peer, ingest: &Ingest) -> Option<Pending> {
    Some(match decode(line)? {
        Decoded::Reply(line) => Pending::Ready(line),
        Decoded::Control(c) if !peer.admin => Pending::Ready(reply_err(
            "forbidden",
            &ingest.access.get().refusal(&c, peer),
        )),
        Decoded::Control(c) => match op(c) {
            Some(op) => ask(ingest, op).await,
            None => Pending::Ready(reply_err("unknown_op", "not a control op")),
        },
        Decoded::Event(ev) => Pending::Append(ingest.outbox.submit(ev).await),
    })
}

async fn ask(ingest: &Ingest, op: Op) -> Pending {
    let (reply, rx) = oneshot::channel();
    // If the daemon is stopping the request is dropped, and so is `reply`: the answer says so.
    let _ = ingest.control.send(control::Request { op, reply }).await;
    Pending::Control(rx)
}

fn control_reply(answer: Result<Answer, oneshot::error::RecvError>) -> Vec<u8> {
    match answer {
        Ok(Ok(done)) => Reply::Ok(done).line(),
        Ok(Err(refusal)) => reply_err(refusal.code, &refusal.error),
        Err(_) => reply_err("internal", "the daemon is stopping; nothing was done"),
    }
}

fn append_reply(
    answer: Result<Result<Appended, AppendError>, oneshot::error::RecvError>,
) -> Vec<u8> {
    match answer {
        Ok(Ok(a)) => Reply::Ok(Done {
            duplicate: a.duplicate.then_some(true),
            ..Done::stored(a.id)
        })
        .line(),
        Ok(Err(AppendError::Full)) => reply_err("full", "the outbox is full"),
        Ok(Err(AppendError::NoSpace)) => reply_err("full", NO_SPACE),
        Ok(Err(AppendError::Conflict)) => reply_err("conflict", CONFLICT),
        Ok(Err(AppendError::Decommissioned)) => reply_err(
            "decommissioned",
            "the device is decommissioned; events are refused until `edgehook provision`",
        ),
        // The detail is in the daemon's log; a client only learns that nothing was stored.
        Ok(Err(AppendError::Storage(_))) => {
            reply_err("internal", "storage error: the event was not stored")
        }
        Err(_) => reply_err(
            "internal",
            "the daemon is stopping; the event was not stored",
        ),
    }
}

/// The refusal for an event the full disk had no room for: `full`, like a full outbox, since
/// the producer's remedy is the same (try again later) and nothing was stored.
pub(crate) const NO_SPACE: &str = "the disk holding the outbox is full; the event was not stored";

/// The refusal for an event whose producer-given id is already in the outbox with another
/// type or data.
pub(crate) const CONFLICT: &str = "an event with this id is already in the outbox with another type or data; this one was not stored";

fn reply_err(code: &str, error: &str) -> Vec<u8> {
    Reply::err(code, error).line()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError};

    /// The lines tokio-util's `AnyDelimiterCodec` cuts, as the socket used them before
    /// `LineCodec` searched with `memchr`: the reference its lines must equal.
    fn reference(data: &[u8], chunk: usize, max: usize) -> Vec<Line> {
        let map = |r: Result<Option<Bytes>, AnyDelimiterCodecError>| match r {
            Ok(l) => l.map(Line::Complete),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => Some(Line::TooLong),
            Err(AnyDelimiterCodecError::Io(e)) => panic!("{e}"),
        };
        let mut codec = AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(l) = map(codec.decode(&mut buf)) {
                out.push(l);
            }
        }
        while let Some(l) = map(codec.decode_eof(&mut buf)) {
            out.push(l);
        }
        out
    }

    /// `LineCodec`'s lines, with each `Line::Started` checked: once per line, when its first
    /// bytes are in the buffer without its newline.
    fn cut(data: &[u8], chunk: usize, max: usize) -> Vec<Line> {
        let mut codec = LineCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut started = false;
        let mut take = |l: Line, buf: &BytesMut, out: &mut Vec<Line>| match l {
            Line::Started => {
                assert!(!started, "one Started per line");
                assert!(!buf.is_empty() && !buf.contains(&b'\n'));
                started = true;
            }
            l => {
                started = false;
                out.push(l);
            }
        };
        for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(l) = codec.decode(&mut buf).unwrap() {
                take(l, &buf, &mut out);
            }
        }
        while let Some(l) = codec.decode_eof(&mut buf).unwrap() {
            take(l, &buf, &mut out);
        }
        out
    }

    #[test]
    fn a_line_over_large_line_is_announced_once_before_it_ends_and_only_where_lines_may_be_longer()
    {
        let line = |len: usize| {
            let mut l = vec![b'x'; len];
            l.push(b'\n');
            l
        };
        let items = |max: usize, data: &[u8]| {
            let mut codec = LineCodec::new(max);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in data.chunks(8192) {
                buf.extend_from_slice(piece);
                while let Some(l) = codec.decode(&mut buf).unwrap() {
                    out.push(match l {
                        Line::Complete(b) => format!("line {}", b.len()),
                        other => format!("{other:?}"),
                    });
                }
            }
            out
        };
        let two = [line(100_000), line(10)].concat();
        assert_eq!(
            items(1 << 20, &two),
            ["Started", "Large", "line 100000", "line 10"]
        );
        // Under a limit of 64 KiB the line is too long, and never large.
        assert_eq!(items(LARGE_LINE, &two), ["Started", "TooLong", "line 10"]);
        assert_eq!(large_line_slots(1 << 20), 4);
        assert_eq!(large_line_slots(256), 64);
    }

    #[test]
    fn lines_are_cut_as_any_delimiter_codec_cut_them_in_any_chunks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..2000 {
            let len = rng.random_range(0..300);
            // Mostly short lines, some over the limit, some white space and carriage returns.
            let data: Vec<u8> = (0..len)
                .map(|_| match rng.random_range(0..20) {
                    0..=1 => b'\n',
                    2 => b'\r',
                    3 => b' ',
                    _ => rng.random_range(b'a'..=b'z'),
                })
                .collect();
            let max = rng.random_range(1..40);
            let chunk = rng.random_range(1..64);
            assert_eq!(
                cut(&data, chunk, max),
                reference(&data, chunk, max),
                "round {round}: {:?} in {chunk}-byte chunks, at most {max}",
                String::from_utf8_lossy(&data)
            );
        }
    }
}
