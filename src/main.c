/* main.c - command line, process set-up, signals (reload, drain), the loop's life.
 *
 * Owns the one struct loop of this process and the configuration reference it holds. */
#include <malloc.h>
#include <signal.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "loop.h"
#include "proxy.h"
#include "server.h"
#include "token.h"
#include "trim.h"
#include "upstream.h"

#define AUTHPROXY_VERSION "0.1.0"
#define DRAIN_POLL_MS 50
#define REVOKE_RESERVE_MAX_MS 2000 /* of drain_ms kept for the revocations at most */
#define BUFPOOL_KEEP 512           /* I/O blocks kept for reuse (16 MiB at most) */

static const char usage[] =
    "usage: authproxy [-c FILE] [--strict]         run (default FILE: " CONFIG_DEFAULT_PATH ")\n"
    "       authproxy -c FILE --check              validate, print routes and providers\n"
    "       authproxy -c FILE --token NAME         mint (or reuse) a token and print it\n"
    "       authproxy --version | --help\n";

/* The stop (SIGTERM, SIGINT): stop accepting, let in-flight requests finish, close what is
 * left, revoke tokens, close every handle so that uv_run returns. The whole of it is bounded by
 * limits.drain_ms from the signal: the revocations get what the drain left (the drain leaves
 * them a quarter of drain_ms, at most 2 s, when there are tokens to revoke); a name resolution
 * still running on libuv's thread pool at the end (it cannot be cancelled) is abandoned. */
static void on_hard_stop(uv_timer_t *t)
{
    struct loop *l = t->data;
    log_warn("stop: limits.drain_ms is over with work still pending (name resolution): exiting");
    uv_stop(&l->uv);
}

static uint64_t stop_left_ms(struct loop *l)
{
    uint64_t now = uv_now(&l->uv);
    return l->stop_deadline_ms > now ? l->stop_deadline_ms - now : 0;
}

/* Last step of a stop: every handle is closed so that uv_run returns. */
static void loop_close_all(struct loop *l)
{
    token_cache_close(l);
    /* SIGTERM/SIGINT stay watched (a second one still exits at once, with 0) without keeping
     * the loop running; closed once uv_run has returned */
    uv_unref((uv_handle_t *)&l->sigterm);
    uv_unref((uv_handle_t *)&l->sigint);
    uv_close((uv_handle_t *)&l->sighup, NULL);
    /* does not keep the loop running; fires only if something outlives the deadline */
    uv_timer_start(&l->drain_timer, on_hard_stop, stop_left_ms(l) + DRAIN_POLL_MS, 0);
    uv_unref((uv_handle_t *)&l->drain_timer);
}

static void loop_finish(struct loop *l)
{
    uv_timer_stop(&l->drain_timer);
    trim_stop(l);
    server_stop_listening(l);
    server_close_clients(l, true);
    upstream_pool_close_all(l);
    outbox_close(&l->out);
    timeouts_close(l);
    token_revoke_all(l, stop_left_ms(l), loop_close_all);
}

static void on_drain_tick(uv_timer_t *t)
{
    struct loop *l = t->data;
    server_close_clients(l, false);
    /* tokens to revoke keep a quarter of drain_ms (at most 2 s) for it from the drain */
    uint64_t reserve = 0;
    if (token_revoke_wanted(l)) {
        reserve = (uint64_t)l->cfg->limits.drain_ms / 4;
        if (reserve > REVOKE_RESERVE_MAX_MS) reserve = REVOKE_RESERVE_MAX_MS;
    }
    if (l->n_clients == 0 || stop_left_ms(l) <= reserve) {
        if (l->n_clients) log_warn("drain: closing %d connections still open", l->n_clients);
        loop_finish(l);
    }
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    struct loop *l = s->data;
    if (l->draining) { /* SPEC: a second SIGTERM/SIGINT exits at once */
        log_warn("signal %d again: exiting now", signum);
        _exit(0);
    }
    log_info("signal %d: draining (at most %lld ms)", signum, (long long)l->cfg->limits.drain_ms);
    l->draining = true;
    l->stop_deadline_ms = uv_now(&l->uv) + (uint64_t)l->cfg->limits.drain_ms;
    server_stop_listening(l);
    server_close_clients(l, false);
    uv_timer_start(&l->drain_timer, on_drain_tick, DRAIN_POLL_MS, DRAIN_POLL_MS);
}

