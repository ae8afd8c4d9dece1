//! The HTTP/2 side: accepting connections, one task per stream that deframes requests into
//! events and writes what Python queued within HTTP/2 flow control.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::grpc::{self, Status};
use crate::shared::{lock, CallInfo, Event, Headers, Outbox, Shared, Stream};

/// How long a call whose status went waits for the client's END_STREAM (see StreamTask::poll).
const LINGER: Duration = Duration::from_secs(1);

/// A stream's receive window: a request of etcd's largest size (1.5 MiB) arrives without
/// waiting on WINDOW_UPDATEs (HTTP/2's 64 KiB needs one round trip per 32 KiB). Requests are
/// read as they arrive (into events), so the window bounds little memory.
const STREAM_WINDOW: u32 = 1 << 20;
/// The connection's receive window, shared by its streams.
const CONNECTION_WINDOW: u32 = 2 << 20;
/// Remotely reset streams that may wait in h2's accept queue (see h2_builder).
const PENDING_ACCEPT_RESETS: usize = 1024;

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

/// The IO threads' runtimes; connections are dealt to them in turn.
pub struct Dealer {
    handles: Vec<Handle>,
    /// By IO thread, each with its dispatcher running there.
    outboxes: Vec<Arc<Outbox>>,
    next: AtomicUsize,
}

