//! What the Python thread and the Rust runtime share: the event queue and the open calls.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::grpc::Status;

/// A poisoned lock only means another thread panicked while holding it; the state stays usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What EVENT_CALL tells Python about a call.
pub struct CallInfo {
    pub method: u32,
    pub metadata: HeaderMap,
    pub peer: Arc<str>,
    pub timeout: Option<f64>,
}

pub enum Event {
    Call {
        id: u64,
        info: CallInfo,
        /// The request of a unary-request method; None for a streamed request.
        payload: Option<Bytes>,
    },
    Message {
        id: u64,
        payload: Bytes,
    },
    HalfClose {
        id: u64,
    },
    Cancel {
        id: u64,
    },
}

struct EventQueue {
    items: VecDeque<Event>,
    waiters: u32,
    /// A waiter was woken and has not taken the queue yet: more events need no other wakeup.
    notified: bool,
    closed: bool,
    /// The eventfd's counter is non-zero. Invariant, outside the lock: signalled == (items is
    /// not empty || closed), and the eventfd is readable exactly when signalled.
    signalled: bool,
}

/// The events for Python, taken in batches by recv_batch (a waiter is woken only when one
/// waits) or by drain when the eventfd says there are some.
pub struct Events {
    q: Mutex<EventQueue>,
    cv: Condvar,
    efd: OwnedFd,
}

