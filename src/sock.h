/* sock.h - the data path's socket calls: recv() into an input buffer, small writes gathered
 * and sent together at the end of each loop iteration, larger ones sent at once with sendmsg()
 * of iovecs, straight on a libuv stream's descriptor; and the writes that cannot complete at
 * once (see sock.c). A queued write owns a copy of its bytes until its callback calls
 * sock_write_done; a gathered write is a copy in the loop's outbox until it is sent. */
#ifndef AUTHPROXY_SOCK_H
#define AUTHPROXY_SOCK_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

#include "buf.h"

#define OUTBOX_WRITE_MAX 4096 /* larger writes go out at once, without a copy */

/* Who a write belongs to: cb when a queued write completes; pending when a gathered write the
 * socket did not take whole becomes a queued one (cb follows), so the owner waits for it
 * exactly as for a write sock_write reported queued. */
struct sock_owner {
    void *owner;
    uv_write_cb cb;
    void (*pending)(void *owner);
};

/* A read waiting for the end of the iteration: its bytes are appended to in, then done runs. */
typedef void (*sock_read_cb)(uv_stream_t *s, ssize_t nread);
struct in_item {
    uv_stream_t *s; /* NULL once cancelled */
    struct inbuf *in;
    sock_read_cb done;
    ssize_t res;
};

struct out_item {
    uv_stream_t *s; /* NULL once sent early (sock_flush) */
    uint32_t off, len;
    struct sock_owner who;
};

#define OUTBOX_RING_ENTRIES 256 /* sends submitted together at most */

/* A socket already sent to in the batch being prepared (sock.c). */
struct ring_seen {
    uv_stream_t *s;
    uint32_t gen;
};

/* The small writes of one loop iteration, sent in order by a check handle after the loop has
 * handled every ready socket: the peers then find many requests or responses at once rather
 * than being woken for each (HAProxy sends the same way). With an io_uring they are submitted
 * together, one system call for the batch instead of one send() each. One per loop; owns its
 * buffers and its ring. */
struct outbox {
    uv_check_t check;
    struct bufpool *pool;
    char *buf;
    uint32_t used, cap;
    struct out_item *items;
    int n, max;
    struct in_item *reads; /* OUTBOX_RING_ENTRIES */
    int nr;
    bool in_recv_all;
    bool ring_ok;          /* false: one send() per write */
    uint64_t ring_batches; /* io_uring submissions so far */
    uint32_t gen;
    struct ring_seen *seen;
    struct io_uring ring;
};

/* Allocates the buffers (-1: out of memory) and, if use_ring, an io_uring; when the kernel
 * refuses one (old, disabled, or forbidden by a seccomp filter) the writes go out with one
 * send() each and why is in ring_error. outbox_start starts the check handle. */
int outbox_init(struct outbox *ob, struct bufpool *pool, bool use_ring, int *ring_error);
void outbox_start(struct outbox *ob, uv_loop_t *loop);
/* Closes the started check handle (sending what is gathered first); the buffers are freed by
 * outbox_free once the loop has run the close. */
void outbox_close(struct outbox *ob);
void outbox_free(struct outbox *ob);

/* Receives into b's free space (b borrows the pool's shared block when it has none) and adds
 * what came to b->len. Returns the bytes received (> 0), 0 when nothing is there, UV_EOF,
 * UV_ENOBUFS when b has no room or memory ran out, or another negative libuv error. */
ssize_t sock_recv(uv_stream_t *s, struct inbuf *b, struct bufpool *p);
/* With an io_uring: s is readable; its recv joins the others of this iteration, submitted
 * together once every ready socket has been seen, then done(s, result as sock_recv's) runs
 * for each in turn, after all of them have been received (so one's callback may touch
 * another's input: it is complete). false (no ring, batch full): receive now. */
bool sock_recv_later(struct outbox *ob, uv_stream_t *s, struct inbuf *in, sock_read_cb done);
/* Forgets a read waiting for the batch (the owner stopped reading s, or closes it); once the
 * batch has received, the callback runs anyway and the owner's state decides. */
void sock_recv_cancel(struct outbox *ob, uv_stream_t *s);
/* Takes bufs for s; the caller's buffers are free again on return. A small write asked to
 * gather (a message head, with a small body) while nothing is queued for s is copied into the
 * outbox (0); if the socket later takes only part of it, the rest is queued and who->pending
 * runs. Body bytes that stream behind a head are not gathered: under backpressure they wait in
 * the socket they came from rather than in copies. Otherwise what s has in the outbox is sent
 * first, then what the socket takes now (nothing while libuv still has queued writes, which go
 * first), and a copy of the rest is queued: libuv writes it when the socket takes it, then
 * calls who->cb. 0: taken, 1: queued (cb follows), -1: error.
 * An error sending gathered bytes is not reported here: the broken connection shows on its
 * read side, or on the next write, as a peer's reset does. */
int sock_write(uv_stream_t *s, struct outbox *ob, const uv_buf_t *bufs, unsigned n, bool gather,
               const struct sock_owner *who);
/* In cb: frees the copy and returns the owner given to sock_write. */
void *sock_write_done(uv_write_t *req);
/* Sends what s has in the outbox now. Called where the owner decides between closing and
 * lingering (keep: what the socket does not take is queued and who->pending runs, so the
 * owner's "is a write pending?" is true), and just before uv_close (!keep: the rest is dropped,
 * as uv_close drops any pending write, and a read waiting for the batch is forgotten). */
void sock_flush(struct outbox *ob, uv_stream_t *s, bool keep);

#endif