/* Per-route counters follow the configuration's routes; a reload starts them again. */
static void route_stats_reset(struct loop *l)
{
    free(l->route_stats);
    l->n_route_stats = 0;
    l->route_stats =
        calloc((size_t)(l->cfg->n_routes ? l->cfg->n_routes : 1), sizeof *l->route_stats);
    if (l->route_stats) l->n_route_stats = l->cfg->n_routes;
}

static bool run_strict; /* --strict: reloads are held to it too */

/* The providers a missing variable or file disabled, one warning each, in the log's format. */
static void log_disabled(const struct config *c)
{
    for (int i = 0; i < c->n_providers; i++)
        if (c->providers[i].disabled)
            log_warn("provider %s disabled: %s", c->providers[i].name,
                     c->providers[i].disabled_reason ? c->providers[i].disabled_reason
                                                     : "a setting is missing");
}

static void on_hup(uv_signal_t *s, int signum)
{
    (void)signum;
    struct loop *l = s->data;
    if (l->draining) { /* the requests still running keep their configuration anyway */
        log_info("reload ignored: stopping");
        return;
    }
    char err[CONFIG_ERR_MAX];
    struct config *n = config_load(l->cfg->path, run_strict, NULL, err);
    if (!n) {
        log_error("reload failed, keeping the running configuration: %s", err);
        return;
    }
    struct config *old = l->cfg;
    if (token_cache_reload(l, n) < 0) {
        log_error("reload failed (out of memory), keeping the running configuration");
        config_unref(n);
        return;
    }
    l->cfg = n;
    route_stats_reset(l);
    log_setup(n->log_level, n->log_format);
    log_info("configuration reloaded from %s", n->path);
    log_disabled(n);
    config_unref(old);
}

struct token_cli {
    struct token_wait w;
    struct loop *l;
    int rc;
};

