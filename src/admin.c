/* admin.c - see admin.h. */
#include "admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop.h"
#include "proxy.h"
#include "server.h"
#include "strbuf.h"
#include "token.h"

const double stats_latency_bounds[LATENCY_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   0.5,   1,    2.5,   10};

static bool path_is(const struct head *hd, const char *p)
{
    size_t n = strlen(p);
    const char *u = hd->base + hd->line_off;
    size_t ul = hd->line_len;
    for (size_t i = 0; i < ul; i++)
        if (u[i] == '?') {
            ul = i;
            break;
        }
    return ul == n && memcmp(u, p, n) == 0;
}

/* Sends a body built in b (500 when memory ran out while building it) and frees it. */
static void respond_built(struct exchange *ex, const char *ctype, struct strbuf *b)
{
    if (b->oom)
        client_error(ex->c, 500, "internal", "out of memory", NULL, 0);
    else
        client_respond(ex->c, 200, ctype, b->p, b->len, 0);
    strbuf_free(b);
}

/* The body grows with the routes and the providers (and the route x class series clients
 * create), so it is built in a buffer that grows with it. */
static void metrics(struct exchange *ex)
{
    struct loop *l = ex->loop;
    struct stats *s = &l->stats;
    struct strbuf sb = {0}, *b = &sb;
#define P(...) strbuf_printf(b, __VA_ARGS__)
    P("# HELP authproxy_requests_total Requests answered, by status class.\n");
    P("# TYPE authproxy_requests_total counter\n");
    static const char *cls[] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int i = 0; i < 6; i++)
        P("authproxy_requests_total{class=\"%s\"} %llu\n", cls[i],
          (unsigned long long)s->requests_by_class[i]);
    P("# HELP authproxy_route_requests_total Requests answered, by route and status class.\n");
    P("# TYPE authproxy_route_requests_total counter\n");
    for (int r = 0; r < l->n_route_stats && r < ex->cfg->n_routes; r++) {
        const struct route_config *rc = &ex->cfg->routes[r];
        for (int i = 0; i < 6; i++) {
            if (!l->route_stats[r][i]) continue;
            P("authproxy_route_requests_total{route=\"%d\",match=\"%s%s%s\",class=\"%s\"} "
              "%llu\n",
              r, rc->host ? (rc->host_wildcard ? "*" : "") : "", rc->host ? rc->host : "",
              rc->path_prefix ? rc->path_prefix : "", cls[i],
              (unsigned long long)l->route_stats[r][i]);
        }
    }
    P("# HELP authproxy_upstream_latency_seconds Time from request head to response end.\n");
    P("# TYPE authproxy_upstream_latency_seconds histogram\n");
    uint64_t cum = 0;
    for (int i = 0; i < LATENCY_BUCKETS; i++) {
        cum += s->latency_le[i];
        P("authproxy_upstream_latency_seconds_bucket{le=\"%g\"} %llu\n", stats_latency_bounds[i],
          (unsigned long long)cum);
    }
    P("authproxy_upstream_latency_seconds_bucket{le=\"+Inf\"} %llu\n",
      (unsigned long long)s->latency_count);
    P("authproxy_upstream_latency_seconds_sum %.6f\n", s->latency_sum_s);
    P("authproxy_upstream_latency_seconds_count %llu\n", (unsigned long long)s->latency_count);
    P("# TYPE authproxy_upstream_connections_total counter\n");
    P("authproxy_upstream_connections_total{kind=\"new\"} %llu\n",
      (unsigned long long)s->upstream_connects);
    P("authproxy_upstream_connections_total{kind=\"reused\"} %llu\n",
      (unsigned long long)s->upstream_reuses);
    P("# TYPE authproxy_retries_401_total counter\n");
    P("authproxy_retries_401_total %llu\n", (unsigned long long)s->retries_401);
    P("# TYPE authproxy_open_connections gauge\n");
    P("authproxy_open_connections %lld\n", (long long)s->open_connections);
#undef P
    token_metrics(l, ex->cfg, b);
    respond_built(ex, "text/plain; version=0.0.4", b);
}

static void tokens(struct exchange *ex)
{
    struct strbuf b = {0};
    token_status_json(ex->loop, ex->cfg, &b);
    respond_built(ex, "application/json", &b);
}

/* The forced mint ended: 200 with the provider's new state, or the mint's error. */
static void refreshed(struct token_wait *w, const struct token_result *r)
{
    struct exchange *ex = container_of(w, struct exchange, tw);
    const char *name = ex->cfg->providers[ex->admin_provider].name;
    ex->state = EX_HEAD;
    if (r->status)
        return client_error(ex->c, r->status, r->error, r->detail, name, r->retry_after_s);
    char b[320];
    int n = snprintf(b, sizeof b, "{\"status\": \"minted\", \"provider\": \"%s\"}\n", name);
    client_respond(ex->c, 200, "application/json", b, (size_t)n, 0);
}

static void refresh(struct exchange *ex, const char *name, size_t len)
{
    char nm[128];
    if (len >= sizeof nm) len = sizeof nm - 1;
    memcpy(nm, name, len);
    nm[len] = 0;
    int idx = config_provider_index(ex->cfg, nm);
    if (idx < 0) return client_error(ex->c, 404, "not_found", "no such provider", NULL, 0);
    struct token_result r;
    ex->tw.cb = refreshed;
    ex->admin_provider = idx;
    ex->state = EX_TOKEN; /* a closing client withdraws the wait (proxy_exchange_free) */
    if (token_refresh(ex->loop, ex->cfg, idx, &ex->tw, &r) < 0) {
        ex->state = EX_HEAD;
        client_error(ex->c, r.status, r.error, r.detail, nm, r.retry_after_s);
    }
}

void admin_request(struct exchange *ex)
{
    struct head *hd = &ex->req;
    int method = llhttp_get_method(&ex->parser);
    head_analyze(hd);
    const char *u = hd->base + hd->line_off;
    size_t ul = hd->line_len;
    if (method == HTTP_GET && path_is(hd, "/healthz"))
        return client_respond(ex->c, 200, "text/plain", "ok", 2, 0);
    if (method == HTTP_GET && path_is(hd, "/readyz")) {
        if (token_ready(ex->loop, ex->cfg))
            return client_respond(ex->c, 200, "text/plain", "ready", 5, 0);
        return client_respond(ex->c, 503, "text/plain", "not ready", 9, 0);
    }
    if (method == HTTP_GET && path_is(hd, "/metrics")) return metrics(ex);
    if (method == HTTP_GET && path_is(hd, "/tokens")) return tokens(ex);
    static const char pre[] = "/tokens/", suf[] = "/refresh";
    size_t pl = sizeof pre - 1, sl = sizeof suf - 1;
    if (method == HTTP_POST && ul > pl + sl && memcmp(u, pre, pl) == 0 &&
        memcmp(u + ul - sl, suf, sl) == 0)
        return refresh(ex, u + pl, ul - pl - sl);
    client_error(ex->c, 404, "not_found", "unknown admin endpoint", NULL, 0);
}
