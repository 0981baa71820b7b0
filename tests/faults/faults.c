/* faults.c - LD_PRELOAD fault injection for the e2e tests (build/libfaults.so).
 *
 * Interposes the libc calls the proxy's upstream side makes, so that tests reach what a
 * loopback network never does on its own:
 *   getaddrinfo  a name ending in ".slow.test" answers 127.0.0.1 after AUTHPROXY_FAULT_GAI_MS
 *                (default 1000) ms, on libuv's thread pool as a dead nameserver would; one
 *                ending in ".nxdomain.test" fails with EAI_NONAME at once. Each start and
 *                answer is logged to stderr ("faults: getaddrinfo NAME started", "... answered")
 *                so tests can wait for them.
 *   connect      to 127.0.0.1 on a port listed in AUTHPROXY_FAULT_UNREACH_PORTS (comma-separated)
 *                fails at once with ENETUNREACH, as a route that vanished does.
 * Everything else goes to the real functions. No state is kept between calls; nothing to free. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void say(const char *what, const char *name)
{
    char line[512];
    int n = snprintf(line, sizeof line, "faults: getaddrinfo %s %s\n", name, what);
    if (n > 0) {
        ssize_t w = write(STDERR_FILENO, line, (size_t)n < sizeof line ? (size_t)n : sizeof line);
        (void)w;
    }
}

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && ends_with(node, ".nxdomain.test")) {
        say("failed", node);
        return EAI_NONAME;
    }
    if (node && ends_with(node, ".slow.test")) {
        say("started", node);
        const char *v = getenv("AUTHPROXY_FAULT_GAI_MS");
        long ms = v ? strtol(v, NULL, 10) : 1000;
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
        int r = real("127.0.0.1", service, hints, res);
        say("answered", node);
        return r;
    }
    return real(node, service, hints, res);
}

static int port_listed(int port)
{
    const char *v = getenv("AUTHPROXY_FAULT_UNREACH_PORTS");
    while (v && *v) {
        char *end;
        long p = strtol(v, &end, 10);
        if (end == v) break;
        if (p == port) return 1;
        v = *end == ',' ? end + 1 : end;
    }
    return 0;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    connect_fn real = (connect_fn)dlsym(RTLD_NEXT, "connect");
    if (addr && addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        if (a->sin_addr.s_addr == htonl(INADDR_LOOPBACK) && port_listed(ntohs(a->sin_port))) {
            errno = ENETUNREACH;
            return -1;
        }
    }
    return real(fd, addr, len);
}
