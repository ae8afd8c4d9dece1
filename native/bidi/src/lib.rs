//! server.embed._bidi: petcd's native gRPC front (see _bidi.pyi).

mod grpc;
mod server;
mod shared;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::watch;

use crate::grpc::{MetaValue, Status};
use crate::server::Dealer;
use crate::shared::{lock, Config, Event, SendResult, Shared};

const EVENT_CALL: u8 = 0;
const EVENT_MESSAGE: u8 = 1;
const EVENT_HALF_CLOSE: u8 = 2;
const EVENT_CANCEL: u8 = 3;
const STREAM_SENT: u8 = 0;
const STREAM_FULL: u8 = 1;
const STREAM_CLOSED: u8 = 2;

/// How long close() lets connections send their resets and GOAWAY before the runtime stops.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[pyclass(frozen, module = "server.embed._bidi")]
struct BidiFront {
    shared: Arc<Shared>,
    path: Option<String>,
    io_threads: usize,
    listener: Mutex<Option<std::os::unix::net::UnixListener>>,
    /// The IO threads, each running a single-threaded runtime, once started.
    runtime: Mutex<Option<Vec<std::thread::JoinHandle<()>>>>,
    /// Set once start() built the runtimes (their handles outlive close(): see adopt).
    dealer: OnceLock<Arc<Dealer>>,
    shutdown: watch::Sender<bool>,
}

type PyMetadata<'py> = Vec<(String, Bound<'py, PyAny>)>;

fn header_pairs(md: Option<PyMetadata<'_>>) -> PyResult<Vec<(HeaderName, HeaderValue)>> {
    let Some(md) = md else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(md.len());
    for (key, value) in md {
        let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|_| PyValueError::new_err(format!("invalid metadata key {key:?}")))?;
        let value = if key.ends_with("-bin") {
            let raw: Vec<u8> = match value.cast::<PyBytes>() {
                Ok(b) => b.as_bytes().to_vec(),
                Err(_) => value.extract::<String>()?.into_bytes(),
            };
            HeaderValue::from_str(&grpc::encode_bin(&raw)).expect("base64 is a header value")
        } else {
            let s: String = value.extract()?;
            HeaderValue::from_str(&s)
                .map_err(|_| PyValueError::new_err(format!("invalid metadata value for {key:?}")))?
        };
        out.push((name, value));
    }
    Ok(out)
}

fn event_to_py<'py>(py: Python<'py>, ev: Event) -> PyResult<Bound<'py, PyTuple>> {
    let none = py.None();
    match ev {
        Event::Call { id, info, payload } => {
            let mut md = Vec::with_capacity(info.metadata.len());
            for (k, v) in grpc::metadata(&info.metadata) {
                let key = PyString::new(py, k).into_any();
                let value = match v {
                    MetaValue::Str(b) => PyString::new(py, &String::from_utf8_lossy(b)).into_any(),
                    MetaValue::Bin(b) => PyBytes::new(py, &b).into_any(),
                };
                md.push(PyTuple::new(py, [key, value])?);
            }
            let details = (
                PyTuple::new(py, md)?,
                PyString::new(py, &info.peer),
                info.timeout,
            );
            let payload = match payload {
                Some(p) => PyBytes::new(py, &p).into_any(),
                None => none.into_bound(py),
            };
            (EVENT_CALL, id, info.method, payload, details).into_pyobject(py)
        }
        Event::Message { id, payload } => {
            (EVENT_MESSAGE, id, 0u32, PyBytes::new(py, &payload), none).into_pyobject(py)
        }
        Event::HalfClose { id } => {
            (EVENT_HALF_CLOSE, id, 0u32, none.clone_ref(py), none).into_pyobject(py)
        }
        Event::Cancel { id } => {
            (EVENT_CANCEL, id, 0u32, none.clone_ref(py), none).into_pyobject(py)
        }
    }
}

impl BidiFront {
    fn do_close(&self) {
        let first = self.shared.close();
        let _ = self.shutdown.send(true);
        drop(lock(&self.listener).take());
        if let (true, Some(path)) = (first, &self.path) {
            let _ = std::fs::remove_file(path);
        }
        let Some(threads) = lock(&self.runtime).take() else {
            return;
        };
        // each thread stops once the connections ended (or CLOSE_GRACE passed)
        for t in threads {
            let _ = t.join();
        }
    }
}

