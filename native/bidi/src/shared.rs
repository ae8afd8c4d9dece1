//! What the Python thread and the Rust runtime share: the event queue and the open calls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::grpc::Status;

/// A poisoned lock only means another thread panicked while holding it; the state stays usable.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub enum Event {
    Call {
        id: u64,
        method: u32,
        metadata: HeaderMap,
        peer: Arc<str>,
        timeout: Option<f64>,
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
}

/// The events for Python, drained in batches by recv_batch; a waiter is woken only when one waits.
pub struct Events {
    q: Mutex<EventQueue>,
    cv: Condvar,
}

impl Events {
    fn new() -> Self {
        Events {
            q: Mutex::new(EventQueue {
                items: VecDeque::with_capacity(1024),
                waiters: 0,
                notified: false,
                closed: false,
            }),
            cv: Condvar::new(),
        }
    }

    pub fn push(&self, ev: Event) {
        let mut q = lock(&self.q);
        if q.closed {
            return;
        }
        q.items.push_back(ev);
        let wake = q.waiters > 0 && !q.notified;
        q.notified |= wake;
        drop(q);
        if wake {
            self.cv.notify_one();
        }
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
        lock(&self.q).closed = true;
        self.cv.notify_all();
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
}

pub enum SendResult {
    Sent,
    Full,
    Closed,
}

impl Stream {
    pub fn new() -> Self {
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
        }
    }

    /// Queues one message framed (flag 0, length, payload) unless more than limit would wait.
    fn queue(st: &mut StreamState, payload: &[u8], limit: usize) -> SendResult {
        if st.gone || st.ended {
            return SendResult::Closed;
        }
        let framed = payload.len() + 5;
        if st.queued > 0 && st.queued + framed > limit {
            return SendResult::Full;
        }
        st.buf.reserve(framed);
        st.buf.put_u8(0);
        st.buf.put_u32(payload.len() as u32);
        st.buf.put_slice(payload);
        st.queued += framed;
        SendResult::Sent
    }

    pub fn try_send(&self, payload: &[u8], limit: usize) -> SendResult {
        let mut st = lock(&self.state);
        let r = Self::queue(&mut st, payload, limit);
        let w = st.waker.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        r
    }

    pub fn send(&self, payload: &[u8], limit: usize) -> bool {
        let mut st = lock(&self.state);
        loop {
            match Self::queue(&mut st, payload, limit) {
                SendResult::Sent => {
                    let w = st.waker.take();
                    drop(st);
                    if let Some(w) = w {
                        w.wake();
                    }
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
        if let Some(w) = w {
            w.wake();
        }
        true
    }

    /// Ends the call after what is queued; false when it was already ended or gone.
    pub fn end(&self, status: Status) -> bool {
        let mut st = lock(&self.state);
        if st.gone || st.ended {
            return false;
        }
        st.ended = true;
        st.end = Some(status);
        let w = st.waker.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        true
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

    pub fn reset(&self) {
        let mut st = lock(&self.state);
        st.reset = true;
        st.gone = true;
        if st.senders_waiting > 0 {
            self.room.notify_all();
        }
        let w = st.waker.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
    }
}

pub struct Config {
    pub methods: HashMap<String, u32>,
    pub services: Vec<String>,
    pub max_receive: usize,
    pub max_send: Option<usize>,
    pub stream_buffer: usize,
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
    pub fn new(config: Config) -> Self {
        Shared {
            config,
            events: Events::new(),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            live: AtomicUsize::new(0),
        }
    }

    pub fn register(&self) -> (u64, Arc<Stream>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = Arc::new(Stream::new());
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
