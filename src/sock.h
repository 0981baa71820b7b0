/* sock.h - the data path's socket calls: recv() into an input buffer and sendmsg() of iovecs
 * straight on a libuv stream's descriptor, and the writes that cannot complete at once (see
 * sock.c). A queued write owns a copy of its bytes until its callback calls sock_write_done. */
#ifndef AUTHPROXY_SOCK_H
#define AUTHPROXY_SOCK_H

#include <sys/types.h>
#include <uv.h>

#include "buf.h"

/* Receives into b's free space (b borrows the pool's shared block when it has none).
 * Returns the bytes received (> 0), 0 when nothing is there, UV_EOF, UV_ENOBUFS when b has no
 * room or memory ran out, or another negative libuv error. */
ssize_t sock_recv(uv_stream_t *s, struct inbuf *b, struct bufpool *p);
/* Sends what the socket takes now (nothing while libuv still has queued writes, which go
 * first) and queues a copy of the rest, which libuv writes when the socket takes it, then calls
 * cb: the caller's buffers are free again on return. 0: all sent, 1: queued, -1: error. */
int sock_write(uv_stream_t *s, struct bufpool *p, const uv_buf_t *bufs, unsigned n, void *owner,
               uv_write_cb cb);
/* In cb: frees the copy and returns the owner given to sock_write. */
void *sock_write_done(uv_write_t *req);

#endif