#[pymethods]
impl BidiFront {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, methods, services, *, unary = None,
                        max_receive_message_length = 4 * 1024 * 1024,
                        max_send_message_length = None, stream_buffer_bytes = 256 * 1024,
                        io_threads = 1, keepalive_time_ms = None, keepalive_timeout_ms = 20_000))]
    fn new(
        path: Option<String>,
        methods: Vec<String>,
        services: Vec<String>,
        unary: Option<Vec<bool>>,
        max_receive_message_length: usize,
        max_send_message_length: Option<usize>,
        stream_buffer_bytes: usize,
        io_threads: usize,
        keepalive_time_ms: Option<u64>,
        keepalive_timeout_ms: u64,
    ) -> PyResult<Self> {
        let unary = unary.unwrap_or_else(|| vec![false; methods.len()]);
        if unary.len() != methods.len() {
            return Err(PyValueError::new_err("unary must have one flag per method"));
        }
        let methods: HashMap<String, u32> = methods
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i as u32))
            .collect();
        let listener = match &path {
            Some(path) => {
                let listener = std::os::unix::net::UnixListener::bind(path)?;
                listener.set_nonblocking(true)?;
                Some(listener)
            }
            None => None,
        };
        let keepalive = keepalive_time_ms.map(|t| {
            (
                Duration::from_millis(t.max(1)),
                Duration::from_millis(keepalive_timeout_ms),
            )
        });
        let config = Config {
            methods,
            unary,
            services,
            max_receive: max_receive_message_length,
            max_send: max_send_message_length,
            stream_buffer: stream_buffer_bytes,
            keepalive,
        };
        Ok(BidiFront {
            shared: Arc::new(Shared::new(config)?),
            path,
            io_threads: io_threads.max(1),
            listener: Mutex::new(listener),
            runtime: Mutex::new(None),
            dealer: OnceLock::new(),
            shutdown: watch::channel(false).0,
        })
    }

    fn start(&self) -> PyResult<()> {
        let mut rt_slot = lock(&self.runtime);
        if rt_slot.is_some() {
            return Err(PyRuntimeError::new_err("already started"));
        }
        if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err("closed"));
        }
        let listener = lock(&self.listener).take();
        let mut handles = Vec::with_capacity(self.io_threads);
        let mut threads = Vec::with_capacity(self.io_threads);
        for _ in 0..self.io_threads {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            handles.push(rt.handle().clone());
            let stop =
                server::until_stopped(self.shared.clone(), self.shutdown.subscribe(), CLOSE_GRACE);
            threads.push(
                std::thread::Builder::new()
                    .name("petcd-bidi".into())
                    .spawn(move || rt.block_on(stop))?,
            );
        }
        let first = handles[0].clone();
        let dealer = Arc::new(Dealer::new(handles));
        if let Some(listener) = listener {
            let listener = {
                let _guard = first.enter();
                tokio::net::UnixListener::from_std(listener)?
            };
            first.spawn(server::accept_loop(
                self.shared.clone(),
                listener,
                dealer.clone(),
                self.shutdown.subscribe(),
            ));
        }
        let _ = self.dealer.set(dealer);
        *rt_slot = Some(threads);
        Ok(())
    }

    fn adopt(&self, fd: i32, peer: String) -> PyResult<()> {
        if fd < 0 {
            return Err(PyValueError::new_err("not a file descriptor"));
        }
        // SAFETY: the caller gives us the descriptor: from here on it is closed on every path.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let Some(dealer) = self.dealer.get() else {
            return Err(PyRuntimeError::new_err("not started"));
        };
        // subscribed before the check: a close() after it is seen by the connection
        let shutdown = self.shutdown.subscribe();
        if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err("closed"));
        }
        server::adopt(&self.shared, dealer, fd, peer.into(), shutdown)?;
        Ok(())
    }

    fn fileno(&self) -> i32 {
        self.shared.events.fd()
    }

    fn drain<'py>(
        &self,
        py: Python<'py>,
        max_events: usize,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let Some(events) = self.shared.events.try_take(max_events) else {
            return Ok(None);
        };
        let list = PyList::empty(py);
        for ev in events {
            list.append(event_to_py(py, ev)?)?;
        }
        Ok(Some(list))
    }

    #[pyo3(signature = (max_events, timeout_ms = None))]
    fn recv_batch<'py>(
        &self,
        py: Python<'py>,
        max_events: usize,
        timeout_ms: Option<u64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let shared = &self.shared;
        let Some(events) = py.detach(|| {
            shared
                .events
                .take(max_events, timeout_ms.map(Duration::from_millis))
        }) else {
            return Ok(None);
        };
        let list = PyList::empty(py);
        for ev in events {
            list.append(event_to_py(py, ev)?)?;
        }
        Ok(Some(list))
    }

    fn send_initial_metadata(&self, call_id: u64, metadata: PyMetadata<'_>) -> PyResult<bool> {
        let md = header_pairs(Some(metadata))?;
        Ok(self
            .shared
            .stream(call_id)
            .is_some_and(|s| s.send_initial_metadata(md)))
    }

    fn try_send(&self, call_id: u64, payload: &[u8]) -> u8 {
        let Some(stream) = self.shared.stream(call_id) else {
            return STREAM_CLOSED;
        };
        if self.too_large(call_id, &stream, payload) {
            return STREAM_CLOSED;
        }
        match stream.try_send(payload, self.shared.config.stream_buffer) {
            SendResult::Sent => STREAM_SENT,
            SendResult::Full => STREAM_FULL,
            SendResult::Closed => STREAM_CLOSED,
        }
    }

    fn send(&self, py: Python<'_>, call_id: u64, payload: &[u8]) -> bool {
        let Some(stream) = self.shared.stream(call_id) else {
            return false;
        };
        if self.too_large(call_id, &stream, payload) {
            return false;
        }
        let limit = self.shared.config.stream_buffer;
        py.detach(|| stream.send(payload, limit))
    }

    #[pyo3(signature = (call_id, payload, code, message = String::new(), trailing_metadata = None))]
    fn finish(
        &self,
        call_id: u64,
        payload: Option<&[u8]>,
        code: u32,
        message: String,
        trailing_metadata: Option<PyMetadata<'_>>,
    ) -> PyResult<()> {
        let metadata = header_pairs(trailing_metadata)?;
        let Some(stream) = self.shared.stream(call_id) else {
            return Ok(());
        };
        match (payload, self.shared.config.max_send) {
            (Some(p), Some(max)) if p.len() > max => {
                stream.end(too_large_status(p.len(), max));
            }
            _ => {
                stream.finish(
                    payload,
                    Status {
                        code,
                        message,
                        metadata,
                    },
                );
            }
        }
        Ok(())
    }

    #[pyo3(signature = (call_id, code, message = String::new(), trailing_metadata = None))]
    fn end(
        &self,
        call_id: u64,
        code: u32,
        message: String,
        trailing_metadata: Option<PyMetadata<'_>>,
    ) -> PyResult<()> {
        let metadata = header_pairs(trailing_metadata)?;
        if let Some(stream) = self.shared.stream(call_id) {
            stream.end(Status {
                code,
                message,
                metadata,
            });
        }
        Ok(())
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.do_close());
    }
}

