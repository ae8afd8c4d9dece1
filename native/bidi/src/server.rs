//! The HTTP/2 side: accepting connections, one task per stream that deframes requests into
//! events and writes what Python queued within HTTP/2 flow control.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::grpc::{self, Status};
use crate::shared::{lock, Event, Headers, Shared, Stream};

/// How long a call whose status went waits for the client's END_STREAM (see StreamTask::poll).
const LINGER: Duration = Duration::from_secs(1);

/// Counts a running connection (or the accept loop) for close() to wait on.
struct Live(Arc<Shared>);

impl Live {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.live.fetch_add(1, Ordering::SeqCst);
        Live(shared.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What an IO thread runs: until close(), then until its connections ended or grace passed.
pub async fn until_stopped(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    while shared.live.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Accepts connections and gives them to the IO threads in turn.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: UnixListener,
    threads: Vec<Handle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _live = Live::new(&shared);
    let mut next = 0;
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, addr)) => {
                    let peer: Arc<str> = match addr.as_pathname() {
                        Some(p) => format!("unix:{}", p.display()).into(),
                        None => "unix:".into(),
                    };
                    let live = Live::new(&shared);
                    let shutdown = shutdown.clone();
                    next = (next + 1) % threads.len();
                    if next == 0 {
                        tokio::spawn(serve_conn(live, sock, peer, shutdown));
                    } else if let Ok(sock) = sock.into_std() {
                        // registered again with the reactor of the thread that serves it
                        threads[next].spawn(async move {
                            if let Ok(sock) = UnixStream::from_std(sock) {
                                serve_conn(live, sock, peer, shutdown).await;
                            }
                        });
                    }
                }
                // out of descriptors and the like: the listener stays, the next accept may work
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve_conn(
    live: Live,
    sock: UnixStream,
    peer: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = live.0.clone();
    let mut builder = h2::server::Builder::new();
    // a stream's receive window stays HTTP/2's default; the connection's allows a few busy streams
    builder.initial_connection_window_size(1 << 20);
    let handshake = builder.handshake::<_, Bytes>(sock);
    let mut conn = tokio::select! {
        r = handshake => match r {
            Ok(c) => c,
            Err(_) => return,
        },
        _ = shutdown.changed() => return,
    };
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    tokio::spawn(serve_stream(shared.clone(), peer.clone(), req, respond));
                }
                _ => return,
            },
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
        }
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, grpc::content_type());
    r
}

