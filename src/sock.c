/* sock.c - the data path's socket calls (see sock.h).
 *
 * libuv tells when a socket is readable (our alloc callback hands it no buffer, so its read
 * callback gets UV_ENOBUFS and reads nothing) and carries the writes that cannot complete at
 * once; the bytes themselves move with recv(), send() and sendmsg(), which skip the VFS layer
 * that read() and writev() go through: a measurable share of a small request's CPU. uv_buf_t
 * has struct iovec's layout on Unix (libuv documents it), so iovecs pass through unchanged.
 *
 * Small writes wait in the loop's outbox until every ready socket of the iteration has been
 * read, then go out in order, one send() each: a proxy that answers each event at once wakes
 * the client and the upstream for every request, one that sends in a batch lets them find
 * several at once (fewer context switches on their side and on ours). The outbox is empty at
 * the end of every iteration, so a write waits only for the events already at hand.
 *
 * With an io_uring the batch is one io_uring_enter() instead of one send() per write: on a
 * virtual machine a system call's entry and exit cost about 1 us (getppid() on this project's
 * VM), a good share of a small send (3-4 us by send(), 1.3-1.8 us in a batch of 32 through the
 * ring, on the same VM). Each send carries
 * MSG_DONTWAIT, so the kernel tries it once, inline, and its completion is posted before the
 * call returns (nothing is left in flight to outlive a buffer or a socket); one that the
 * socket takes only in part is handled as send() is. A batch holds at most one send per
 * socket, since two sends to one socket submitted together could complete out of order if the
 * first were cut short: a second write to a socket starts the next batch.
 *
 * Reads are batched the same way: a socket libuv reports readable joins the iteration's list,
 * and at the check phase, before the writes, one submission receives for all of them; every
 * read's bytes are added to its input before the owners' callbacks run, in the order libuv
 * reported them, since handling one connection's bytes may parse another's input (an upstream
 * response completing a client's exchange). */
#include "sock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

struct owned_write {
    uv_write_t req;
    struct bufpool *pool;
    void *owner;
    char *data;
    size_t len;
};

static int fd_of(uv_stream_t *s)
{
    uv_os_fd_t fd = -1;
    uv_fileno((uv_handle_t *)s, &fd);
    return fd;
}

/* b has a buffer with free space for a read (else the caller reports UV_ENOBUFS and its owner
 * stops reading, as libuv does). */
static bool has_room(struct inbuf *b, struct bufpool *p)
{
    return inbuf_for_read(b, p) == 0 && b->len < b->cap;
}

/* A recv's result (bytes, 0 at end of stream, or -errno, which is libuv's error on Unix) as
 * sock_recv reports it; the bytes are added to b. */
static ssize_t received(struct inbuf *b, ssize_t res)
{
    if (res > 0) {
        b->len += (uint32_t)res;
        return res;
    }
    if (res == 0) return UV_EOF;
    return res == -EAGAIN ? 0 : res;
}

ssize_t sock_recv(uv_stream_t *s, struct inbuf *b, struct bufpool *p)
{
    if (!has_room(b, p)) return UV_ENOBUFS;
    ssize_t n;
    do
        n = recv(fd_of(s), b->base + b->len, b->cap - b->len, 0);
    while (n < 0 && errno == EINTR);
    return received(b, n < 0 ? -errno : n);
}

/* Like uv_try_write: what the socket takes now, or UV_EAGAIN, or another libuv error. */
static int sock_send(uv_stream_t *s, const uv_buf_t *bufs, unsigned n)
{
    if (s->write_queue_size != 0) return UV_EAGAIN;
    struct msghdr m = {.msg_iov = (struct iovec *)bufs, .msg_iovlen = n};
    ssize_t w;
    do
        w = n == 1 ? send(fd_of(s), bufs[0].base, bufs[0].len, MSG_NOSIGNAL | MSG_DONTWAIT)
                   : sendmsg(fd_of(s), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w >= 0) return (int)w;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return UV_EAGAIN;
    return uv_translate_sys_error(errno);
}

static int queue_copy(uv_stream_t *s, struct bufpool *p, const uv_buf_t *bufs, unsigned n,
                      size_t done, void *owner, uv_write_cb cb)
{
    struct owned_write *w = malloc(sizeof *w);
    if (!w) return -1;
    w->pool = p;
    w->owner = owner;
    w->len = iov_len(bufs, n) - done;
    w->data = bufpool_alloc(p, w->len);
    if (!w->data) {
        free(w);
        return -1;
    }
    iov_copy(bufs, n, done, w->data);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->req, s, &b, 1, cb) < 0) {
        bufpool_release(p, w->data, w->len);
        free(w);
        return -1;
    }
    return 0;
}

