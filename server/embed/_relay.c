/* The byte relay behind the shared client port (server/embed/serve.py).
 *
 * grpcio can only serve sockets it accepted itself, so a connection the client port classified
 * as gRPC for it (TLS, front-ends, --grpc-server=grpcio) is joined to a fresh connection to the
 * gRPC server's private Unix socket, and this relay copies bytes between the two until both directions are done.
 * It runs on its own thread and never takes the GIL: one epoll loop, edge-triggered, reading
 * into one shared buffer and writing straight on; only bytes the destination cannot take yet
 * are kept, in a buffer of their own, and reading from that side stops until they are written
 * (the destination's EPOLLOUT resumes it), so a slow reader backs up into TCP, not into memory.
 *
 *   relay = Relay(); relay.start()
 *   relay.add(client_fd, backend_fd)   # takes ownership of both descriptors
 *   relay.active                       # pairs being relayed
 *   relay.stop()                       # closes every pair, joins the thread
 *
 * A half that reads end-of-file shuts down writing on the other socket (half-close passes
 * through); a pair is closed when both halves are done or either socket fails.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (256 * 1024)
#define MAX_EVENTS 256

typedef struct pair pair;

/* epoll data of one socket of a pair */
typedef struct {
    pair *p;
    int side;
} end;

/* the bytes flowing from fd[i] to fd[1 - i] that fd[1 - i] could not take yet */
typedef struct {
    char *buf;
    size_t off, len;
    int eof; /* fd[i] reached end-of-file (and fd[1 - i] was shut down for writing) */
} half;

struct pair {
    int fd[2];
    half h[2];
    end e[2];
    int dead;
    int broken; /* could not be registered whole: close on its first event */
    pair *prev, *next; /* the live list, or the graveyard of this round */
};

typedef struct {
    PyObject_HEAD
    int ep;
    int wake;
    int running;
    pthread_t thread;
    pthread_mutex_t mu; /* guards the live list and count */
    pair live;          /* list head */
    long count;
    char *chunk;        /* the relay thread's read buffer */
} Relay;

static void list_insert(pair *head, pair *p) {
    p->next = head->next;
    p->prev = head;
    head->next->prev = p;
    head->next = p;
}

static void list_remove(pair *p) {
    p->prev->next = p->next;
    p->next->prev = p->prev;
}