/// A response that is only headers: an answer before (or instead of) the call; then, as
/// after any status, a little wait for the client's END_STREAM (see StreamTask::poll).
async fn early_answer(
    mut respond: SendResponse<Bytes>,
    mut recv: RecvStream,
    http_status: StatusCode,
    status: Status,
) {
    let mut r = response(http_status);
    grpc::put_status(r.headers_mut(), status);
    if respond.send_response(r, true).is_err() || recv.is_end_stream() {
        return;
    }
    let drain = async {
        while let Some(Ok(chunk)) = recv.data().await {
            let _ = recv.flow_control().release_capacity(chunk.len());
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// application/grpc, optionally +subtype or ;params.
fn is_grpc_content_type(v: &[u8]) -> bool {
    match v.strip_prefix(b"application/grpc") {
        Some(rest) => rest.is_empty() || rest[0] == b'+' || rest[0] == b';',
        None => false,
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    peer: Arc<str>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let (parts, recv) = req.into_parts();
    let headers = &parts.headers;
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .unwrap_or(b"");
    if !is_grpc_content_type(content_type) {
        let ct = String::from_utf8_lossy(content_type);
        let msg = format!("invalid gRPC request content-type {}", grpc::go_quote(&ct));
        let status = Status::new(grpc::INVALID_ARGUMENT, msg);
        return early_answer(respond, recv, StatusCode::UNSUPPORTED_MEDIA_TYPE, status).await;
    }
    let timeout = match headers
        .get("grpc-timeout")
        .map(|v| grpc::decode_timeout(v.as_bytes()))
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            let status = Status::new(grpc::INTERNAL, format!("malformed grpc-timeout: {e}"));
            return early_answer(respond, recv, StatusCode::BAD_REQUEST, status).await;
        }
    };
    if let Err(status) = grpc::check_metadata(headers) {
        return early_answer(respond, recv, StatusCode::BAD_REQUEST, status).await;
    }
    let path = parts.uri.path();
    let Some(&method) = shared.config.methods.get(path) else {
        let status = grpc::unknown_path(path, &shared.config.services);
        return early_answer(respond, recv, StatusCode::OK, status).await;
    };
    if let Some(enc) = headers.get("grpc-encoding") {
        if !enc.is_empty() && enc.as_bytes() != b"identity" {
            let enc = String::from_utf8_lossy(enc.as_bytes());
            let msg = format!(
                "grpc: Decompressor is not installed for grpc-encoding {}",
                grpc::go_quote(&enc)
            );
            let status = Status::new(grpc::UNIMPLEMENTED, msg);
            return early_answer(respond, recv, StatusCode::OK, status).await;
        }
    }
    if shared.closed.load(Ordering::SeqCst) {
        respond.send_reset(Reason::REFUSED_STREAM);
        return;
    }
    let (id, stream) = shared.register();
    if shared.closed.load(Ordering::SeqCst) {
        stream.reset();
    }
    let metadata = parts.headers;
    shared.events.push(Event::Call {
        id,
        method,
        metadata,
        peer,
        timeout,
    });
    let mut task = StreamTask {
        shared,
        id,
        stream,
        recv: Some(recv),
        respond,
        send: None,
        inflight: Bytes::new(),
        rbuf: BytesMut::new(),
        status_sent: false,
        linger: None,
    };
    poll_fn(|cx| task.poll(cx)).await;
}

struct StreamTask {
    shared: Arc<Shared>,
    id: u64,
    stream: Arc<Stream>,
    /// None once the client half-closed or we stopped reading.
    recv: Option<RecvStream>,
    respond: SendResponse<Bytes>,
    /// Some once the response headers went.
    send: Option<SendStream<Bytes>>,
    /// Taken from the queue, not yet given to HTTP/2 (it waits for flow-control capacity).
    inflight: Bytes,
    /// A partial request message.
    rbuf: BytesMut,
    /// The call's status went (trailers, or a trailers-only response).
    status_sent: bool,
    /// After the status, how long we still wait for the client's END_STREAM.
    linger: Option<Pin<Box<Sleep>>>,
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        self.stream.gone();
        lock(&self.shared.streams).remove(&self.id);
    }
}

impl StreamTask {
    /// Ready when the stream is finished.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.linger.is_none() {
            if self.poll_read(cx).is_ready() {
                return Poll::Ready(());
            }
            if self.poll_write(cx).is_pending() {
                return Poll::Pending;
            }
            if !self.status_sent || self.recv.is_none() {
                return Poll::Ready(());
            }
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        // The call is over but the client has not half-closed: its END_STREAM is usually on the
        // way, and ending the stream now would reset it (RST_STREAM NO_ERROR), racing those
        // frames. A peer (pygrpc-native's front) that gets them for a stream it forgot answers
        // with resets of its own, which its HTTP/2 counts towards a GOAWAY.
        if self.park(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Some(recv) = self.recv.as_mut() {
            loop {
                match recv.poll_data(cx) {
                    Poll::Ready(Some(Ok(chunk))) => {
                        let _ = recv.flow_control().release_capacity(chunk.len());
                    }
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => break,
                }
            }
        }
        match self.linger.as_mut() {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }

    /// The stream is gone under us (reset, connection lost): Python hears EVENT_CANCEL
    /// unless the call was already ended.
    fn cancel(&mut self) -> Poll<()> {
        if self.stream.gone() {
            self.shared.events.push(Event::Cancel { id: self.id });
        }
        Poll::Ready(())
    }

    /// We end the call (a bad request message): its status, and EVENT_CANCEL for Python.
    fn fail(&mut self, status: Status) {
        if self.stream.end(status) {
            self.shared.events.push(Event::Cancel { id: self.id });
        }
        self.recv = None;
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(recv) = self.recv.as_mut() {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    if let Err(status) = self.deframe(chunk) {
                        self.fail(status);
                    }
                }
                Poll::Ready(Some(Err(_))) => return self.cancel(),
                Poll::Ready(None) => {
                    self.recv = None;
                    if !lock(&self.stream.state).ended {
                        self.shared.events.push(Event::HalfClose { id: self.id });
                    }
                }
                Poll::Pending => break,
            }
        }
        Poll::Pending
    }

    /// Request messages: a 5-byte prefix (compressed flag, length) and the message.
    fn deframe(&mut self, mut chunk: Bytes) -> Result<(), Status> {
        if self.rbuf.is_empty() {
            // the common case, whole messages in one DATA frame: no copy
            while chunk.len() >= 5 {
                let len = self.check_prefix(&chunk)?;
                if chunk.len() < 5 + len {
                    break;
                }
                chunk.advance(5);
                let payload = chunk.split_to(len);
                self.shared.events.push(Event::Message {
                    id: self.id,
                    payload,
                });
            }
            if chunk.is_empty() {
                return Ok(());
            }
        }
        self.rbuf.extend_from_slice(&chunk);
        while self.rbuf.len() >= 5 {
            let len = self.check_prefix(&self.rbuf)?;
            if self.rbuf.len() < 5 + len {
                self.rbuf.reserve(5 + len - self.rbuf.len());
                break;
            }
            self.rbuf.advance(5);
            let payload = self.rbuf.split_to(len).freeze();
            self.shared.events.push(Event::Message {
                id: self.id,
                payload,
            });
        }
        Ok(())
    }

    fn check_prefix(&self, b: &[u8]) -> Result<usize, Status> {
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        match b[0] {
            0 => {}
            // grpc-encoding other than identity was refused when the call opened
            1 => {
                let msg = "grpc: compressed flag set with identity or empty encoding".to_owned();
                return Err(Status::new(grpc::INTERNAL, msg));
            }
            f => {
                let msg = format!("grpc: received unexpected payload format {f}");
                return Err(Status::new(grpc::INTERNAL, msg));
            }
        }
        let max = self.shared.config.max_receive;
        if len > max {
            let msg = format!("grpc: received message larger than max ({len} vs. {max})");
            return Err(Status::new(grpc::RESOURCE_EXHAUSTED, msg));
        }
        Ok(len)
    }

    /// close() resets the stream.
    fn reset(&mut self) -> Poll<()> {
        match self.send.as_mut() {
            Some(send) => send.send_reset(Reason::CANCEL),
            None => self.respond.send_reset(Reason::CANCEL),
        }
        Poll::Ready(())
    }

    /// Waiting on HTTP/2 (flow control, the client's END_STREAM): close() must still wake us.
    fn park(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.stream.state);
        if st.reset {
            drop(st);
            return self.reset();
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.inflight.is_empty() {
                let Some(send) = self.send.as_mut() else {
                    unreachable!("data before headers")
                };
                let cap = send.capacity();
                if cap == 0 {
                    send.reserve_capacity(self.inflight.len());
                    match send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => continue,
                        Poll::Ready(_) => return self.cancel(),
                        Poll::Pending => return self.park(cx),
                    }
                }
                let chunk = self.inflight.split_to(cap.min(self.inflight.len()));
                let n = chunk.len();
                if send.send_data(chunk, false).is_err() {
                    return self.cancel();
                }
                let mut st = lock(&self.stream.state);
                st.queued -= n;
                if st.senders_waiting > 0 {
                    self.stream.room.notify_all();
                }
                continue;
            }
            let (headers, data, end) = {
                let mut st = lock(&self.stream.state);
                if st.reset {
                    drop(st);
                    return self.reset();
                }
                let headers = if st.headers == Headers::Requested {
                    st.headers = Headers::Sent;
                    Some(std::mem::take(&mut st.initial_metadata))
                } else {
                    None
                };
                let data = if st.buf.is_empty() {
                    None
                } else {
                    Some(st.buf.split().freeze())
                };
                let end = if data.is_none() { st.end.take() } else { None };
                if headers.is_none() && data.is_none() && end.is_none() {
                    match &st.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => st.waker = Some(cx.waker().clone()),
                    }
                    drop(st);
                    // a client that half-closed can still reset the stream while Python is quiet
                    if self.recv.is_none() {
                        let reset = match self.send.as_mut() {
                            Some(send) => send.poll_reset(cx),
                            None => self.respond.poll_reset(cx),
                        };
                        if reset.is_ready() {
                            return self.cancel();
                        }
                    }
                    return Poll::Pending;
                }
                if data.is_some() || end.is_some() {
                    st.headers = Headers::Sent;
                }
                (headers, data, end)
            };
            if self.send.is_none() {
                if data.is_none() && headers.is_none() {
                    // nothing was sent: a trailers-only response
                    let mut r = response(StatusCode::OK);
                    grpc::put_status(r.headers_mut(), end.expect("end"));
                    let _ = self.respond.send_response(r, true);
                    self.status_sent = true;
                    return Poll::Ready(());
                }
                let mut r = response(StatusCode::OK);
                for (k, v) in headers.unwrap_or_default() {
                    r.headers_mut().append(k, v);
                }
                match self.respond.send_response(r, false) {
                    Ok(s) => self.send = Some(s),
                    Err(_) => return self.cancel(),
                }
            }
            if let Some(data) = data {
                self.inflight = data;
                continue;
            }
            if let Some(status) = end {
                let mut trailers = HeaderMap::new();
                grpc::put_status(&mut trailers, status);
                if let Some(send) = self.send.as_mut() {
                    let _ = send.send_trailers(trailers);
                }
                self.status_sent = true;
                return Poll::Ready(());
            }
        }
    }
}