/* What happens after a gathered write's send returned w (bytes, or a negative errno as libuv's
 * errors are on Unix): the rest is queued and the owner told, unless the socket is broken (the
 * owner learns it from the socket) or about to close (!keep). */
static void item_sent(struct outbox *ob, struct out_item *it, int w, bool keep)
{
    uv_stream_t *s = it->s;
    it->s = NULL;
    if (w >= 0 && (uint32_t)w == it->len) return;
    if (w < 0 && w != UV_EAGAIN) return;
    if (!keep) return;
    uv_buf_t b = uv_buf_init(ob->buf + it->off, it->len);
    size_t done = w > 0 ? (size_t)w : 0;
    if (queue_copy(s, ob->pool, &b, 1, done, it->who.owner, it->who.cb) == 0)
        it->who.pending(it->who.owner);
}

static void send_item(struct outbox *ob, struct out_item *it, bool keep)
{
    uv_buf_t b = uv_buf_init(ob->buf + it->off, it->len);
    item_sent(ob, it, sock_send(it->s, &b, 1), keep);
}

#define SEEN_SIZE (2 * OUTBOX_RING_ENTRIES) /* a batch fills it at most half: probes end */

/* Starts a batch: the sockets seen so far are forgotten. */
static void new_batch(struct outbox *ob)
{
    if (++ob->gen == 0) { /* after 2^32 batches: old stamps could match again */
        memset(ob->seen, 0, sizeof *ob->seen * SEEN_SIZE);
        ob->gen = 1;
    }
}

/* Adds s to the batch being prepared; false if it is there already. */
static bool seen_add(struct outbox *ob, uv_stream_t *s)
{
    size_t h = (size_t)(((uintptr_t)s >> 4) * 0x9E3779B97F4A7C15u >> 32) & (SEEN_SIZE - 1);
    for (;; h = (h + 1) & (SEEN_SIZE - 1)) {
        struct ring_seen *e = &ob->seen[h];
        if (e->gen != ob->gen) {
            *e = (struct ring_seen){.s = s, .gen = ob->gen};
            return true;
        }
        if (e->s == s) return false;
    }
}

static void ring_off(struct outbox *ob)
{
    io_uring_queue_exit(&ob->ring);
    ob->ring_ok = false;
}

/* The ring refused a submission: plain calls from now on. */
static void ring_failed(struct outbox *ob, int err)
{
    log_warn("io_uring submission failed (%s): one recv()/send() each from now on",
             uv_strerror(err < 0 ? err : UV_EIO));
    ring_off(ob);
}

/* Submits the `queued` prepared operations and hands each completion to done; returns how
 * many the ring took. Fewer: the ring failed and is off, the caller sees to the rest. */
static int ring_submit(struct outbox *ob, int queued,
                       void (*done)(struct outbox *, uint64_t data, int res))
{
    struct io_uring *r = &ob->ring;
    ob->ring_batches++;
    int sub = io_uring_submit(r), consumed = sub < 0 ? 0 : sub;
    for (int left = consumed; left > 0;) {
        struct io_uring_cqe *cqe;
        unsigned head, got = 0;
        io_uring_for_each_cqe(r, head, cqe)
        {
            done(ob, cqe->user_data, cqe->res);
            got++;
        }
        io_uring_cq_advance(r, got);
        left -= (int)got;
        /* MSG_DONTWAIT completes inline: waiting here is a safeguard, not a path */
        if (left > 0 && io_uring_wait_cqe(r, &cqe) < 0) break;
    }
    if (consumed < queued) ring_failed(ob, sub);
    return consumed;
}

static void send_done(struct outbox *ob, uint64_t i, int res)
{
    item_sent(ob, &ob->items[i], res, true);
}

/* Submits the items from `from` on, up to the first second write to a socket or a full ring,
 * and handles their results; returns where the next batch starts. */
