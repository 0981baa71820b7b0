/* floor_relay.c - the benchmark's lower bound: the least work an authenticating HTTP/1.1 proxy can do.
 *
 *   floor_relay LISTEN_PORT UPSTREAM_PORT 'Authorization: Bearer <token>'
 *
 * Single-threaded, level-triggered epoll, no libraries. Every client connection gets its own
 * upstream connection to 127.0.0.1:UPSTREAM_PORT. For every request head it rewrites an
 * absolute-form target (GET http://host/p HTTP/1.1) to origin-form, inserts the Authorization line
 * after the request line and writes the head (plus any body bytes already read) upstream with one
 * writev. Request bodies are Content-Length only (chunked request bodies close the connection).
 * Response bytes are relayed untouched. Not a product: no timeouts, no header validation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define IN_CAP (64 * 1024) /* request bytes read from the client, not yet sent (head limit) */

struct conn;
struct end {
    int fd;
    int side; /* 0: client, 1: upstream */
    struct conn *c;
};
struct conn {
    struct end cl, up;
    int up_connected;
    long long body_left; /* request body bytes still to pass through */
    size_t in_len;       /* bytes in in[] */
    char *out;           /* request bytes waiting for the upstream to become writable */
    size_t out_len, out_off;
    char *down;          /* response bytes waiting for the client to become writable */
    size_t down_len, down_off;
    char in[IN_CAP];
};

static int ep;
static struct sockaddr_in up_addr;
static const char *auth_line; /* "Authorization: Bearer x\r\n" */
static size_t auth_len;
static char rbuf[256 * 1024]; /* one read buffer for every response */

static void watch(struct end *e, int op, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.ptr = e};
    epoll_ctl(ep, op, e->fd, &ev);
}