impl Events {
    fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a descriptor we now own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nothing else.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Events {
            q: Mutex::new(EventQueue {
                items: VecDeque::with_capacity(1024),
                waiters: 0,
                notified: false,
                closed: false,
                signalled: false,
            }),
            cv: Condvar::new(),
            efd,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Makes the eventfd readable (under the queue's lock, so no wake-up is lost).
    fn signal(&self, q: &mut EventQueue) {
        if q.signalled {
            return;
        }
        q.signalled = true;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. Cannot block (EFD_NONBLOCK) or overflow:
        // the counter is 0 here (see unsignal), and is at most 1 before the next read.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the eventfd once nothing waits (under the queue's lock).
    fn unsignal(&self, q: &mut EventQueue) {
        if !q.signalled || q.closed || !q.items.is_empty() {
            return;
        }
        q.signalled = false;
        let mut counter: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EFD_NONBLOCK, and the counter is non-zero.
        unsafe { libc::read(self.fd(), (&mut counter as *mut u64).cast(), 8) };
    }

    pub fn push(&self, ev: Event) {
        let mut q = lock(&self.q);
        if q.closed {
            return;
        }
        q.items.push_back(ev);
        self.signal(&mut q);
        let wake = q.waiters > 0 && !q.notified;
        q.notified |= wake;
        drop(q);
        if wake {
            self.cv.notify_one();
        }
    }

    /// Up to max events without waiting: Some([]) when none wait, None once closed and empty.
    pub fn try_take(&self, max: usize) -> Option<Vec<Event>> {
        let mut q = lock(&self.q);
        if q.items.is_empty() {
            return if q.closed { None } else { Some(Vec::new()) };
        }
        let n = q.items.len().min(max.max(1));
        let batch = q.items.drain(..n).collect();
        self.unsignal(&mut q);
        Some(batch)
    }

    /// Up to max events, waiting for the first; Some([]) on timeout, None once closed and empty.
    pub fn take(&self, max: usize, timeout: Option<Duration>) -> Option<Vec<Event>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = lock(&self.q);
        loop {
            q.notified = false;
            if !q.items.is_empty() {
                let n = q.items.len().min(max.max(1));
                let batch = q.items.drain(..n).collect();
                self.unsignal(&mut q);
                if !q.items.is_empty() && q.waiters > 0 {
                    q.notified = true;
                    self.cv.notify_one();
                }
                return Some(batch);
            }
            if q.closed {
                return None;
            }
            q.waiters += 1;
            match deadline {
                None => q = self.cv.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        q.waiters -= 1;
                        return Some(Vec::new());
                    }
                    q = self
                        .cv
                        .wait_timeout(q, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
            q.waiters -= 1;
        }
    }

    fn close(&self) {
        let mut q = lock(&self.q);
        q.closed = true;
        self.signal(&mut q);
        drop(q);
        self.cv.notify_all();
    }
}

thread_local! {
    /// The outbox of the IO thread this is (its address), 0 on other threads.
    static CURRENT_OUTBOX: Cell<usize> = const { Cell::new(0) };
}

struct OutboxState {
    wakers: Vec<Waker>,
    /// The dispatcher's waker; None while a wake of it is pending (or before its first poll).
    dispatcher: Option<Waker>,
}

/// One per IO thread: stream tasks woken from other threads (Python's), each batch with one
/// cross-thread wake of the thread's dispatcher, which wakes them on the IO thread (no syscall).
/// Invariant, under the lock: wakers is not empty only while the dispatcher is due to run
/// (it was woken when wakers became non-empty, or has not been polled yet), and every poll of
/// the dispatcher takes all of wakers.
pub struct Outbox {
    q: Mutex<OutboxState>,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox {
            q: Mutex::new(OutboxState {
                wakers: Vec::new(),
                dispatcher: None,
            }),
        }
    }

    fn id(&self) -> usize {
        self as *const Outbox as usize
    }

    /// Wakes a stream task of this outbox's IO thread.
    pub fn wake(&self, w: Waker) {
        if CURRENT_OUTBOX.with(Cell::get) == self.id() {
            return w.wake();
        }
        let mut q = lock(&self.q);
        q.wakers.push(w);
        let dispatcher = if q.wakers.len() == 1 {
            q.dispatcher.take()
        } else {
            None
        };
        drop(q);
        if let Some(d) = dispatcher {
            d.wake();
        }
    }

    /// The IO thread's dispatcher: runs (on that thread) as long as its runtime.
    pub async fn dispatch(self: Arc<Self>) {
        CURRENT_OUTBOX.with(|c| c.set(self.id()));
        let mut batch = Vec::new();
        poll_fn(|cx| {
            let mut q = lock(&self.q);
            std::mem::swap(&mut q.wakers, &mut batch);
            match &q.dispatcher {
                Some(d) if d.will_wake(cx.waker()) => {}
                _ => q.dispatcher = Some(cx.waker().clone()),
            }
            drop(q);
            for w in batch.drain(..) {
                w.wake();
            }
            Poll::<()>::Pending
        })
        .await
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
pub enum Headers {
    Unsent,
    Requested,
    Sent,
}

/// One call's send side as Python drives it; the stream's task takes from it.
pub struct StreamState {
    /// Framed messages the writer has not taken yet.
    pub buf: BytesMut,
    /// Bytes in buf plus those the writer took but has not handed to HTTP/2 yet.
    pub queued: usize,
    pub headers: Headers,
    pub initial_metadata: Vec<(HeaderName, HeaderValue)>,
    /// The status to end with once everything queued is sent.
    pub end: Option<Status>,
    /// The call was ended (by Python or by us): no EVENT_CANCEL after this.
    pub ended: bool,
    /// Sends fail: the stream finished, was reset, or the front closed.
    pub gone: bool,
    /// close(): the stream's task resets the stream.
    pub reset: bool,
    /// The task's waker while it has nothing to do.
    pub waker: Option<Waker>,
    pub senders_waiting: u32,
}

pub struct Stream {
    pub state: Mutex<StreamState>,
    /// send() waits here for room.
    pub room: Condvar,
    /// The outbox of the IO thread that runs its task.
    outbox: Arc<Outbox>,
}

pub enum SendResult {
    Sent,
    Full,
    Closed,
}

impl Stream {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Stream {
            state: Mutex::new(StreamState {
                buf: BytesMut::new(),
                queued: 0,
                headers: Headers::Unsent,
                initial_metadata: Vec::new(),
                end: None,
                ended: false,
                gone: false,
                reset: false,
                waker: None,
                senders_waiting: 0,
            }),
            room: Condvar::new(),
            outbox,
        }
    }

    /// Wakes the task (taken from the state under its lock), through its IO thread's outbox.
    fn wake(&self, w: Option<Waker>) {
        if let Some(w) = w {
            self.outbox.wake(w);
        }
    }

    /// Queues one message framed (flag 0, length, payload) unless more than limit would wait.
    fn queue(st: &mut StreamState, payload: &[u8], limit: usize) -> SendResult {
        if st.gone || st.ended {
            return SendResult::Closed;
        }
        if st.queued > 0 && st.queued + payload.len() + 5 > limit {
            return SendResult::Full;
        }
        Self::frame(st, payload);
        SendResult::Sent
    }

    fn frame(st: &mut StreamState, payload: &[u8]) {
        let framed = payload.len() + 5;
        st.buf.reserve(framed);
        st.buf.put_u8(0);
        st.buf.put_u32(payload.len() as u32);
        st.buf.put_slice(payload);
        st.queued += framed;
    }

    pub fn try_send(&self, payload: &[u8], limit: usize) -> SendResult {
        let mut st = lock(&self.state);
        let r = Self::queue(&mut st, payload, limit);
        let w = st.waker.take();
        drop(st);
        self.wake(w);
        r
    }

    pub fn send(&self, payload: &[u8], limit: usize) -> bool {
        let mut st = lock(&self.state);
        loop {
            match Self::queue(&mut st, payload, limit) {
                SendResult::Sent => {
                    let w = st.waker.take();
                    drop(st);
                    self.wake(w);
                    return true;
                }
                SendResult::Closed => return false,
                SendResult::Full => {
                    st.senders_waiting += 1;
                    st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.senders_waiting -= 1;
                }
            }
        }
    }

    pub fn send_initial_metadata(&self, md: Vec<(HeaderName, HeaderValue)>) -> bool {
        let mut st = lock(&self.state);
        if st.gone || st.ended || st.headers != Headers::Unsent {
            return false;
        }
        st.headers = Headers::Requested;
        st.initial_metadata = md;
        let w = st.waker.take();
        drop(st);
        self.wake(w);
        true
    }

    /// Ends the call after what is queued: then payload (if any, framed, whatever is queued
    /// already), then status; false when it was already ended or gone.
    pub fn finish(&self, payload: Option<&[u8]>, status: Status) -> bool {
        let mut st = lock(&self.state);
        if st.gone || st.ended {
            return false;
        }
        if let Some(p) = payload {
            Self::frame(&mut st, p);
        }
        st.ended = true;
        st.end = Some(status);
        // sends waiting for room now fail (queue says Closed once ended)
        if st.senders_waiting > 0 {
            self.room.notify_all();
        }
        let w = st.waker.take();
        drop(st);
        self.wake(w);
        true
    }

    /// Ends the call after what is queued; false when it was already ended or gone.
    pub fn end(&self, status: Status) -> bool {
        self.finish(None, status)
    }

    /// Marks the stream gone; true when Python must hear EVENT_CANCEL.
    pub fn gone(&self) -> bool {
        let mut st = lock(&self.state);
        let cancel = !st.gone && !st.ended && !st.reset;
        st.gone = true;
        if st.senders_waiting > 0 {
            self.room.notify_all();
        }
        cancel
    }

    /// close(): a call whose status is queued is left to send it (the connection's GOAWAY is
    /// graceful, and close waits for it); any other stream is reset.
    pub fn reset(&self) {
        let mut st = lock(&self.state);
        if st.end.is_some() {
            return;
        }
        st.reset = true;
        st.gone = true;
        if st.senders_waiting > 0 {
            self.room.notify_all();
        }
        let w = st.waker.take();
        drop(st);
        self.wake(w);
    }
}

pub struct Config {
    pub methods: HashMap<String, u32>,
    /// By method id: the request is one message (unary-unary, unary-stream).
    pub unary: Vec<bool>,
    pub services: Vec<String>,
    pub max_receive: usize,
    pub max_send: Option<usize>,
    pub stream_buffer: usize,
    /// Ping every connection this often; close it when the pong is later than the second.
    pub keepalive: Option<(Duration, Duration)>,
}

pub struct Shared {
    pub config: Config,
    pub events: Events,
    pub streams: Mutex<HashMap<u64, Arc<Stream>>>,
    next_id: AtomicU64,
    pub closed: AtomicBool,
    /// Connections (and the accept loop) still running, for close() to wait on.
    pub live: AtomicUsize,
}

impl Shared {
    pub fn new(config: Config) -> std::io::Result<Self> {
        Ok(Shared {
            config,
            events: Events::new()?,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            live: AtomicUsize::new(0),
        })
    }

    pub fn register(&self, outbox: Arc<Outbox>) -> (u64, Arc<Stream>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(Stream::new(outbox));
        lock(&self.streams).insert(id, stream.clone());
        (id, stream)
    }

    pub fn stream(&self, id: u64) -> Option<Arc<Stream>> {
        lock(&self.streams).get(&id).cloned()
    }

    /// Closes the event queue and resets every open stream; true the first time.
    pub fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.events.close();
        let open: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        for s in open {
            s.reset();
        }
        true
    }
}
