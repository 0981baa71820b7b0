/* test_sock.c - the outbox (sock.c): small writes wait for the end of the loop iteration and
 * go out in order; a large write, a flush before a close, and a full outbox send what waits
 * first. Real sockets: a socketpair per stream, libuv pipes on our ends. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "sock.h"
#include "unit.h"

#define RIG_MAX 300 /* streams: more than a ring batch holds */

struct rig {
    uv_loop_t loop;
    struct bufpool pool;
    struct outbox ob;
    int ns;
    uv_pipe_t s[RIG_MAX];
    int peer[RIG_MAX];
    uv_timer_t alive; /* an active handle, so that uv_run runs an iteration, as in the proxy */
};

static void never(uv_timer_t *t)
{
    (void)t;
}

/* Every outbox test runs twice: writes batched with io_uring, and one send() each. Where the
 * kernel refuses io_uring the first run says so and tests the send() path again. */
#define BOTH_WAYS(name)                                                                            \
    static void name(bool ring);                                                                   \
    TEST(name##_io_uring)                                                                          \
    {                                                                                              \
        name(true);                                                                                \
    }                                                                                              \
    TEST(name##_send)                                                                              \
    {                                                                                              \
        name(false);                                                                               \
    }                                                                                              \
    static void name(bool ring)

static int rig_open_n(struct rig *r, bool ring, int ns)
{
    memset(r, 0, sizeof *r);
    if (uv_loop_init(&r->loop) < 0) return -1;
    if (bufpool_init(&r->pool, 4) < 0) return -1;
    int ring_error;
    if (outbox_init(&r->ob, &r->pool, ring, &ring_error) < 0) return -1;
    if (ring && !r->ob.ring_ok)
        fprintf(stderr, "    (io_uring unavailable here: %s; the send() path is tested)\n",
                strerror(-ring_error));
    outbox_start(&r->ob, &r->loop);
    uv_timer_init(&r->loop, &r->alive);
    uv_timer_start(&r->alive, never, 3600 * 1000, 0);
    r->ns = ns;
    for (int i = 0; i < ns; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return -1;
        fcntl(sv[1], F_SETFL, O_NONBLOCK);
        uv_pipe_init(&r->loop, &r->s[i], 0);
        if (uv_pipe_open(&r->s[i], sv[0]) < 0) return -1;
        r->peer[i] = sv[1];
    }
    return 0;
}

static int rig_open(struct rig *r, bool ring)
{
    return rig_open_n(r, ring, 2);
}

static void rig_close(struct rig *r)
{
    for (int i = 0; i < r->ns; i++) {
        uv_close((uv_handle_t *)&r->s[i], NULL);
        close(r->peer[i]);
    }
    uv_close((uv_handle_t *)&r->alive, NULL);
    outbox_close(&r->ob);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    outbox_free(&r->ob);
    bufpool_destroy(&r->pool);
    CHECK_EQ_INT(uv_loop_close(&r->loop), 0);
}

/* What the peer of stream i has received so far (non-blocking), NUL-terminated. */
static size_t peer_read(struct rig *r, int i, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t k = read(r->peer[i], buf + n, cap - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
    }
    buf[n] = '\0';
    return n;
}

static int pendings;            /* gathered writes that became queued ones */
static struct rig *drained_rig; /* set: on_pending empties peer 0, as a peer reading then would */
static char drained[64];        /* what it read besides fill()'s dots */

static void collect(int fd, char *keep, size_t cap)
{
    char buf[65536];
    ssize_t k;
    size_t n = strlen(keep);
    while ((k = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t j = 0; j < k; j++)
            if (buf[j] != '.' && n + 1 < cap) keep[n++] = buf[j];
    keep[n] = '\0';
}

static void on_pending(void *owner)
{
    (void)owner;
    pendings++;
    if (drained_rig) collect(drained_rig->peer[0], drained, sizeof drained);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    sock_write_done(req);
}

static int put_as(struct rig *r, int i, const char *text, size_t len, bool gather)
{
    uv_buf_t b = uv_buf_init((char *)text, (unsigned)len);
    struct sock_owner who = {r, on_written, on_pending};
    return sock_write((uv_stream_t *)&r->s[i], &r->ob, &b, 1, gather, &who);
}

static int put(struct rig *r, int i, const char *text, size_t len)
{
    return put_as(r, i, text, len, true);
}

BOTH_WAYS(outbox_sends_small_writes_in_order_at_the_end_of_the_iteration)
{
    static struct rig r;
    REQUIRE(rig_open(&r, ring) == 0);
    char got[256];
    CHECK_EQ_INT(put(&r, 0, "one,", 4), 0);
    CHECK_EQ_INT(put(&r, 1, "other", 5), 0);
    CHECK_EQ_INT(put(&r, 0, "two", 3), 0);
    CHECK_EQ_INT(peer_read(&r, 0, got, sizeof got), 0); /* nothing yet: gathered */
    uv_run(&r.loop, UV_RUN_NOWAIT);                     /* the check phase sends */
    CHECK_EQ_INT(peer_read(&r, 0, got, sizeof got), 7);
    CHECK_STR(got, "one,two");
    CHECK_EQ_INT(peer_read(&r, 1, got, sizeof got), 5);
    CHECK_STR(got, "other");
    CHECK_EQ_INT(r.ob.n, 0);
    rig_close(&r);
}

BOTH_WAYS(outbox_large_write_sends_what_waits_first)
{
    static struct rig r;
    REQUIRE(rig_open(&r, ring) == 0);
    size_t big = OUTBOX_WRITE_MAX + 100;
    char *b = malloc(big), *got = malloc(big + 64);
    REQUIRE(b && got);
    memset(b, 'x', big);
    CHECK_EQ_INT(put(&r, 0, "head", 4), 0);
    CHECK_EQ_INT(put(&r, 1, "kept", 4), 0);
    CHECK_EQ_INT(put(&r, 0, b, big), 0); /* sent at once, after "head" */
    CHECK_EQ_INT(peer_read(&r, 0, got, big + 64), big + 4);
    CHECK(memcmp(got, "head", 4) == 0 && got[4] == 'x' && got[big + 3] == 'x');
    CHECK_EQ_INT(peer_read(&r, 1, got, big + 64), 0); /* the other stream still waits */
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(peer_read(&r, 1, got, big + 64), 4);
    free(b);
    free(got);
    rig_close(&r);
}

/* Body bytes behind a head are not gathered: they go out at once, after what waits. */
BOTH_WAYS(outbox_body_bytes_go_out_at_once_after_the_head)
{
    static struct rig r;
    REQUIRE(rig_open(&r, ring) == 0);
    char got[64];
    CHECK_EQ_INT(put(&r, 0, "head|", 5), 0);
    CHECK_EQ_INT(put_as(&r, 0, "body", 4, false), 0);
    CHECK_EQ_INT(peer_read(&r, 0, got, sizeof got), 9);
    CHECK_STR(got, "head|body");
    CHECK_EQ_INT(put_as(&r, 1, "alone", 5, false), 0);
    CHECK_EQ_INT(peer_read(&r, 1, got, sizeof got), 5);
    rig_close(&r);
}

/* Fills stream i's socket until it takes no more; returns the bytes written. */
static size_t fill(struct rig *r, int i)
{
    uv_os_fd_t fd;
    uv_fileno((uv_handle_t *)&r->s[i], &fd);
    char junk[4096];
    memset(junk, '.', sizeof junk);
    size_t n = 0;
    for (int k = 0; k < 100000; k++) { /* bounded */
        ssize_t w = send(fd, junk, sizeof junk, MSG_DONTWAIT);
        if (w <= 0) break;
        n += (size_t)w;
    }
    return n;
}

/* Reads everything the peer of stream i gets until `tail` has arrived (loop turns bounded);
 * returns the bytes read, and whether the last ones were `tail`. */
static size_t drain_until(struct rig *r, int i, const char *tail, bool *ended)
{
    size_t n = 0, tl = strlen(tail);
    char last[16] = {0}, buf[65536];
    *ended = false;
    for (int k = 0; k < 2000 && !*ended; k++) {
        ssize_t got = read(r->peer[i], buf, sizeof buf);
        if (got > 0) {
            n += (size_t)got;
            size_t keep = (size_t)got < tl ? (size_t)got : tl;
            memmove(last, last + keep, tl - keep);
            memcpy(last + tl - keep, buf + got - keep, keep);
            *ended = memcmp(last, tail, tl) == 0;
        }
        uv_run(&r->loop, UV_RUN_NOWAIT);
    }
    return n;
}

/* A gathered write its socket cannot take becomes a queued one: the owner is told (pending),
 * then the bytes arrive once the peer reads, after everything before them. */
BOTH_WAYS(outbox_write_the_socket_cannot_take_becomes_pending)
{
    static struct rig r;
    REQUIRE(rig_open(&r, ring) == 0);
    pendings = 0;
    size_t filled = fill(&r, 0);
    REQUIRE(filled > 0);
    CHECK_EQ_INT(put(&r, 0, "tail", 4), 0);
    CHECK_EQ_INT(put(&r, 1, "free", 4), 0); /* two sockets: a batch, where io_uring works */
    uv_run(&r.loop, UV_RUN_NOWAIT);         /* the end-of-iteration send finds the socket full */
    CHECK_EQ_INT(pendings, 1);
    char got[16];
    CHECK_EQ_INT(peer_read(&r, 1, got, sizeof got), 4);
    CHECK_EQ_INT(r.ob.ring_batches, r.ob.ring_ok ? 1 : 0);
    bool ended;
    CHECK_EQ_INT(drain_until(&r, 0, "tail", &ended), filled + 4);
    CHECK(ended);

    /* the same before a close: kept (pending) when the owner may still linger ... */
    pendings = 0;
    filled = fill(&r, 1);
    CHECK_EQ_INT(put(&r, 1, "last", 4), 0);
    sock_flush(&r.ob, (uv_stream_t *)&r.s[1], true);
    CHECK_EQ_INT(pendings, 1);
    CHECK_EQ_INT(drain_until(&r, 1, "last", &ended), filled + 4);
    CHECK(ended);
    /* ... dropped, with nobody told, just before uv_close */
    filled = fill(&r, 1);
    CHECK_EQ_INT(put(&r, 1, "gone", 4), 0);
    sock_flush(&r.ob, (uv_stream_t *)&r.s[1], false);
    CHECK_EQ_INT(pendings, 1);
    CHECK_EQ_INT(r.ob.n == 0 || r.ob.items[r.ob.n - 1].s == NULL, 1);
    rig_close(&r);
}

BOTH_WAYS(outbox_flush_before_close_and_full_outbox)
{
    static struct rig r;
    REQUIRE(rig_open(&r, ring) == 0);
    char got[256];
    CHECK_EQ_INT(put(&r, 0, "bye", 3), 0);
    sock_flush(&r.ob, (uv_stream_t *)&r.s[0], true); /* what a close does first */
    CHECK_EQ_INT(peer_read(&r, 0, got, sizeof got), 3);
    CHECK_STR(got, "bye");
    uv_run(&r.loop, UV_RUN_NOWAIT); /* and it is not sent twice */
    CHECK_EQ_INT(peer_read(&r, 0, got, sizeof got), 0);

    /* more than the outbox holds (200 x 1000 bytes): everything arrives, in order */
    enum { N = 200, SZ = 1000 };
    char *want = malloc(N * SZ), *seen = malloc(N * SZ + 1);
    REQUIRE(want && seen);
    size_t n = 0;
    int taken = 0;
    for (int i = 0; i < N; i++) {
        memset(want + i * SZ, 'a' + i % 26, SZ);
        if (put(&r, 1, want + i * SZ, SZ) == 0) taken++;
        ssize_t k; /* keep the socket from filling, as a reading peer does */
        while (n < N * SZ && (k = read(r.peer[1], seen + n, N * SZ - n)) > 0)
            n += (size_t)k;
    }
    CHECK_EQ_INT(taken, N);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    ssize_t k;
    while (n < N * SZ && (k = read(r.peer[1], seen + n, N * SZ - n)) > 0)
        n += (size_t)k;
    CHECK_EQ_INT(n, N * SZ);
    CHECK(memcmp(seen, want, N * SZ) == 0);
    free(want);
    free(seen);
    rig_close(&r);
}

/* Two writes to one socket, not adjacent, in one iteration: a batch sends to a socket once, so
 * the second starts the next batch, and each peer gets its bytes in order. The same while the
 * socket is full: the first becomes pending, and the second queues behind it. */
BOTH_WAYS(outbox_second_write_to_a_socket_keeps_its_order)
{
    static struct rig r;
    REQUIRE(rig_open(&r, ring) == 0);
    char got[64];
    CHECK_EQ_INT(put(&r, 0, "a1,", 3), 0);
    CHECK_EQ_INT(put(&r, 1, "b1,", 3), 0);
    CHECK_EQ_INT(put(&r, 0, "a2,", 3), 0);
    CHECK_EQ_INT(put(&r, 1, "b2", 2), 0);
    CHECK_EQ_INT(put(&r, 0, "a3", 2), 0);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(peer_read(&r, 0, got, sizeof got), 8);
    CHECK_STR(got, "a1,a2,a3");
    CHECK_EQ_INT(peer_read(&r, 1, got, sizeof got), 5);
    CHECK_STR(got, "b1,b2");
    CHECK_EQ_INT(r.ob.ring_batches, r.ob.ring_ok ? 2 : 0); /* {a1 b1} {a2 b2}, a3 alone */

    /* x1 finds the socket full and is queued; the peer then reads everything (on_pending
     * does it at that moment): x2 must still go behind x1, not into the emptied socket */
    pendings = 0;
    fill(&r, 0);
    drained_rig = &r;
    drained[0] = '\0';
    CHECK_EQ_INT(put(&r, 0, "x1,", 3), 0);
    CHECK_EQ_INT(put(&r, 1, "y", 1), 0);
    CHECK_EQ_INT(put(&r, 0, "x2", 2), 0);
    CHECK_EQ_INT(put(&r, 1, "z", 1), 0);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    drained_rig = NULL;
    CHECK_EQ_INT(pendings, 2);
    CHECK_EQ_INT(peer_read(&r, 1, got, sizeof got), 2);
    CHECK_STR(got, "yz");
    for (int k = 0; k < 200 && strlen(drained) < 5; k++) { /* libuv writes what it queued */
        uv_run(&r.loop, UV_RUN_NOWAIT);
        collect(r.peer[0], drained, sizeof drained);
    }
    CHECK_STR(drained, "x1,x2");
    rig_close(&r);
}

/* More sockets written in one iteration than a ring batch holds: every peer gets its own. */
BOTH_WAYS(outbox_more_sockets_than_a_batch_holds)
{
    static struct rig r;
    REQUIRE(rig_open_n(&r, ring, RIG_MAX) == 0);
    char want[16], got[64];
    for (int i = 0; i < RIG_MAX; i++) {
        int n = snprintf(want, sizeof want, "to %d", i);
        CHECK_EQ_INT(put(&r, i, want, (size_t)n), 0);
    }
    uv_run(&r.loop, UV_RUN_NOWAIT);
    int right = 0;
    for (int i = 0; i < RIG_MAX; i++) {
        snprintf(want, sizeof want, "to %d", i);
        peer_read(&r, i, got, sizeof got);
        right += strcmp(got, want) == 0;
    }
    CHECK_EQ_INT(right, RIG_MAX);
    CHECK_EQ_INT(r.ob.ring_batches,
                 r.ob.ring_ok ? (RIG_MAX + OUTBOX_RING_ENTRIES - 1) / OUTBOX_RING_ENTRIES : 0);
    rig_close(&r);
}

/* ---- batched reads ---- */

static struct rig *read_rig;
static struct inbuf ins[2];
static ssize_t results[2];
static int calls, order[4];
static uint32_t other_len_seen; /* stream 1's input as stream 0's callback found it */

static void on_got(uv_stream_t *s, ssize_t n)
{
    int i = s == (uv_stream_t *)&read_rig->s[0] ? 0 : 1;
    results[i] = n;
    if (calls < 4) order[calls] = i;
    calls++;
    if (i == 0) other_len_seen = ins[1].len;
}

static void reads_reset(struct rig *r)
{
    read_rig = r;
    calls = 0;
    results[0] = results[1] = -1000;
    other_len_seen = 0;
}

static void reads_free(struct rig *r)
{
    for (int i = 0; i < 2; i++)
        inbuf_free(&ins[i], &r->pool);
}

/* Two readable sockets: both are received in one submission, then each callback runs, in the
 * order the sockets were reported; the first callback already finds the second's bytes. */
TEST(reads_of_an_iteration_are_received_together_then_handled_in_order)
{
    static struct rig r;
    REQUIRE(rig_open(&r, true) == 0);
    if (!r.ob.ring_ok) { /* nothing to batch: the caller receives at once */
        CHECK(!sock_recv_later(&r.ob, (uv_stream_t *)&r.s[0], &ins[0], on_got));
        rig_close(&r);
        return;
    }
    reads_reset(&r);
    CHECK_EQ_INT(write(r.peer[0], "hello", 5), 5);
    CHECK_EQ_INT(write(r.peer[1], "world!", 6), 6);
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[0], &ins[0], on_got));
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[1], &ins[1], on_got));
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[0], &ins[0], on_got)); /* reported twice */
    CHECK_EQ_INT(calls, 0);
    uint64_t before = r.ob.ring_batches;
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(r.ob.ring_batches - before, 1);
    CHECK_EQ_INT(calls, 2);
    CHECK(order[0] == 0 && order[1] == 1);
    CHECK_EQ_INT(results[0], 5);
    CHECK_EQ_INT(results[1], 6);
    CHECK_EQ_INT(other_len_seen, 6);
    CHECK(ins[0].len == 5 && memcmp(ins[0].base, "hello", 5) == 0);
    CHECK(ins[1].len == 6 && memcmp(ins[1].base, "world!", 6) == 0);
    CHECK_EQ_INT(r.ob.nr, 0);

    /* appended after what is held; nothing there reads as 0; end of stream as UV_EOF */
    reads_reset(&r);
    CHECK_EQ_INT(write(r.peer[0], " again", 6), 6);
    shutdown(r.peer[1], SHUT_WR);
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[0], &ins[0], on_got));
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[1], &ins[1], on_got));
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(results[0], 6);
    CHECK(ins[0].len == 11 && memcmp(ins[0].base, "hello again", 11) == 0);
    CHECK_EQ_INT(results[1], UV_EOF);
    reads_reset(&r);
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[0], &ins[0], on_got));
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(results[0], 0);
    reads_free(&r);
    rig_close(&r);
}