impl Dealer {
    pub fn new(handles: Vec<Handle>) -> Self {
        let outboxes: Vec<Arc<Outbox>> = handles.iter().map(|_| Arc::new(Outbox::new())).collect();
        for (h, o) in handles.iter().zip(&outboxes) {
            h.spawn(o.clone().dispatch());
        }
        Dealer {
            handles,
            outboxes,
            next: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }
}

/// Accepts connections and gives them to the IO threads in turn (it runs on the first).
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: UnixListener,
    dealer: Arc<Dealer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _live = Live::new(&shared);
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
                    let next = dealer.next();
                    let outbox = dealer.outboxes[next].clone();
                    if next == 0 {
                        tokio::spawn(serve_conn(live, sock, peer, shutdown, outbox));
                    } else if let Ok(sock) = sock.into_std() {
                        // registered again with the reactor of the thread that serves it
                        dealer.handles[next].spawn(async move {
                            if let Ok(sock) = UnixStream::from_std(sock) {
                                serve_conn(live, sock, peer, shutdown, outbox).await;
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

/// A connected socket given to us (adopt), served on the next IO thread.
enum Adopted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

fn sockopt(fd: &OwnedFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are live and sized as getsockopt expects for these int options.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Serves a connected stream socket (TCP or Unix) on one of the IO threads; the caller checked
/// that the front runs, and subscribed `shutdown` before checking that it is not closed.
pub fn adopt(
    shared: &Arc<Shared>,
    dealer: &Dealer,
    fd: OwnedFd,
    peer: Arc<str>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    if sockopt(&fd, libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream socket",
        ));
    }
    let sock = match sockopt(&fd, libc::SO_DOMAIN)? {
        libc::AF_UNIX => Adopted::Unix(fd.into()),
        libc::AF_INET | libc::AF_INET6 => {
            let s = std::net::TcpStream::from(fd);
            s.set_nodelay(true)?;
            Adopted::Tcp(s)
        }
        _ => {
            let msg = "not a TCP or Unix socket";
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
    };
    match &sock {
        Adopted::Tcp(s) => s.set_nonblocking(true)?,
        Adopted::Unix(s) => s.set_nonblocking(true)?,
    }
    let live = Live::new(shared);
    let next = dealer.next();
    let outbox = dealer.outboxes[next].clone();
    // a runtime already stopped drops the task, and with it the socket and `live`
    dealer.handles[next].spawn(async move {
        match sock {
            Adopted::Tcp(s) => {
                if let Ok(s) = TcpStream::from_std(s) {
                    serve_conn(live, s, peer, shutdown, outbox).await;
                }
            }
            Adopted::Unix(s) => {
                if let Ok(s) = UnixStream::from_std(s) {
                    serve_conn(live, s, peer, shutdown, outbox).await;
                }
            }
        }
    });
    Ok(())
}

/// HTTP/2 settings for any gRPC client (grpc-go's server defaults where h2's differ):
/// - max_concurrent_streams unset: h2 then advertises none, i.e. unlimited, as grpc-go and
///   etcd (math.MaxUint32) do;
/// - windows: see STREAM_WINDOW and CONNECTION_WINDOW;
/// - max_frame_size stays 16 KiB (HTTP/2's and grpc-go's default);
/// - max_header_list_size 16 MiB, grpc-go's default (h2 enforces the same without saying so);
/// - remotely reset streams waiting in h2's accept queue: h2 sends GOAWAY (ENHANCE_YOUR_CALM)
///   past 20, which a client cancelling a burst of streams (a thousand watches) can reach
///   before accept() runs;
/// - no limit on streams h2 resets over the peer's protocol errors: h2 counts them over the
///   connection's lifetime (default 1024, then GOAWAY), which a long-lived client connection
///   could reach; grpc-go has no such count;
/// - max_send_buffer_size stays 400 KiB: streams wait for capacity (poll_write) only up to it.
fn h2_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(16 << 20)
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(None);
    b
}

/// After a late pong, how long the GOAWAY may take to leave before the socket closes.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Pings every `every`; returns when a pong is later than `timeout` (or the connection failed).
async fn keepalive(pings: Option<&mut (PingPong, (Duration, Duration))>) {
    let Some((pp, (every, timeout))) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(*every).await;
        if !matches!(
            tokio::time::timeout(*timeout, pp.ping(Ping::opaque())).await,
            Ok(Ok(_))
        ) {
            return;
        }
    }
}

/// Serves one connection on the IO thread whose outbox is `outbox`.
async fn serve_conn<T>(
    live: Live,
    sock: T,
    peer: Arc<str>,
    mut shutdown: watch::Receiver<bool>,
    outbox: Arc<Outbox>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let shared = live.0.clone();
    let handshake = h2_builder().handshake::<_, Bytes>(sock);
    let mut conn = tokio::select! {
        r = handshake => match r {
            Ok(c) => c,
            Err(_) => return,
        },
        _ = shutdown.changed() => return,
    };
    let mut pings = match shared.config.keepalive {
        Some(k) => conn.ping_pong().map(|p| (p, k)),
        None => None,
    };
    let late = keepalive(pings.as_mut());
    tokio::pin!(late);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.accept() => match r {
                Some(Ok((req, respond))) => {
                    let (shared, peer, outbox) = (shared.clone(), peer.clone(), outbox.clone());
                    tokio::spawn(serve_stream(shared, peer, outbox, req, respond));
                }
                _ => return,
            },
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
            }
            _ = &mut late, if !stopping => {
                conn.abrupt_shutdown(Reason::NO_ERROR);
                let closed = poll_fn(|cx| conn.poll_closed(cx));
                let _ = tokio::time::timeout(GOAWAY_GRACE, closed).await;
                return;
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
    outbox: Arc<Outbox>,
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
    let (id, stream) = shared.register(outbox);
    if shared.closed.load(Ordering::SeqCst) {
        stream.reset();
    }
    let info = CallInfo {
        method,
        metadata: parts.headers,
        peer,
        timeout,
    };
    let unary = shared.config.unary.get(method as usize) == Some(&true);
    let pending = if unary {
        Some(info)
    } else {
        shared.events.push(Event::Call {
            id,
            info,
            payload: None,
        });
        None
    };
    let mut task = StreamTask {
        shared,
        id,
        stream,
        unary,
        pending,
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
    /// The request is one message: it comes with EVENT_CALL, nothing follows but a cancel.
    unary: bool,
    /// A unary call Python has not heard of yet: it waits for its request message.
    pending: Option<CallInfo>,
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
        if self.stream.gone() && self.pending.is_none() {
            self.shared.events.push(Event::Cancel { id: self.id });
        }
        Poll::Ready(())
    }

    /// We end the call (a bad request message): its status, and EVENT_CANCEL for Python.
    /// A unary call still pending ends without any event.
    fn fail(&mut self, status: Status) {
        if self.stream.end(status) && self.pending.take().is_none() {
            self.shared.events.push(Event::Cancel { id: self.id });
        }
        self.recv = None;
    }

    /// A whole request message: a unary call's makes its EVENT_CALL.
    fn deliver(&mut self, payload: Bytes) {
        let id = self.id;
        let ev = match self.pending.take() {
            Some(info) => Event::Call {
                id,
                info,
                payload: Some(payload),
            },
            None => Event::Message { id, payload },
        };
        self.shared.events.push(ev);
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Some(recv) = self.recv.as_mut() {
            match recv.poll_data(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    // a unary call's DATA after its message is not read (as grpc-go)
                    if self.unary && self.pending.is_none() {
                        continue;
                    }
                    if let Err(status) = self.deframe(chunk) {
                        self.fail(status);
                    }
                }
                Poll::Ready(Some(Err(_))) => return self.cancel(),
                Poll::Ready(None) => {
                    self.recv = None;
                    if self.pending.take().is_some() {
                        // grpc-go's processUnaryRPC writes status.Convert(err) of its
                        // recvAndDecompress: io.EOF with no message, io.ErrUnexpectedEOF
                        // within one; neither is a status error, so both are UNKNOWN
                        let msg = if self.rbuf.is_empty() {
                            "EOF"
                        } else {
                            "unexpected EOF"
                        };
                        self.stream.end(Status::new(grpc::UNKNOWN, msg.to_owned()));
                    } else if !self.unary && !lock(&self.stream.state).ended {
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
                self.deliver(chunk.split_to(len));
                if self.unary {
                    return Ok(());
                }
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
            self.deliver(payload);
            if self.unary {
                self.rbuf = BytesMut::new();
                return Ok(());
            }
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
            let mut ended = false;
            if !self.inflight.is_empty() {
                match self.wait_capacity(cx) {
                    Ok(e) => ended = e,
                    Err(p) => return p,
                }
            }
            if !self.inflight.is_empty() && !ended {
                let Some(send) = self.send.as_mut() else {
                    unreachable!("data before headers")
                };
                let cap = send.capacity();
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
                // an ended call queues nothing more: all of it goes to HTTP/2 at once, the
                // response in one write when the client's windows allow
                let end = st.end.take();
                if end.is_some() {
                    st.queued = 0;
                }
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
            let Some(status) = end else {
                if let Some(data) = data {
                    self.inflight = data;
                }
                continue;
            };
            let Some(send) = self.send.as_mut() else {
                unreachable!("headers went")
            };
            // h2 buffers what exceeds the stream's capacity and sends it as the window opens
            for chunk in [std::mem::take(&mut self.inflight), data.unwrap_or_default()] {
                if !chunk.is_empty() && send.send_data(chunk, false).is_err() {
                    return self.cancel();
                }
            }
            let mut trailers = HeaderMap::new();
            grpc::put_status(&mut trailers, status);
            let _ = send.send_trailers(trailers);
            self.status_sent = true;
            return Poll::Ready(());
        }
    }

    /// Inflight data waits for HTTP/2 capacity: Ok(false) when some is there; Ok(true) when the
    /// call ended meanwhile (the rest goes without waiting); Err(Pending) to wait, woken by
    /// capacity or the stream's state (under its lock, so an end() is not missed); Err(Ready)
    /// when the stream is gone.
    fn wait_capacity(&mut self, cx: &mut Context<'_>) -> Result<bool, Poll<()>> {
        loop {
            let Some(send) = self.send.as_mut() else {
                unreachable!("data before headers")
            };
            if send.capacity() > 0 {
                return Ok(false);
            }
            send.reserve_capacity(self.inflight.len());
            match send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(_) => return Err(self.cancel()),
                Poll::Pending => {}
            }
            let mut st = lock(&self.stream.state);
            if st.reset {
                drop(st);
                return Err(self.reset());
            }
            if st.end.is_some() {
                return Ok(true);
            }
            match &st.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.waker = Some(cx.waker().clone()),
            }
            return Err(Poll::Pending);
        }
    }
}