static void conn_close(struct conn *c)
{
    close(c->cl.fd); /* close() also removes the fds from the epoll set */
    close(c->up.fd);
    free(c->out);
    free(c->down);
    free(c);
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* Queue bytes for the upstream (after a short write or before the connect completes). */
static int queue_out(struct conn *c, const struct iovec *iov, int n, size_t skip)
{
    size_t total = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    total -= skip;
    char *p = realloc(c->out, c->out_len + total);
    if (!p) return -1;
    c->out = p;
    for (int i = 0; i < n; i++) {
        size_t l = iov[i].iov_len;
        const char *b = iov[i].iov_base;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(c->out + c->out_len, b + skip, l - skip);
        c->out_len += l - skip;
        skip = 0;
    }
    return 0;
}

/* Send iov upstream with one writev when nothing is queued; queue what is left. */
static int send_up(struct conn *c, struct iovec *iov, int n)
{
    size_t total = 0, sent = 0;
    for (int i = 0; i < n; i++) total += iov[i].iov_len;
    if (c->up_connected && c->out_len == c->out_off) {
        ssize_t w = writev(c->up.fd, iov, n);
        if (w < 0 && errno != EAGAIN) return -1;
        sent = w < 0 ? 0 : (size_t)w;
        if (sent == total) return 0;
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (queue_out(c, iov, n, sent) < 0) return -1;
    watch(&c->up, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
    watch(&c->cl, EPOLL_CTL_MOD, c->down ? EPOLLOUT : 0); /* stop reading the client meanwhile */
    return 0;
}

static long long content_length(const char *h, const char *end, int *chunked)
{
    long long cl = 0;
    for (const char *p = h; p < end;) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) break;
        if (eol - p > 15 && strncasecmp(p, "content-length:", 15) == 0)
            cl = strtoll(p + 15, NULL, 10);
        else if (eol - p > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
            *chunked = 1;
        p = eol + 1;
    }
    return cl;
}

/* Forward what in[] holds: body bytes, then complete heads. 0: ok, -1: close. */
static int process_in(struct conn *c)
{
    size_t off = 0;
    while (off < c->in_len) {
        if (c->out_len != c->out_off) break; /* wait for the upstream to drain */
        char *p = c->in + off;
        size_t avail = c->in_len - off;
        if (c->body_left > 0) {
            size_t n = avail < (size_t)c->body_left ? avail : (size_t)c->body_left;
            struct iovec iov = {p, n};
            if (send_up(c, &iov, 1) < 0) return -1;
            c->body_left -= (long long)n;
            off += n;
            continue;
        }
        char *hend = memmem(p, avail, "\r\n\r\n", 4);
        if (!hend) break;
        hend += 4;
        char *eol = (char *)memchr(p, '\n', (size_t)(hend - p)) + 1;
        char *sp = memchr(p, ' ', (size_t)(eol - p));
        if (!sp) return -1;
        char *target = sp + 1, *path = target;
        if (*target != '/') { /* absolute-form: skip scheme://authority */
            char *ss = memmem(target, (size_t)(eol - target), "://", 3);
            if (!ss) return -1;
            path = memchr(ss + 3, '/', (size_t)(eol - ss - 3));
            char *sp2 = memchr(ss + 3, ' ', (size_t)(eol - ss - 3));
            if (!path || (sp2 && sp2 < path)) return -1; /* "http://host HTTP/1.1": not handled */
        }
        int chunked = 0;
        c->body_left = content_length(eol, hend, &chunked);
        if (chunked) return -1;
        size_t head_len = (size_t)(hend - p);
        size_t body_now = avail - head_len < (size_t)c->body_left ? avail - head_len
                                                                   : (size_t)c->body_left;
        struct iovec iov[5] = {
            {p, (size_t)(target - p)},         /* "GET " */
            {path, (size_t)(eol - path)},      /* "/p HTTP/1.1\r\n" */
            {(void *)auth_line, auth_len},     /* "Authorization: Bearer x\r\n" */
            {eol, (size_t)(hend - eol)},       /* the other header lines and the blank line */
            {hend, body_now},                  /* body bytes that came with the head */
        };
        if (send_up(c, iov, body_now ? 5 : 4) < 0) return -1;
        c->body_left -= (long long)body_now;
        off += head_len + body_now;
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    return 0;
}

static int on_client(struct conn *c, unsigned ev)
{
    if (ev & EPOLLOUT) { /* flush queued response bytes */
        ssize_t w = write(c->cl.fd, c->down + c->down_off, c->down_len - c->down_off);
        if (w < 0) return errno == EAGAIN ? 0 : -1;
        c->down_off += (size_t)w;
        if (c->down_off < c->down_len) return 0;
        free(c->down);
        c->down = NULL;
        watch(&c->cl, EPOLL_CTL_MOD, c->out_len == c->out_off ? EPOLLIN : 0);
        watch(&c->up, EPOLL_CTL_MOD, EPOLLIN | (c->out_len != c->out_off ? EPOLLOUT : 0));
        return 0;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (c->in_len == IN_CAP) return -1; /* head larger than the buffer */
        ssize_t r = read(c->cl.fd, c->in + c->in_len, IN_CAP - c->in_len);
        if (r == 0) return -1;
        if (r < 0) return errno == EAGAIN ? 0 : -1;
        c->in_len += (size_t)r;
        return process_in(c);
    }
    return 0;
}

static int on_upstream(struct conn *c, unsigned ev)
{
    if (ev & EPOLLOUT) {
        c->up_connected = 1;
        while (c->out_off < c->out_len) {
            ssize_t w = write(c->up.fd, c->out + c->out_off, c->out_len - c->out_off);
            if (w < 0) return errno == EAGAIN ? 0 : -1;
            c->out_off += (size_t)w;
        }
        c->out_off = c->out_len = 0;
        watch(&c->up, EPOLL_CTL_MOD, c->down ? 0 : EPOLLIN);
        watch(&c->cl, EPOLL_CTL_MOD, c->down ? EPOLLOUT : EPOLLIN);
        if (process_in(c) < 0) return -1; /* heads that arrived meanwhile */
        return 0;
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        ssize_t r = read(c->up.fd, rbuf, sizeof rbuf);
        if (r == 0) return -1;
        if (r < 0) return errno == EAGAIN ? 0 : -1;
        ssize_t w = write(c->cl.fd, rbuf, (size_t)r);
        if (w < 0 && errno != EAGAIN) return -1;
        if (w < 0) w = 0;
        if (w == r) return 0;
        c->down_len = (size_t)(r - w);
        c->down_off = 0;
        c->down = malloc(c->down_len);
        if (!c->down) return -1;
        memcpy(c->down, rbuf + w, c->down_len);
        watch(&c->up, EPOLL_CTL_MOD, c->out_len != c->out_off ? EPOLLOUT : 0);
        watch(&c->cl, EPOLL_CTL_MOD, EPOLLOUT);
    }
    return 0;
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        int ufd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct conn *c = malloc(sizeof *c); /* in[] is left untouched until used */
        if (ufd < 0 || !c) {
            close(fd);
            if (ufd >= 0) close(ufd);
            free(c);
            continue;
        }
        memset(c, 0, offsetof(struct conn, in));
        c->cl = (struct end){fd, 0, c};
        c->up = (struct end){ufd, 1, c};
        set_nodelay(fd);
        set_nodelay(ufd);
        if (connect(ufd, (struct sockaddr *)&up_addr, sizeof up_addr) == 0)
            c->up_connected = 1;
        else if (errno != EINPROGRESS) {
            close(fd);
            close(ufd);
            free(c);
            continue;
        }
        watch(&c->cl, EPOLL_CTL_ADD, EPOLLIN);
        watch(&c->up, EPOLL_CTL_ADD, c->up_connected ? EPOLLIN : EPOLLIN | EPOLLOUT);
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: floor_relay LISTEN_PORT UPSTREAM_PORT 'Authorization: Bearer x'\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    static char line[4096];
    auth_len = (size_t)snprintf(line, sizeof line, "%s\r\n", argv[3]);
    auth_line = line;
    up_addr = (struct sockaddr_in){.sin_family = AF_INET,
                                   .sin_port = htons((unsigned short)atoi(argv[2])),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in la = {.sin_family = AF_INET,
                             .sin_port = htons((unsigned short)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 4096) < 0) {
        perror("floor_relay: bind/listen");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct end lend = {lfd, -1, NULL};
    watch(&lend, EPOLL_CTL_ADD, EPOLLIN);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct end *e = evs[i].data.ptr;
            if (!e) continue; /* its connection was closed earlier in this batch */
            if (e->side < 0) {
                on_accept(lfd);
                continue;
            }
            struct conn *c = e->c;
            int rc = e->side == 0 ? on_client(c, evs[i].events) : on_upstream(c, evs[i].events);
            if (rc < 0) {
                /* later events in this batch may point at c: neutralise them */
                for (int j = i + 1; j < n; j++) {
                    struct end *o = evs[j].data.ptr;
                    if (o == &c->cl || o == &c->up) evs[j].data.ptr = NULL, evs[j].events = 0;
                }
                conn_close(c);
            }
        }
    }
}