/* Write what is kept for half h into dst. 1: all written; 0: dst is full; -1: dst failed. */
static int flush_kept(half *h, int dst) {
    while (h->len) {
        ssize_t m = send(dst, h->buf + h->off, h->len, MSG_NOSIGNAL);
        if (m > 0) {
            h->off += (size_t)m;
            h->len -= (size_t)m;
            continue;
        }
        if (m < 0 && errno == EINTR) continue;
        if (m < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        return -1;
    }
    free(h->buf);
    h->buf = NULL;
    h->off = 0;
    return 1;
}

/* Keep the unwritten tail of a read for later. */
static int keep(half *h, const char *data, size_t len) {
    h->buf = malloc(len);
    if (h->buf == NULL) return -1;
    memcpy(h->buf, data, len);
    h->off = 0;
    h->len = len;
    return 0;
}

/* Move bytes from fd[i] to fd[1 - i] until either would block. -1: the pair must close.
   drain = 0: fd[i] has just signalled new bytes and no end of stream, so a short read emptied
   it (bytes arriving later raise a new edge): stop there, sparing a recv that would only say
   EAGAIN, on every request and every response. */
static int pump(Relay *r, pair *p, int i, int drain) {
    half *h = &p->h[i];
    int src = p->fd[i], dst = p->fd[1 - i];
    if (h->len) {
        int f = flush_kept(h, dst);
        if (f <= 0) return f;
    }
    while (!h->eof) {
        ssize_t n = recv(src, r->chunk, CHUNK, 0);
        if (n == 0) {
            h->eof = 1;
            shutdown(dst, SHUT_WR);
            break;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        size_t done = 0;
        while (done < (size_t)n) {
            ssize_t m = send(dst, r->chunk + done, (size_t)n - done, MSG_NOSIGNAL);
            if (m > 0) {
                done += (size_t)m;
                continue;
            }
            if (m < 0 && errno == EINTR) continue;
            if (m < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                /* dst is full: keep the rest, stop reading src until dst drains */
                return keep(h, r->chunk + done, (size_t)n - done);
            }
            return -1;
        }
        if (!drain && (size_t)n < CHUNK) break;
    }
    return 0;
}

static int finished(pair *p) {
    return p->h[0].eof && p->h[1].eof && !p->h[0].len && !p->h[1].len;
}

static void close_pair(Relay *r, pair *p, pair *graveyard) {
    if (p->dead) return;
    p->dead = 1;
    close(p->fd[0]); /* closing removes them from the epoll set */
    close(p->fd[1]);
    free(p->h[0].buf);
    free(p->h[1].buf);
    pthread_mutex_lock(&r->mu);
    list_remove(p);
    r->count--;
    pthread_mutex_unlock(&r->mu);
    /* events of this round may still point at p: free it after the round */
    p->next = graveyard->next;
    graveyard->next = p;
}

static void on_event(Relay *r, end *e, uint32_t events, pair *graveyard) {
    pair *p = e->p;
    int i = e->side;
    if (p->dead) return;
    if ((events & EPOLLERR) || p->broken) {
        close_pair(r, p, graveyard);
        return;
    }
    int rc = 0;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) rc = pump(r, p, i, (events & (EPOLLRDHUP | EPOLLHUP)) != 0);
    /* fd[i] can take more: write what was kept for it, then read its source to the end (its
       bytes may have waited without a new edge) */
    if (rc >= 0 && (events & (EPOLLOUT | EPOLLHUP)) && p->h[1 - i].len) rc = pump(r, p, 1 - i, 1);
    if (rc < 0 || finished(p)) close_pair(r, p, graveyard);
}

static void *relay_main(void *arg) {
    Relay *r = (Relay *)arg;
    struct epoll_event evs[MAX_EVENTS];
    pair graveyard;
    for (;;) {
        int n = epoll_wait(r->ep, evs, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        int stop = 0;
        graveyard.next = NULL;
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr == NULL) {
                stop = 1;
                continue;
            }
            on_event(r, (end *)evs[k].data.ptr, evs[k].events, &graveyard);
        }
        for (pair *p = graveyard.next; p != NULL;) {
            pair *next = p->next;
            free(p);
            p = next;
        }
        if (stop) break;
    }
    /* stopping: close what is left */
    graveyard.next = NULL;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        pair *p = r->live.next;
        pthread_mutex_unlock(&r->mu);
        if (p == &r->live) break;
        close_pair(r, p, &graveyard);
    }
    for (pair *p = graveyard.next; p != NULL;) {
        pair *next = p->next;
        free(p);
        p = next;
    }
    return NULL;
}

static int Relay_init(Relay *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    self->ep = -1;
    self->wake = -1;
    self->running = 0;
    self->live.next = self->live.prev = &self->live;
    self->count = 0;
    self->chunk = NULL;
    pthread_mutex_init(&self->mu, NULL);
    return 0;
}

static PyObject *Relay_start(Relay *self, PyObject *Py_UNUSED(ignored)) {
    if (self->running) Py_RETURN_NONE;
    self->chunk = malloc(CHUNK);
    if (self->chunk == NULL) return PyErr_NoMemory();
    self->ep = epoll_create1(EPOLL_CLOEXEC);
    self->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->ep < 0 || self->wake < 0) goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(self->ep, EPOLL_CTL_ADD, self->wake, &ev) < 0) goto fail;
    if (pthread_create(&self->thread, NULL, relay_main, self) != 0) goto fail;
    self->running = 1;
    Py_RETURN_NONE;