static void on_cli_token(struct token_wait *w, const struct token_result *r)
{
    struct token_cli *t = container_of(w, struct token_cli, w);
    if (r->status) {
        fprintf(stderr, "authproxy: %s: %s\n", r->error, r->detail);
        t->rc = 1;
    } else {
        size_t len;
        const char *v = token_value(r->token, &len);
        fwrite(v, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        t->rc = 0;
        token_put(r->token);
    }
    token_cache_close(t->l);
}

/* --token NAME: mint on a loop of its own (the same engine as the proxy), print, exit. */
static int print_token(struct config *cfg, int idx)
{
    struct loop *l = calloc(1, sizeof *l);
    struct token_cli t = {.w = {.cb = on_cli_token}, .l = l, .rc = 1};
    if (!l || uv_loop_init(&l->uv) < 0) {
        free(l);
        config_unref(cfg);
        return 1;
    }
    l->cfg = cfg;
    if (token_cache_init(l) == 0) {
        struct token_result r;
        if (token_get(l, cfg, idx, &t.w, &r)) on_cli_token(&t.w, &r);
        uv_run(&l->uv, UV_RUN_DEFAULT);
        token_cache_free(l->tokens_closing);
    }
    uv_loop_close(&l->uv);
    config_unref(cfg);
    free(l);
    return t.rc;
}

static int run(struct config *cfg)
{
    struct loop *l = calloc(1, sizeof *l);
    char err[256];
    int rc = 1;
    if (!l) return 1;
    l->cfg = cfg;
    if (uv_loop_init(&l->uv) < 0) goto out_free;
    if (bufpool_init(&l->pool, BUFPOOL_KEEP) < 0) goto out_loop;
    l->scratch = malloc(BUF_BLOCK);
    /* AUTHPROXY_IO_URING=0: one send() per write even where io_uring works (tests, diagnosis) */
    const char *ring_env = getenv("AUTHPROXY_IO_URING");
    bool use_ring = !(ring_env && strcmp(ring_env, "0") == 0);
    int ring_error = 0;
    if (!l->scratch || outbox_init(&l->out, &l->pool, use_ring, &ring_error) < 0) goto out_pool;
    if (tls_ctx_init(l, cfg->ca_file, err, sizeof err) < 0) {
        fprintf(stderr, "authproxy: %s\n", err);
        goto out_pool;
    }
    route_stats_reset(l);
    timeouts_init(l);
    server_timers_init(l);
    upstream_timers_init(l);
    if (token_cache_init(l) < 0) {
        fprintf(stderr, "authproxy: cannot start the token engine\n");
        goto out_tls;
    }
    if (server_listen(l, err, sizeof err) < 0) {
        fprintf(stderr, "authproxy: %s\n", err);
        server_stop_listening(l);
        timeouts_close(l);
        token_cache_close(l);
        uv_run(&l->uv, UV_RUN_DEFAULT);
        goto out_tls;
    }
    uv_signal_init(&l->uv, &l->sigterm);
    uv_signal_init(&l->uv, &l->sigint);
    uv_signal_init(&l->uv, &l->sighup);
    uv_timer_init(&l->uv, &l->drain_timer);
    l->sigterm.data = l->sigint.data = l->sighup.data = l->drain_timer.data = l;
    uv_signal_start(&l->sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&l->sigint, on_stop_signal, SIGINT);
    uv_signal_start(&l->sighup, on_hup, SIGHUP);
    trim_start(l);
    outbox_start(&l->out, &l->uv);
    log_info("authproxy %s ready: %d route(s), %d provider(s), via %s", AUTHPROXY_VERSION,
             cfg->n_routes, cfg->n_providers, cfg->via);
    if (!use_ring)
        log_info("socket I/O: one recv()/send() each (AUTHPROXY_IO_URING=0)");
    else if (!l->out.ring_ok)
        log_info("socket I/O: one recv()/send() each (io_uring unavailable: %s)",
                 uv_strerror(ring_error));
    else
        log_debug("socket I/O: batched with io_uring");
    uv_run(&l->uv, UV_RUN_DEFAULT);
    uv_handle_t *left[] = {(uv_handle_t *)&l->drain_timer, (uv_handle_t *)&l->sigterm,
                           (uv_handle_t *)&l->sigint};
    for (size_t i = 0; i < sizeof left / sizeof left[0]; i++)
        if (!uv_is_closing(left[i])) uv_close(left[i], NULL);
    uv_run(&l->uv, UV_RUN_NOWAIT); /* the close callbacks (cancelled resolutions too) */
    log_info("stopped");
    rc = 0;
    if (uv_loop_alive(&l->uv)) _exit(0); /* a thread still in getaddrinfo: nothing to wait for */
out_tls:
    token_cache_free(l->tokens_closing);
    SSL_CTX_free(l->ssl_ctx);
out_pool:
    proxy_free_list_trim(l, 0);
    outbox_free(&l->out);
    free(l->scratch);
    free(l->listeners);
    free(l->route_stats);
    bufpool_destroy(&l->pool);
out_loop:
    uv_loop_close(&l->uv);
out_free:
    config_unref(l->cfg);
    free(l);
    return rc;
}

int main(int argc, char **argv)
{
    const char *path = CONFIG_DEFAULT_PATH, *token_name = NULL;
    bool check = false, strict = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(a, "--check") == 0)
            check = true;
        else if (strcmp(a, "--strict") == 0)
            strict = true;
        else if (strcmp(a, "--token") == 0 && i + 1 < argc)
            token_name = argv[++i];
        else if (strcmp(a, "--version") == 0) {
            printf("authproxy %s\n", AUTHPROXY_VERSION);
            return 0;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        } else {
            fprintf(stderr, "authproxy: unknown argument '%s'\n%s", a, usage);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    /* I/O blocks (BUF_BLOCK) come from the loop's pool; those beyond it are mapped and unmapped
     * on their own, so a burst leaves no holes in the heap that keep memory resident. */
    mallopt(M_MMAP_THRESHOLD, BUF_BLOCK);
    char err[CONFIG_ERR_MAX];
    run_strict = strict;
    struct config *cfg = config_load(path, strict, NULL, err);
    if (!cfg) {
        fprintf(stderr, "authproxy: %s\n", err);
        return 1;
    }
    log_setup(cfg->log_level, cfg->log_format);
    log_disabled(cfg);
    if (check) {
        config_print(cfg, stdout);
        config_unref(cfg);
        return 0;
    }
    if (token_name) {
        int idx = config_provider_index(cfg, token_name);
        if (idx < 0) {
            fprintf(stderr, "authproxy: no provider named %s\n", token_name);
            config_unref(cfg);
            return 1;
        }
        return print_token(cfg, idx);
    }
    return run(cfg);
}