static int ring_batch(struct outbox *ob, int from)
{
    struct io_uring *r = &ob->ring;
    new_batch(ob);
    int i = from, queued = 0;
    for (; i < ob->n && queued < OUTBOX_RING_ENTRIES; i++) {
        struct out_item *it = &ob->items[i];
        if (!it->s) continue;
        if (it->s->write_queue_size) { /* libuv's queued writes go first: this one queues */
            send_item(ob, it, true);
            continue;
        }
        if (!seen_add(ob, it->s)) break;
        struct io_uring_sqe *e = io_uring_get_sqe(r);
        io_uring_prep_send(e, fd_of(it->s), ob->buf + it->off, it->len,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
        io_uring_sqe_set_data64(e, (uint64_t)i);
        queued++;
    }
    if (queued && ring_submit(ob, queued, send_done) < queued) /* what the ring did not take */
        for (int k = from; k < i; k++)
            if (ob->items[k].s) send_item(ob, &ob->items[k], true);
    return i;
}

static void recv_done(struct outbox *ob, uint64_t i, int res)
{
    struct in_item *it = &ob->reads[i];
    it->res = received(it->in, res);
}

bool sock_recv_later(struct outbox *ob, uv_stream_t *s, struct inbuf *in, sock_read_cb done)
{
    if (!ob->ring_ok || ob->nr == OUTBOX_RING_ENTRIES || ob->in_recv_all) return false;
    ob->reads[ob->nr++] = (struct in_item){.s = s, .in = in, .done = done};
    return true;
}

void sock_recv_cancel(struct outbox *ob, uv_stream_t *s)
{
    if (ob->in_recv_all)
        return; /* received already: the callback runs, the owner's state
                 * tells it what to do with the bytes */
    for (int i = 0; i < ob->nr; i++)
        if (ob->reads[i].s == s) ob->reads[i].s = NULL;
}

/* The reads of this iteration: all received (one submission), then each callback in turn. */
static void recv_all(struct outbox *ob)
{
    struct io_uring *r = &ob->ring;
    new_batch(ob);
    int queued = 0;
    for (int i = 0; i < ob->nr; i++) {
        struct in_item *it = &ob->reads[i];
        it->res = 0;
        if (!it->s) continue;
        if (!seen_add(ob, it->s)) { /* reported twice (libuv polled again): one read */
            it->s = NULL;
            continue;
        }
        struct inbuf *b = it->in;
        if (!has_room(b, ob->pool)) {
            it->res = UV_ENOBUFS;
            continue;
        }
        struct io_uring_sqe *e = io_uring_get_sqe(r);
        io_uring_prep_recv(e, fd_of(it->s), b->base + b->len, b->cap - b->len, MSG_DONTWAIT);
        io_uring_sqe_set_data64(e, (uint64_t)i);
        queued++;
    }
    /* if the ring fails, the reads it did not take keep res 0 (nothing read): libuv reports
     * their sockets again, and their borrowed blocks go back when the callbacks settle */
    if (queued) ring_submit(ob, queued, recv_done);
    ob->in_recv_all = true; /* a read a callback starts is not batched */
    for (int i = 0; i < ob->nr; i++) {
        struct in_item *it = &ob->reads[i];
        if (!it->s) continue;
        uv_stream_t *s = it->s;
        it->s = NULL;
        it->done(s, it->res);
    }
    ob->in_recv_all = false;
    ob->nr = 0;
}

static void outbox_send_all(struct outbox *ob)
{
    int i = 0;
    while (i < ob->n && ob->ring_ok && ob->n - i > 1)
        i = ring_batch(ob, i);
    for (; i < ob->n; i++)
        if (ob->items[i].s) send_item(ob, &ob->items[i], true);
    ob->n = 0;
    ob->used = 0;
}

static void on_check(uv_check_t *h)
{
    struct outbox *ob = h->data;
    if (ob->nr) recv_all(ob);
    if (ob->n) outbox_send_all(ob);
}

/* Does this kernel complete a MSG_DONTWAIT recv that finds nothing at once, with -EAGAIN,
 * rather than waiting for data (what the batches rely on)? One recv on an empty socketpair. */
static bool ring_tries_once(struct io_uring *r)
{
    static char byte; /* not on the stack: a recv left waiting must not outlive its buffer */
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return false;
    struct io_uring_sqe *e = io_uring_get_sqe(r);
    io_uring_prep_recv(e, sv[0], &byte, 1, MSG_DONTWAIT);
    bool ok = false;
    struct io_uring_cqe *cqe;
    if (io_uring_submit(r) == 1 && io_uring_peek_cqe(r, &cqe) == 0) {
        ok = cqe->res == -EAGAIN;
        io_uring_cqe_seen(r, cqe);
    }
    close(sv[0]);
    close(sv[1]);
    return ok;
}

int outbox_init(struct outbox *ob, struct bufpool *pool, bool use_ring, int *ring_error)
{
    ob->pool = pool;
    ob->cap = 64 * 1024;
    ob->max = 512;
    ob->used = 0;
    ob->n = 0;
    ob->ring_ok = false;
    ob->ring_batches = 0;
    ob->gen = 0;
    ob->buf = malloc(ob->cap);
    ob->items = malloc(sizeof *ob->items * (size_t)ob->max);
    ob->seen = calloc(SEEN_SIZE, sizeof *ob->seen);
    ob->reads = malloc(sizeof *ob->reads * OUTBOX_RING_ENTRIES);
    ob->nr = 0;
    ob->in_recv_all = false;
    if (!ob->buf || !ob->items || !ob->seen || !ob->reads) {
        outbox_free(ob);
        return -1;
    }
    *ring_error = 0;
    if (use_ring) {
        /* SUBMIT_ALL: one refused send does not stop the others (Linux 5.18) */
        int e = io_uring_queue_init(OUTBOX_RING_ENTRIES, &ob->ring, IORING_SETUP_SUBMIT_ALL);
        if (e == -EINVAL) e = io_uring_queue_init(OUTBOX_RING_ENTRIES, &ob->ring, 0);
        if (e == 0 && !ring_tries_once(&ob->ring)) {
            io_uring_queue_exit(&ob->ring);
            e = -EOPNOTSUPP;
        }
        ob->ring_ok = e == 0;
        *ring_error = e;
    }
    return 0;
}

void outbox_start(struct outbox *ob, uv_loop_t *loop)
{
    uv_check_init(loop, &ob->check);
    ob->check.data = ob;
    uv_check_start(&ob->check, on_check);
    uv_unref((uv_handle_t *)&ob->check); /* it never keeps the loop alive */
}

void outbox_close(struct outbox *ob)
{
    outbox_send_all(ob);
    uv_close((uv_handle_t *)&ob->check, NULL);
}

void outbox_free(struct outbox *ob)
{
    if (ob->ring_ok) ring_off(ob);
    free(ob->buf);
    free(ob->items);
    free(ob->seen);
    free(ob->reads);
    ob->reads = NULL;
    ob->buf = NULL;
    ob->items = NULL;
    ob->seen = NULL;
}

void sock_flush(struct outbox *ob, uv_stream_t *s, bool keep)
{
    if (!keep) sock_recv_cancel(ob, s);
    for (int i = 0; i < ob->n; i++)
        if (ob->items[i].s == s) send_item(ob, &ob->items[i], keep); /* not again later */
}

int sock_write(uv_stream_t *s, struct outbox *ob, const uv_buf_t *bufs, unsigned n, bool gather,
               const struct sock_owner *who)
{
    size_t total = iov_len(bufs, n);
    if (gather && total <= OUTBOX_WRITE_MAX && s->write_queue_size == 0) {
        if (ob->used + total > ob->cap || ob->n == ob->max) outbox_send_all(ob);
        struct out_item *last = ob->n ? &ob->items[ob->n - 1] : NULL;
        iov_copy(bufs, n, 0, ob->buf + ob->used);
        if (last && last->s == s && last->off + last->len == ob->used) {
            last->len += (uint32_t)total;
        } else {
            ob->items[ob->n++] =
                (struct out_item){.s = s, .off = ob->used, .len = (uint32_t)total, .who = *who};
        }
        ob->used += (uint32_t)total;
        return 0;
    }
    if (ob->n) sock_flush(ob, s, true); /* what s has gathered goes first */
    int w = sock_send(s, bufs, n);
    if (w < 0 && w != UV_EAGAIN) return -1;
    size_t done = w > 0 ? (size_t)w : 0;
    if (done == total) return 0;
    return queue_copy(s, ob->pool, bufs, n, done, who->owner, who->cb) < 0 ? -1 : 1;
}

void *sock_write_done(uv_write_t *req)
{
    struct owned_write *w = (struct owned_write *)req; /* req is the first member */
    void *owner = w->owner;
    bufpool_release(w->pool, w->data, w->len);
    free(w);
    return owner;
}
