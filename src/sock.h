/* sock.h - the data path's socket calls: recv() into an input buffer and sendmsg() of iovecs
 * straight on a libuv stream's descriptor (see sock.c). Owns no memory. */
#ifndef AUTHPROXY_SOCK_H
#define AUTHPROXY_SOCK_H

#include <sys/types.h>
#include <uv.h>

#include "buf.h"

/* Receives into b's free space (b borrows the pool's shared block when it has none).
 * Returns the bytes received (> 0), 0 when nothing is there (or no room), UV_EOF, UV_ENOBUFS
 * when out of memory, or another negative libuv error. */
ssize_t sock_recv(uv_stream_t *s, struct inbuf *b, struct bufpool *p);
/* Like uv_try_write: what the socket takes now, or UV_EAGAIN (also while libuv has queued
 * writes, which must go first), or another negative libuv error. */
int sock_send(uv_stream_t *s, const uv_buf_t *bufs, unsigned n);

#endif
