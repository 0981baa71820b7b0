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
 * the end of every iteration, so a write waits only for the events already at hand. */
#include "sock.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

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

ssize_t sock_recv(uv_stream_t *s, struct inbuf *b, struct bufpool *p)
{
    if (inbuf_for_read(b, p) < 0) return UV_ENOBUFS;
    if (b->len >= b->cap) return UV_ENOBUFS; /* no room: the caller stops reading, as libuv does */
    ssize_t n;
    do
        n = recv(fd_of(s), b->base + b->len, b->cap - b->len, 0);
    while (n < 0 && errno == EINTR);
    if (n > 0) return n;
    if (n == 0) return UV_EOF;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    return uv_translate_sys_error(errno);
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

static void send_item(struct outbox *ob, struct out_item *it, bool keep)
{
    uv_buf_t b = uv_buf_init(ob->buf + it->off, it->len);
    int w = sock_send(it->s, &b, 1);
    if (w >= 0 && (uint32_t)w == it->len) return;
    if (w < 0 && w != UV_EAGAIN) return; /* broken: the owner learns it from the socket */
    if (!keep) return;                   /* the connection is being closed */
    size_t done = w > 0 ? (size_t)w : 0;
    if (queue_copy(it->s, ob->pool, &b, 1, done, it->who.owner, it->who.cb) == 0)
        it->who.pending(it->who.owner);
}

static void outbox_send_all(struct outbox *ob)
{
    for (int i = 0; i < ob->n; i++)
        if (ob->items[i].s) send_item(ob, &ob->items[i], true);
    ob->n = 0;
    ob->used = 0;
}

static void on_check(uv_check_t *h)
{
    struct outbox *ob = h->data;
    if (ob->n) outbox_send_all(ob);
}

int outbox_init(struct outbox *ob, struct bufpool *pool)
{
    ob->pool = pool;
    ob->cap = 64 * 1024;
    ob->max = 512;
    ob->used = 0;
    ob->n = 0;
    ob->buf = malloc(ob->cap);
    ob->items = malloc(sizeof *ob->items * (size_t)ob->max);
    if (!ob->buf || !ob->items) {
        outbox_free(ob);
        return -1;
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
    free(ob->buf);
    free(ob->items);
    ob->buf = NULL;
    ob->items = NULL;
}

void sock_flush(struct outbox *ob, uv_stream_t *s, bool keep)
{
    for (int i = 0; i < ob->n; i++) {
        if (ob->items[i].s != s) continue;
        struct out_item it = ob->items[i];
        ob->items[i].s = NULL; /* sent now, not again at the end of the iteration */
        send_item(ob, &it, keep);
    }
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