/* A read cancelled before the batch (its owner stopped reading, or closed) is not made: the
 * bytes stay in the socket and no callback runs; a full input buffer gets UV_ENOBUFS. */
TEST(reads_cancelled_before_the_batch_are_not_made)
{
    static struct rig r;
    REQUIRE(rig_open(&r, true) == 0);
    if (!r.ob.ring_ok) {
        rig_close(&r);
        return;
    }
    reads_reset(&r);
    CHECK_EQ_INT(write(r.peer[0], "kept", 4), 4);
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[0], &ins[0], on_got));
    sock_recv_cancel(&r.ob, (uv_stream_t *)&r.s[0]);
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(calls, 0);
    CHECK_EQ_INT(sock_recv((uv_stream_t *)&r.s[0], &ins[0], &r.pool), 4); /* still there */
    CHECK(ins[0].len == 4 && memcmp(ins[0].base, "kept", 4) == 0);
    inbuf_settle(&ins[0], &r.pool);

    reads_reset(&r);
    CHECK_EQ_INT(write(r.peer[1], "x", 1), 1);
    REQUIRE(inbuf_ensure(&ins[1], &r.pool) == 0);
    ins[1].len = ins[1].cap; /* no room */
    CHECK(sock_recv_later(&r.ob, (uv_stream_t *)&r.s[1], &ins[1], on_got));
    uv_run(&r.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(results[1], UV_ENOBUFS);
    reads_free(&r);
    rig_close(&r);
}