impl BidiFront {
    /// A message over max_send_message_length ends the call as grpc-go's SendMsg error would.
    fn too_large(&self, call_id: u64, stream: &shared::Stream, payload: &[u8]) -> bool {
        let Some(max) = self.shared.config.max_send else {
            return false;
        };
        if payload.len() <= max {
            return false;
        }
        if stream.end(too_large_status(payload.len(), max)) {
            self.shared.events.push(Event::Cancel { id: call_id });
        }
        true
    }
}

/// grpc-go's SendMsg error for a message over max_send_message_length.
fn too_large_status(len: usize, max: usize) -> Status {
    let msg = format!("grpc: trying to send message larger than max ({len} vs. {max})");
    Status::new(grpc::RESOURCE_EXHAUSTED, msg)
}

impl Drop for BidiFront {
    fn drop(&mut self) {
        self.do_close();
    }
}

#[pymodule]
fn _bidi(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BidiFront>()?;
    m.add("EVENT_CALL", EVENT_CALL)?;
    m.add("EVENT_MESSAGE", EVENT_MESSAGE)?;
    m.add("EVENT_HALF_CLOSE", EVENT_HALF_CLOSE)?;
    m.add("EVENT_CANCEL", EVENT_CANCEL)?;
    m.add("STREAM_SENT", STREAM_SENT)?;
    m.add("STREAM_FULL", STREAM_FULL)?;
    m.add("STREAM_CLOSED", STREAM_CLOSED)?;
    Ok(())
}
