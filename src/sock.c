/* sock.c - the data path's socket calls (see sock.h).
 *
 * libuv tells when a socket is readable (our alloc callback hands it no buffer, so its read
 * callback gets UV_ENOBUFS and reads nothing) and carries the writes that cannot complete at
 * once; the bytes themselves move with recv() and sendmsg(), which skip the VFS layer that
 * read() and writev() go through: a measurable share of a small request's CPU. uv_buf_t has
 * struct iovec's layout on Unix (libuv documents it), so iovecs pass through unchanged. */
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
        w = sendmsg(fd_of(s), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
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

int sock_write(uv_stream_t *s, struct bufpool *p, const uv_buf_t *bufs, unsigned n, void *owner,
               uv_write_cb cb)
{
    int w = sock_send(s, bufs, n);
    if (w < 0 && w != UV_EAGAIN) return -1;
    size_t done = w > 0 ? (size_t)w : 0;
    if (done == iov_len(bufs, n)) return 0;
    return queue_copy(s, p, bufs, n, done, owner, cb) < 0 ? -1 : 1;
}

void *sock_write_done(uv_write_t *req)
{
    struct owned_write *w = (struct owned_write *)req; /* req is the first member */
    void *owner = w->owner;
    bufpool_release(w->pool, w->data, w->len);
    free(w);
    return owner;
}