fail:
    PyErr_SetFromErrno(PyExc_OSError);
    if (self->ep >= 0) close(self->ep);
    if (self->wake >= 0) close(self->wake);
    self->ep = self->wake = -1;
    free(self->chunk);
    self->chunk = NULL;
    return NULL;
}

static PyObject *Relay_add(Relay *self, PyObject *args) {
    int a, b;
    if (!PyArg_ParseTuple(args, "ii", &a, &b)) return NULL;
    if (!self->running) {
        close(a);
        close(b);
        PyErr_SetString(PyExc_RuntimeError, "relay is not running");
        return NULL;
    }
    pair *p = calloc(1, sizeof *p);
    if (p == NULL) {
        close(a);
        close(b);
        return PyErr_NoMemory();
    }
    p->fd[0] = a;
    p->fd[1] = b;
    for (int i = 0; i < 2; i++) {
        p->e[i].p = p;
        p->e[i].side = i;
        int fl = fcntl(p->fd[i], F_GETFL);
        if (fl >= 0) fcntl(p->fd[i], F_SETFL, fl | O_NONBLOCK);
    }
    pthread_mutex_lock(&self->mu);
    list_insert(&self->live, p);
    self->count++;
    pthread_mutex_unlock(&self->mu);
    /* epoll reports data already waiting (a peeked preface) right after the add */
    for (int i = 0; i < 2; i++) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = &p->e[i]};
        if (epoll_ctl(self->ep, EPOLL_CTL_ADD, p->fd[i], &ev) == 0) continue;
        int err = errno;
        if (i == 0) { /* nobody else knows the pair yet */
            pthread_mutex_lock(&self->mu);
            list_remove(p);
            self->count--;
            pthread_mutex_unlock(&self->mu);
            close(a);
            close(b);
            free(p);
        } else { /* the relay thread may already serve fd[0]: have it close the pair */
            p->broken = 1;
            shutdown(p->fd[0], SHUT_RDWR);
        }
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

static PyObject *Relay_stop(Relay *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->running) Py_RETURN_NONE;
    uint64_t one = 1;
    if (write(self->wake, &one, sizeof one) < 0) return PyErr_SetFromErrno(PyExc_OSError);
    self->running = 0; /* before the GIL is released: no add() from now on */
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    close(self->ep);
    close(self->wake);
    self->ep = self->wake = -1;
    free(self->chunk);
    self->chunk = NULL;
    Py_RETURN_NONE;
}

static PyObject *Relay_active(Relay *self, void *Py_UNUSED(closure)) {
    pthread_mutex_lock(&self->mu);
    long n = self->count;
    pthread_mutex_unlock(&self->mu);
    return PyLong_FromLong(n);
}

static void Relay_dealloc(Relay *self) {
    if (self->running) {
        PyObject *r = Relay_stop(self, NULL);
        Py_XDECREF(r);
        PyErr_Clear();
    }
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Relay_methods[] = {
    {"start", (PyCFunction)Relay_start, METH_NOARGS, "Start the relay thread."},
    {"add", (PyCFunction)Relay_add, METH_VARARGS,
     "add(a, b): relay between two connected sockets, taking ownership of both descriptors."},
    {"stop", (PyCFunction)Relay_stop, METH_NOARGS, "Close every pair and stop the thread."},
    {NULL},
};

static PyGetSetDef Relay_getset[] = {
    {"active", (getter)Relay_active, NULL, "pairs being relayed", NULL},
    {NULL},
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "server.embed._relay.Relay",
    .tp_doc = "Copies bytes between pairs of sockets on a thread of its own, without the GIL.",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Relay_init,
    .tp_dealloc = (destructor)Relay_dealloc,
    .tp_methods = Relay_methods,
    .tp_getset = Relay_getset,
};

static struct PyModuleDef relaymodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "server.embed._relay",
    .m_doc = "The native byte relay of the shared client port.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelayType) < 0) return NULL;
    PyObject *m = PyModule_Create(&relaymodule);
    if (m == NULL) return NULL;
    Py_INCREF(&RelayType);
    if (PyModule_AddObject(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(&RelayType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
