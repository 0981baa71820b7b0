/* config.c - the configuration file: JSON text -> one immutable, reference-counted struct config.
 *
 * Every key is a row of a table (name, type, where it is stored, bounds, default), in the
 * spirit of Redis's standardConfig: one generic walker applies the defaults, rejects unknown
 * keys with their dotted path ("providers.epc.scpoe: unknown key"), checks types and expands
 * ${VAR} in every string. Keys that need more than a row (listen addresses, providers with their
 * presets, routes) have a parse function of their own, still reached through the table.
 *
 * Secrets: a value that cannot be resolved inside a provider (unset variable, unreadable
 * *_file) disables that provider instead of failing the load; errors and warnings name the key,
 * the variable or the file, never a value.
 *
 * Memory: everything reachable from a struct config is owned by it and freed (secrets wiped
 * first) by the last config_unref(). This file runs at start and on reload, never on the hot
 * path; it writes only to the FILE * its callers pass. */
#include "config.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "router.h"

#define KEY_PATH_MAX 256            /* "routes[12].client_authorization" and the like */
#define REASON_MAX 512              /* a disabled provider's reason */
#define VAR_NAME_MAX 128            /* ${NAME} */
#define SECRET_FILE_MAX (64 * 1024) /* a *_file secret */
#define CONFIG_FILE_MAX (16 << 20)  /* the configuration file itself */
#define PROVIDER_NAME_MAX 64        /* used in URLs (/tokens/<name>) and metrics labels */
#define VIA_MAX 128                 /* the via name, appended to every Via header */
#define HOSTNAME_MAX 256
#define WORKERS_MAX 1024
#define TTL_MAX_S (365LL * 24 * 3600) /* bound for every *_s lifetime */
#define DEFAULT_LISTEN "127.0.0.1:8080"
#define DEFAULT_CA_FILE "/etc/ssl/certs/ca-certificates.crt"
#define DEFAULT_TTL_S 300
#define DEFAULT_REFRESH_BEFORE_S 60

/* ---- the parser's state ---------------------------------------------------------------- */

struct parser {
    char *err; /* CONFIG_ERR_MAX bytes; the first error wins */
    bool failed;
    bool strict;
    FILE *warn_out;
    struct config *cfg;
    struct provider_config *prov; /* the provider being parsed, NULL outside providers */
    uint64_t unresolved;          /* provider rows whose value could not be resolved */
    int row;                      /* the provider row being parsed */
};

/* Records "path: message" unless an error is already recorded. Always returns -1. */
__attribute__((format(printf, 3, 4))) static int fail(struct parser *p, const char *path,
                                                      const char *fmt, ...)
{
    if (p->failed) return -1;
    p->failed = true;
    int n = 0;
    if (path && *path) n = snprintf(p->err, CONFIG_ERR_MAX, "%s: ", path);
    if (n < 0) n = 0;
    if (n >= CONFIG_ERR_MAX) n = CONFIG_ERR_MAX - 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, CONFIG_ERR_MAX - (size_t)n, fmt, ap);
    va_end(ap);
    /* one line: a key name from the file may carry any byte */
    for (char *s = p->err; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
    return -1;
}

/* A value inside a provider could not be resolved (reason names the variable or the file):
 * disables the provider, or fails outside providers and with strict. Returns 1 or -1. */
static int unresolved(struct parser *p, const char *path, const char *reason)
{
    if (!p->prov || p->strict) return fail(p, path, "%s", reason);
    p->unresolved |= UINT64_C(1) << p->row;
    if (p->prov->disabled) return 1;
    p->prov->disabled_reason = strdup(reason);
    if (!p->prov->disabled_reason) return fail(p, path, "out of memory");
    p->prov->disabled = true;
    if (p->warn_out)
        fprintf(p->warn_out, "warning: provider %s disabled: %s (%s)\n", p->prov->name, reason,
                path);
    return 1;
}

/* Appends s to the path out of length *n, truncating at KEY_PATH_MAX. */
static void path_append(char out[KEY_PATH_MAX], size_t *n, const char *s)
{
    size_t len = strlen(s);
    if (len > KEY_PATH_MAX - 1 - *n) len = KEY_PATH_MAX - 1 - *n;
    memcpy(out + *n, s, len);
    *n += len;
    out[*n] = '\0';
}

/* "path.name", or "name" at the top level. */
static void join(char out[KEY_PATH_MAX], const char *path, const char *name)
{
    size_t n = 0;
    out[0] = '\0';
    path_append(out, &n, path);
    if (*path) path_append(out, &n, ".");
    path_append(out, &n, name);
}

static void join_index(char out[KEY_PATH_MAX], const char *path, int i)
{
    snprintf(out, KEY_PATH_MAX, "%s[%d]", path, i);
}

/* Frees a string that may hold a secret, wiping it first. */
static void sfree(char *s)
{
    if (!s) return;
    explicit_bzero(s, strlen(s));
    free(s);
}

static bool has_control_char(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
    return false;
}

/* ---- ${VAR} expansion ------------------------------------------------------------------- */

/* A growing string whose old copies are wiped: expanded values may be secrets. */
struct sbuf {
    char *s;
    size_t len, cap;
};

static int sbuf_add(struct sbuf *b, const char *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *s = malloc(cap);
        if (!s) return -1;
        if (b->s) {
            memcpy(s, b->s, b->len);
            explicit_bzero(b->s, b->cap);
            free(b->s);
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, data, n);
    b->len += n;
    b->s[b->len] = '\0';
    return 0;
}

static void sbuf_free(struct sbuf *b)
{
    if (b->s) explicit_bzero(b->s, b->cap);
    free(b->s);
    b->s = NULL;
}

static bool is_var_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_var_char(char c)
{
    return is_var_start(c) || (c >= '0' && c <= '9');
}

/* Replaces every ${NAME} of in by the environment's value. Returns 0 with *out allocated, 1 when
 * a variable is unset inside a provider (now disabled; *out is NULL), -1 on error. */
static int expand(struct parser *p, const char *path, const char *in, char **out)
{
    struct sbuf b = {0};
    int rc = -1;
    *out = NULL;
    const char *s = in;
    for (;;) {
        const char *ref = strstr(s, "${");
        if (!ref) {
            if (sbuf_add(&b, s, strlen(s)) < 0) goto oom;
            break;
        }
        if (sbuf_add(&b, s, (size_t)(ref - s)) < 0) goto oom;
        const char *name = ref + 2, *end = name;
        while (is_var_char(*end))
            end++;
        if (!is_var_start(*name) || *end != '}') {
            rc = fail(p, path, "bad variable reference: expected ${NAME}");
            goto out;
        }
        char var[VAR_NAME_MAX];
        size_t n = (size_t)(end - name);
        if (n >= sizeof var) {
            rc = fail(p, path, "variable name too long");
            goto out;
        }
        memcpy(var, name, n);
        var[n] = '\0';
        const char *value = getenv(var);
        if (!value) {
            char reason[REASON_MAX];
            snprintf(reason, sizeof reason, "environment variable %s is not set", var);
            rc = unresolved(p, path, reason);
            goto out;
        }
        if (sbuf_add(&b, value, strlen(value)) < 0) goto oom;
        s = end + 1;
    }
    *out = b.s;
    b.s = NULL;
    rc = 0;
out:
    sbuf_free(&b);
    return rc;
oom:
    rc = fail(p, path, "out of memory");
    goto out;
}

/* ---- typed values ----------------------------------------------------------------------- */

/* A string value, expanded. Returns 0 (*out allocated), 1 (unresolved in a provider) or -1. */
static int get_string(struct parser *p, const cJSON *v, const char *path, char **out)
{
    *out = NULL;
    if (!cJSON_IsString(v) || !v->valuestring) return fail(p, path, "expected a string");
    int rc = expand(p, path, v->valuestring, out);
    if (rc != 0) return rc;
    if (has_control_char(*out)) {
        sfree(*out);
        *out = NULL;
        return fail(p, path, "contains a control character");
    }
    return 0;
}

/* An integer: a JSON number, or a string such as "${WORKERS}" holding one. */
static int get_int(struct parser *p, const cJSON *v, const char *path, int64_t min, int64_t max,
                   int64_t *out)
{
    int64_t x;
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (!(d >= -9.0e18 && d <= 9.0e18) || d != (double)(int64_t)d)
            return fail(p, path, "expected an integer");
        x = (int64_t)d;
    } else if (cJSON_IsString(v)) {
        char *s;
        int rc = get_string(p, v, path, &s);
        if (rc != 0) return rc;
        char *end;
        errno = 0;
        long long ll = strtoll(s, &end, 10);
        bool ok = *s && *end == '\0' && errno == 0;
        free(s);
        if (!ok) return fail(p, path, "expected an integer");
        x = ll;
    } else {
        return fail(p, path, "expected an integer");
    }
    if (x < min || x > max)
        return fail(p, path, "must be between %lld and %lld", (long long)min, (long long)max);
    *out = x;
    return 0;
}

static int get_bool(struct parser *p, const cJSON *v, const char *path, bool *out)
{
    if (cJSON_IsBool(v)) {
        *out = cJSON_IsTrue(v);
        return 0;
    }
    if (!cJSON_IsString(v)) return fail(p, path, "expected true or false");
    char *s;
    int rc = get_string(p, v, path, &s);
    if (rc != 0) return rc;
    if (strcmp(s, "true") == 0)
        *out = true;
    else if (strcmp(s, "false") == 0)
        *out = false;
    else
        rc = fail(p, path, "expected true or false");
    free(s);
    return rc;
}

/* One of names (NULL-terminated); *out is its index. */
static int get_enum(struct parser *p, const cJSON *v, const char *path, const char *const *names,
                    int *out)
{
    char *s;
    int rc = get_string(p, v, path, &s);
    if (rc != 0) return rc;
    for (int i = 0; names[i]; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = i;
            free(s);
            return 0;
        }
    }
    free(s);
    char list[CONFIG_ERR_MAX] = "";
    for (int i = 0; names[i]; i++) {
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", names[i]);
    }
    return fail(p, path, "expected one of %s", list);
}

/* "http(s)://authority[/path][?query]" with a valid host and no userinfo: the endpoints of a
 * provider. Returns true when url is acceptable. */
static bool url_ok(const char *url)
{
    const char *sep = strstr(url, "://");
    if (!sep) return false;
    size_t scheme = (size_t)(sep - url);
    if (!((scheme == 5 && strncasecmp(url, "https", 5) == 0) ||
          (scheme == 4 && strncasecmp(url, "http", 4) == 0)))
        return false;
    const char *auth = sep + 3;
    size_t n = strcspn(auth, "/?#");
    if (strchr(auth, '#') || strchr(url, ' ')) return false;
    char host[HOST_MAX];
    int port;
    return host_normalize(auth, n, 0, host, &port) == 0;
}

/* Parses a route's upstream "http(s)://host[:port][/path]" into u. Returns NULL or a message. */
static const char *upstream_parse(const char *url, struct upstream_url *u)
{
    size_t skip;
    if (strncasecmp(url, "https://", 8) == 0) {
        u->tls = true;
        skip = 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        u->tls = false;
        skip = 7;
    } else {
        return "expected an http:// or https:// URL";
    }
    const char *auth = url + skip;
    size_t n = strcspn(auth, "/?#");
    if (strchr(auth, '?') || strchr(auth, '#')) return "an upstream takes no query or fragment";
    if (memchr(auth, '@', n)) return "an upstream takes no user name or password";
    if (strchr(auth, ' ')) return "an upstream contains no space";
    char host[HOST_MAX];
    int port, default_port = u->tls ? 443 : 80;
    if (host_normalize(auth, n, default_port, host, &port) < 0)
        return "expected http(s)://host[:port][/path] with a valid host and port";
    bool v6 = strchr(host, ':') != NULL;
    char authority[HOST_MAX + 16];
    snprintf(authority, sizeof authority, "%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "");
    if (port != default_port) {
        size_t len = strlen(authority);
        snprintf(authority + len, sizeof authority - len, ":%d", port);
    }
    const char *path = auth + n;
    size_t plen = strlen(path);
    while (plen > 0 && path[plen - 1] == '/')
        plen--;
    u->port = port;
    u->host = strdup(host);
    u->authority = strdup(authority);
    u->path = strndup(path, plen);
    if (!u->host || !u->authority || !u->path) return "out of memory";
    return NULL;
}

/* Parses "host:port", "[v6]:port" or "localhost:port" into a. Returns NULL or a message. */
static const char *addr_parse(const char *text, struct listen_addr *a)
{
    memset(a, 0, sizeof *a);
    if (strlen(text) >= sizeof a->text) return "address too long";
    strcpy(a->text, text);
    char host[sizeof a->text];
    const char *port;
    bool bracketed = text[0] == '[';
    if (bracketed) {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') return "expected [IPv6 address]:port";
        memcpy(host, text + 1, (size_t)(close - text) - 1);
        host[close - text - 1] = '\0';
        port = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon) return "expected host:port";
        if (memchr(text, ':', (size_t)(colon - text)))
            return "an IPv6 address needs brackets, as in [::1]:8080";
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port = colon + 1;
    }
    long portnum = 0;
    if (!*port || strlen(port) > 5) return "expected a port between 1 and 65535";
    for (const char *s = port; *s; s++) {
        if (*s < '0' || *s > '9') return "expected a port between 1 and 65535";
        portnum = portnum * 10 + (*s - '0');
    }
    if (portnum < 1 || portnum > 65535) return "expected a port between 1 and 65535";
    if (!bracketed && strcasecmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");

    struct sockaddr_in *sin = (struct sockaddr_in *)&a->sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->sa;
    if (!bracketed && inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)portnum);
        a->loopback = (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    } else if (bracketed && inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)portnum);
        a->loopback =
            IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr) ||
            (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr) && sin6->sin6_addr.s6_addr[12] == 127);
    } else {
        return "expected an IP address or localhost (host names are not resolved)";
    }
    return NULL;
}

static int addr_port(const struct listen_addr *a)
{
    if (a->sa.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
}

/* ---- the key tables --------------------------------------------------------------------- */

enum key_type {
    K_STRING, /* char *, ${VAR} expanded */
    K_URL,    /* char *, an http:// or https:// URL */
    K_SECRET, /* char *, also accepted as "<name>_file": the file's contents */
    K_INT,    /* int within [min, max] */
    K_I64,    /* int64_t within [min, max] */
    K_BOOL,   /* bool */
    K_ENUM,   /* an enum (stored as int): index into names */
    K_OBJECT, /* a nested object: sub's rows, at base + offset */
    K_FUNC,   /* parsed by its own function */
};

struct key_table;

struct key_spec {
    const char *name;
    enum key_type type;
    size_t offset;
    int64_t min, max, def;
    const char *def_str;
    const char *const *names;
    const struct key_table *sub;
    int (*parse)(struct parser *p, const cJSON *v, const char *path, void *base);
};

struct key_table {
    const struct key_spec *rows;
    size_t n;
};

#define TABLE(rows)                                                                                \
    {                                                                                              \
        rows, sizeof(rows) / sizeof(rows[0])                                                       \
    }

_Static_assert(sizeof(enum log_level) == sizeof(int) && sizeof(enum preset) == sizeof(int) &&
                   sizeof(enum grant_type) == sizeof(int) &&
                   sizeof(enum client_auth) == sizeof(int) &&
                   sizeof(enum param_style) == sizeof(int) &&
                   sizeof(enum client_authz) == sizeof(int) &&
                   sizeof(enum log_format) == sizeof(int),
               "K_ENUM stores enums as int");

/* Each list is in its enum's order. */
static const char *const log_level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};
static const char *const preset_names[] = {"rfc6749", "epc", "eptura", "enable", NULL};
static const char *const grant_names[] = {"client_credentials", "password_code", "refresh_token",
                                          NULL};
static const char *const client_auth_names[] = {"basic", "body", "none", NULL};
static const char *const param_style_names[] = {"form", "json", "headers", NULL};
static const char *const client_authz_names[] = {"replace", "keep", NULL};
static const char *const expires_unit_names[] = {"s", "ms", NULL};

/* The standard parameter names param_names may rename. */
static const char *const standard_params[] = {
    "grant_type", "client_id", "client_secret",   "redirect_uri",
    "scope",      "code",      "refresh_token",   "username",
    "password",   "token",     "token_type_hint", "response_type",
    "state",      NULL};

static int parse_listen(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_admin(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_providers(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_routes(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_param_names(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_params(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_expires_unit(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_route_host(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_path_prefix(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_route_upstream(struct parser *p, const cJSON *v, const char *path, void *base);
static int parse_route_provider(struct parser *p, const cJSON *v, const char *path, void *base);

#define C(f) offsetof(struct config, f)
#define L(f) offsetof(struct limits, f)
#define P(f) offsetof(struct provider_config, f)
#define R(f) offsetof(struct route_config, f)

/* One row per key, Redis createXXXConfig style. */
/* clang-format off */
#define ROW_STRING(n, off, d) {.name = n, .type = K_STRING, .offset = off, .def_str = d}
#define ROW_URL(n, off) {.name = n, .type = K_URL, .offset = off}
#define ROW_SECRET(n, off) {.name = n, .type = K_SECRET, .offset = off}
#define ROW_INT(n, off, lo, hi, d) \
    {.name = n, .type = K_INT, .offset = off, .min = lo, .max = hi, .def = d}
#define ROW_I64(n, off, lo, hi, d) \
    {.name = n, .type = K_I64, .offset = off, .min = lo, .max = hi, .def = d}
#define ROW_BOOL(n, off, d) {.name = n, .type = K_BOOL, .offset = off, .def = d}
#define ROW_ENUM(n, off, e, d) {.name = n, .type = K_ENUM, .offset = off, .def = d, .names = e}
#define ROW_OBJECT(n, off, table) {.name = n, .type = K_OBJECT, .offset = off, .sub = table}
#define ROW_FUNC(n, fn) {.name = n, .type = K_FUNC, .parse = fn}
/* clang-format on */

static const struct key_spec log_rows[] = {
    ROW_ENUM("level", C(log_level), log_level_names, LOG_INFO),
    ROW_ENUM("format", C(log_format), log_format_names, LOG_TEXT),
};

static const struct key_spec tls_rows[] = {
    ROW_STRING("ca_file", C(ca_file), DEFAULT_CA_FILE),
};

static const struct key_spec limit_rows[] = {
    ROW_I64("max_header_bytes", L(max_header_bytes), 1024, 16 << 20, 65536),
    ROW_I64("max_headers", L(max_headers), 1, 10000, 100),
    /* retry_buffer_bytes 0: a request with a body is never replayed */
    ROW_I64("retry_buffer_bytes", L(retry_buffer_bytes), 0, 1 << 30, 1048576),
    /* the replay copies of all requests together; past it a request streams without one */
    ROW_I64("retry_buffer_total_bytes", L(retry_buffer_total_bytes), 0, 1LL << 40, 67108864),
    ROW_I64("header_timeout_ms", L(header_timeout_ms), 1, 3600000, 10000),
    ROW_I64("idle_timeout_ms", L(idle_timeout_ms), 1, 86400000, 60000),
    ROW_I64("upstream_connect_timeout_ms", L(upstream_connect_timeout_ms), 1, 3600000, 5000),
    ROW_I64("upstream_timeout_ms", L(upstream_timeout_ms), 1, 86400000, 60000),
    ROW_I64("token_timeout_ms", L(token_timeout_ms), 1, 3600000, 10000),
    ROW_I64("max_connections", L(max_connections), 1, 1000000, 10000),
    ROW_I64("drain_ms", L(drain_ms), 0, 3600000, 10000), /* 0: stop at once */
};

static const struct key_table log_table = TABLE(log_rows);
static const struct key_table tls_table = TABLE(tls_rows);
static const struct key_table limits_table = TABLE(limit_rows);

/* Parsed in this order, whatever the file's order: providers before the routes naming them. */
static const struct key_spec config_rows[] = {
    ROW_FUNC("listen", parse_listen),
    ROW_INT("workers", C(workers), 1, WORKERS_MAX, 1),
    ROW_FUNC("admin_listen", parse_admin),
    ROW_BOOL("allow_remote", C(allow_remote), false),
    ROW_STRING("via", C(via), NULL), /* default: authproxy-<hostname>-<port>, see finish() */
    ROW_OBJECT("log", 0, &log_table),
    ROW_OBJECT("tls", 0, &tls_table),
    ROW_OBJECT("limits", C(limits), &limits_table),
    ROW_FUNC("providers", parse_providers),
    ROW_FUNC("routes", parse_routes),
};

/* "preset" must stay row 0: it is parsed first, then its defaults, then the other keys. */
static const struct key_spec provider_rows[] = {
    ROW_ENUM("preset", P(preset), preset_names, PRESET_RFC6749),
    ROW_ENUM("grant_type", P(grant_type), grant_names, GRANT_CLIENT_CREDENTIALS),
    ROW_URL("token_url", P(token_url)),
    ROW_URL("code_url", P(code_url)),
    ROW_URL("site", P(site)),
    ROW_ENUM("client_auth", P(client_auth), client_auth_names, CLIENT_AUTH_BASIC),
    ROW_ENUM("param_style", P(param_style), param_style_names, PARAM_FORM),
    ROW_FUNC("param_names", parse_param_names),
    ROW_STRING("scope", P(scope), NULL),
    ROW_FUNC("params", parse_params),
    ROW_FUNC("expires_in_unit", parse_expires_unit),
    ROW_I64("default_ttl_s", P(default_ttl_s), 1, TTL_MAX_S, DEFAULT_TTL_S),
    ROW_I64("refresh_before_s", P(refresh_before_s), 0, TTL_MAX_S, DEFAULT_REFRESH_BEFORE_S),
    ROW_I64("idle_timeout_s", P(idle_timeout_s), 0, TTL_MAX_S, 0),
    ROW_I64("max_lifetime_s", P(max_lifetime_s), 0, TTL_MAX_S, 0),
    ROW_URL("introspect_url", P(introspect_url)),
    ROW_URL("revoke_url", P(revoke_url)),
    ROW_BOOL("revoke_on_exit", P(revoke_on_exit), false),
    ROW_SECRET("client_id", P(client_id)),
    ROW_SECRET("client_secret", P(client_secret)),
    ROW_SECRET("username", P(username)),
    ROW_SECRET("password", P(password)),
    ROW_SECRET("refresh_token", P(refresh_token)),
    ROW_STRING("redirect_uri", P(redirect_uri), NULL),
};

static const struct key_spec route_rows[] = {
    ROW_FUNC("host", parse_route_host),
    ROW_FUNC("path_prefix", parse_path_prefix),
    ROW_BOOL("strip_prefix", R(strip_prefix), false),
    ROW_FUNC("upstream", parse_route_upstream),
    ROW_FUNC("provider", parse_route_provider),
    ROW_BOOL("allow_plaintext", R(allow_plaintext), false),
    ROW_ENUM("client_authorization", R(client_authorization), client_authz_names,
             CLIENT_AUTHZ_REPLACE),
};

static const struct key_table config_table = TABLE(config_rows);
static const struct key_table provider_table = TABLE(provider_rows);
static const struct key_table route_table = TABLE(route_rows);

_Static_assert(sizeof(provider_rows) / sizeof(provider_rows[0]) <= 64, "unresolved is 64 bits");

/* ---- the table walker ------------------------------------------------------------------- */

#define FIELD(base, off, type) ((type *)((char *)(base) + (off)))

static int row_index(const struct key_table *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->rows[i].name, name) == 0) return (int)i;
    return -1;
}

/* The row for a key as written: "client_secret" or "client_secret_file". */
static bool key_known(const struct key_table *t, const char *key)
{
    if (row_index(t, key) >= 0) return true;
    size_t n = strlen(key);
    if (n <= 5 || strcmp(key + n - 5, "_file") != 0) return false;
    for (size_t i = 0; i < t->n; i++)
        if (t->rows[i].type == K_SECRET && strlen(t->rows[i].name) == n - 5 &&
            strncmp(t->rows[i].name, key, n - 5) == 0)
            return true;
    return false;
}

/* Unknown and duplicate keys of obj. */
static int check_keys(struct parser *p, const cJSON *obj, const char *path,
                      const struct key_table *t)
{
    char kpath[KEY_PATH_MAX];
    for (const cJSON *k = obj->child; k; k = k->next) {
        join(kpath, path, k->string);
        if (!key_known(t, k->string)) return fail(p, kpath, "unknown key");
        for (const cJSON *prev = obj->child; prev != k; prev = prev->next)
            if (strcmp(prev->string, k->string) == 0) return fail(p, kpath, "duplicate key");
    }
    return 0;
}

static int apply_defaults(struct parser *p, const struct key_table *t, void *base)
{
    for (size_t i = 0; i < t->n; i++) {
        const struct key_spec *k = &t->rows[i];
        switch (k->type) {
        case K_STRING:
        case K_URL:
        case K_SECRET:
            if (k->def_str && !(*FIELD(base, k->offset, char *) = strdup(k->def_str)))
                return fail(p, k->name, "out of memory");
            break;
        case K_INT:
            *FIELD(base, k->offset, int) = (int)k->def;
            break;
        case K_I64:
            *FIELD(base, k->offset, int64_t) = k->def;
            break;
        case K_BOOL:
            *FIELD(base, k->offset, bool) = k->def != 0;
            break;
        case K_ENUM:
            *FIELD(base, k->offset, int) = (int)k->def;
            break;
        case K_OBJECT:
            if (apply_defaults(p, k->sub, (char *)base + k->offset) < 0) return -1;
            break;
        case K_FUNC:
            break;
        }
    }
    return 0;
}

/* Contents of a *_file secret, one trailing newline stripped. 0, 1 (unresolved) or -1. */
static int read_secret_file(struct parser *p, const char *path, const char *file, char **out)
{
    char reason[REASON_MAX];
    struct sbuf b = {0};
    char chunk[4096];
    int rc = -1;
    *out = NULL;
    FILE *f = fopen(file, "re");
    if (!f) goto unreadable;
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.len + n > SECRET_FILE_MAX) {
            snprintf(reason, sizeof reason, "cannot read file %s: larger than %d bytes", file,
                     SECRET_FILE_MAX);
            explicit_bzero(chunk, sizeof chunk);
            rc = unresolved(p, path, reason);
            goto out;
        }
        if (sbuf_add(&b, chunk, n) < 0) {
            rc = fail(p, path, "out of memory");
            goto out;
        }
    }
    explicit_bzero(chunk, sizeof chunk);
    if (ferror(f)) goto unreadable;
    if (sbuf_add(&b, "", 0) < 0) {
        rc = fail(p, path, "out of memory");
        goto out;
    }
    if (b.len > 0 && b.s[b.len - 1] == '\n') b.s[--b.len] = '\0';
    if (b.len > 0 && b.s[b.len - 1] == '\r') b.s[--b.len] = '\0';
    if (strlen(b.s) != b.len || has_control_char(b.s)) {
        rc = fail(p, path, "file %s contains a control character", file);
        goto out;
    }
    *out = b.s;
    b.s = NULL;
    rc = 0;
    goto out;
unreadable:
    snprintf(reason, sizeof reason, "cannot read file %s: %s", file, strerror(errno));
    rc = unresolved(p, path, reason);
out:
    if (f) fclose(f);
    sbuf_free(&b);
    return rc;
}

static int parse_object(struct parser *p, const cJSON *v, const char *path,
                        const struct key_table *t, void *base);

/* The key of row i in obj, when present. Returns 0, 1 (unresolved in a provider) or -1. */
static int parse_row(struct parser *p, const cJSON *obj, const char *path,
                     const struct key_table *t, size_t i, void *base)
{
    const struct key_spec *k = &t->rows[i];
    char kpath[KEY_PATH_MAX];
    join(kpath, path, k->name);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, k->name);
    const cJSON *vfile = NULL;
    if (k->type == K_SECRET) {
        char fkey[KEY_PATH_MAX];
        snprintf(fkey, sizeof fkey, "%s_file", k->name);
        vfile = cJSON_GetObjectItemCaseSensitive(obj, fkey);
        if (v && vfile) return fail(p, kpath, "give %s or %s, not both", k->name, fkey);
    }
    if (!v && !vfile) return 0;
    p->row = (int)i;

    int rc = 0;
    switch (k->type) {
    case K_STRING:
    case K_URL:
    case K_SECRET: {
        char *s = NULL;
        if (vfile) {
            char fpath[KEY_PATH_MAX + sizeof "_file"], *file;
            snprintf(fpath, sizeof fpath, "%s_file", kpath);
            rc = get_string(p, vfile, fpath, &file);
            if (rc != 0) return rc;
            rc = read_secret_file(p, fpath, file, &s);
            free(file);
        } else {
            rc = get_string(p, v, kpath, &s);
        }
        if (rc != 0) return rc;
        if (k->type == K_URL && !url_ok(s)) {
            free(s);
            return fail(p, kpath, "expected an http:// or https:// URL");
        }
        char **slot = FIELD(base, k->offset, char *);
        sfree(*slot);
        *slot = s;
        break;
    }
    case K_INT:
    case K_I64: {
        int64_t x = 0;
        rc = get_int(p, v, kpath, k->min, k->max, &x);
        if (rc != 0) return rc;
        if (k->type == K_INT)
            *FIELD(base, k->offset, int) = (int)x;
        else
            *FIELD(base, k->offset, int64_t) = x;
        break;
    }
    case K_BOOL:
        rc = get_bool(p, v, kpath, FIELD(base, k->offset, bool));
        break;
    case K_ENUM:
        rc = get_enum(p, v, kpath, k->names, FIELD(base, k->offset, int));
        break;
    case K_OBJECT:
        rc = parse_object(p, v, kpath, k->sub, (char *)base + k->offset);
        break;
    case K_FUNC:
        rc = k->parse(p, v, kpath, base);
        break;
    }
    return rc;
}

/* Every row present in obj, in table order. Stops at the first error. */
static int parse_rows(struct parser *p, const cJSON *obj, const char *path,
                      const struct key_table *t, void *base)
{
    for (size_t i = 0; i < t->n; i++)
        if (parse_row(p, obj, path, t, i, base) < 0) return -1;
    return 0;
}

/* Every key of obj (already checked by check_keys) in the file's order, so that the first
 * problem reported is the first in the file; row skip (-1: none) is left out. */
static int parse_keys(struct parser *p, const cJSON *obj, const char *path,
                      const struct key_table *t, void *base, int skip)
{
    for (const cJSON *k = obj->child; k; k = k->next) {
        int i = row_index(t, k->string);
        if (i < 0) { /* "<secret>_file": parse_row reads both forms */
            size_t n = strlen(k->string) - 5;
            for (size_t j = 0; j < t->n && i < 0; j++)
                if (strlen(t->rows[j].name) == n && strncmp(t->rows[j].name, k->string, n) == 0)
                    i = (int)j;
        }
        if (i < 0 || i == skip) continue;
        if (parse_row(p, obj, path, t, (size_t)i, base) < 0) return -1;
    }
    return 0;
}

static int parse_object(struct parser *p, const cJSON *v, const char *path,
                        const struct key_table *t, void *base)
{
    if (!cJSON_IsObject(v)) return fail(p, path, "expected an object");
    if (check_keys(p, v, path, t) < 0) return -1;
    return parse_keys(p, v, path, t, base, -1);
}

/* ---- listen addresses ------------------------------------------------------------------- */

static int parse_one_addr(struct parser *p, const cJSON *v, const char *path, struct listen_addr *a)
{
    char *s;
    if (get_string(p, v, path, &s) != 0) return -1; /* no provider here: 1 cannot happen */
    const char *msg = addr_parse(s, a);
    int rc = msg ? fail(p, path, "\"%s\": %s", s, msg) : 0;
    free(s);
    return rc;
}

static int parse_listen(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct config *c = base;
    if (cJSON_IsString(v)) {
        if (!(c->listen = calloc(1, sizeof *c->listen))) return fail(p, path, "out of memory");
        if (parse_one_addr(p, v, path, &c->listen[0]) < 0) return -1;
        c->n_listen = 1;
        return 0;
    }
    if (!cJSON_IsArray(v)) return fail(p, path, "expected a string or an array of strings");
    int n = cJSON_GetArraySize(v);
    if (n == 0) return fail(p, path, "expected at least one address");
    if (!(c->listen = calloc((size_t)n, sizeof *c->listen))) return fail(p, path, "out of memory");
    char ipath[KEY_PATH_MAX];
    for (const cJSON *item = v->child; item; item = item->next) {
        join_index(ipath, path, c->n_listen);
        if (parse_one_addr(p, item, ipath, &c->listen[c->n_listen]) < 0) return -1;
        c->n_listen++;
    }
    return 0;
}

static int parse_admin(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct config *c = base;
    if (parse_one_addr(p, v, path, &c->admin_listen) < 0) return -1;
    c->has_admin = true;
    return 0;
}

/* ---- providers -------------------------------------------------------------------------- */

static int kv_set(struct kv **arr, int *n, const char *key, char *value)
{
    for (int i = 0; i < *n; i++) {
        if (strcmp((*arr)[i].key, key) == 0) {
            sfree((*arr)[i].value);
            (*arr)[i].value = value;
            return 0;
        }
    }
    struct kv *grown = realloc(*arr, (size_t)(*n + 1) * sizeof **arr);
    if (!grown) return -1;
    *arr = grown;
    if (!(grown[*n].key = strdup(key))) return -1;
    grown[*n].value = value;
    (*n)++;
    return 0;
}

static void kv_free(struct kv *arr, int n)
{
    for (int i = 0; i < n; i++) {
        free(arr[i].key);
        sfree(arr[i].value);
    }
    free(arr);
}

static bool is_standard_param(const char *name)
{
    for (int i = 0; standard_params[i]; i++)
        if (strcmp(standard_params[i], name) == 0) return true;
    return false;
}

/* An object of strings into (arr, n); entries already there (a preset's) are overridden per
 * key. With standard, keys must be standard parameter names. */
static int parse_kv(struct parser *p, const cJSON *v, const char *path, struct kv **arr, int *n,
                    bool standard)
{
    if (!cJSON_IsObject(v)) return fail(p, path, "expected an object of strings");
    char kpath[KEY_PATH_MAX];
    for (const cJSON *item = v->child; item; item = item->next) {
        join(kpath, path, item->string);
        if (!*item->string) return fail(p, kpath, "empty name");
        if (standard && !is_standard_param(item->string))
            return fail(p, kpath, "not a standard parameter name");
        for (const cJSON *prev = v->child; prev != item; prev = prev->next)
            if (strcmp(prev->string, item->string) == 0) return fail(p, kpath, "duplicate key");
        char *value;
        int rc = get_string(p, item, kpath, &value);
        if (rc < 0) return -1;
        if (rc > 0) continue; /* the provider is disabled */
        if (standard && !*value) {
            free(value);
            return fail(p, kpath, "empty name");
        }
        if (kv_set(arr, n, item->string, value) < 0) {
            sfree(value);
            return fail(p, kpath, "out of memory");
        }
    }
    return 0;
}

static int parse_param_names(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct provider_config *pc = base;
    return parse_kv(p, v, path, &pc->param_names, &pc->n_param_names, true);
}

static int parse_params(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct provider_config *pc = base;
    return parse_kv(p, v, path, &pc->params, &pc->n_params, false);
}

static int parse_expires_unit(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct provider_config *pc = base;
    int unit;
    int rc = get_enum(p, v, path, expires_unit_names, &unit);
    if (rc == 0) pc->expires_in_ms = unit == 1;
    return rc;
}

static const struct kv eptura_param_names[] = {
    {"grant_type", "x-grant-type"},
    {"client_id", "x-client-id"},
    {"redirect_uri", "x-redirect-uri"},
    {"scope", "x-scope"},
    {"code", "x-auth-code"},
    {"refresh_token", "x-refresh-token"},
    {"username", "x-auth-username"},
    {"password", "x-auth-password"},
    {"token", "x-token"},
};

/* The preset's defaults, before the provider's explicit keys override them. */
static int apply_preset(struct provider_config *pc)
{
    switch (pc->preset) {
    case PRESET_RFC6749:
        break;
    case PRESET_EPC:
        pc->grant_type = GRANT_CLIENT_CREDENTIALS;
        pc->client_auth = CLIENT_AUTH_BASIC;
        if (!(pc->scope = strdup("pc pcapi"))) return -1;
        pc->idle_timeout_s = 900;
        pc->max_lifetime_s = 7200;
        pc->accept_201 = true;
        break;
    case PRESET_EPTURA:
        pc->grant_type = GRANT_PASSWORD_CODE;
        /* the client id travels as a parameter (x-client-id); there is no client secret */
        pc->client_auth = CLIENT_AUTH_BODY;
        pc->param_style = PARAM_HEADERS;
        for (size_t i = 0; i < sizeof eptura_param_names / sizeof eptura_param_names[0]; i++) {
            char *value = strdup(eptura_param_names[i].value);
            if (!value) return -1;
            if (kv_set(&pc->param_names, &pc->n_param_names, eptura_param_names[i].key, value) <
                0) {
                free(value);
                return -1;
            }
        }
        pc->json_content_type = true;
        pc->expires_in_ms = true;
        break;
    case PRESET_ENABLE:
        pc->grant_type = GRANT_CLIENT_CREDENTIALS;
        pc->client_auth = CLIENT_AUTH_BODY;
        pc->use_jwt_exp = true;
        break;
    }
    return 0;
}

static bool row_unresolved(const struct parser *p, const char *name)
{
    int i = row_index(&provider_table, name);
    return i >= 0 && (p->unresolved & (UINT64_C(1) << i));
}

/* eptura: <site>/external/api/oauth2/{auth,token,revoke} for the URLs not given. */
static int derive_from_site(struct parser *p, struct provider_config *pc, const char *path)
{
    static const struct {
        const char *row, *suffix;
        size_t offset;
    } derived[] = {
        {"code_url", "/external/api/oauth2/auth", P(code_url)},
        {"token_url", "/external/api/oauth2/token", P(token_url)},
        {"revoke_url", "/external/api/oauth2/revoke", P(revoke_url)},
    };
    if (pc->preset != PRESET_EPTURA || !pc->site) return 0;
    size_t n = strlen(pc->site);
    while (n > 0 && pc->site[n - 1] == '/')
        n--;
    for (size_t i = 0; i < sizeof derived / sizeof derived[0]; i++) {
        char **slot = FIELD(pc, derived[i].offset, char *);
        if (*slot || row_unresolved(p, derived[i].row)) continue;
        size_t len = n + strlen(derived[i].suffix) + 1;
        if (!(*slot = malloc(len))) return fail(p, path, "out of memory");
        snprintf(*slot, len, "%.*s%s", (int)n, pc->site, derived[i].suffix);
    }
    return 0;
}

/* What the provider needs to mint a token. A value that could not be resolved (the provider
 * is disabled) is not reported missing. */
static int check_provider(struct parser *p, struct provider_config *pc, const char *path)
{
    if (row_unresolved(p, "preset") || row_unresolved(p, "grant_type") ||
        row_unresolved(p, "site") || row_unresolved(p, "client_auth"))
        return 0;
    struct {
        bool needed;
        const char *row;
        const char *value;
        const char *why;
    } needs[] = {
        {true, "token_url", pc->token_url,
         pc->preset == PRESET_EPTURA ? "(or site, with the eptura preset)" : ""},
        {pc->grant_type == GRANT_PASSWORD_CODE, "code_url", pc->code_url,
         "for grant_type password_code"},
        {pc->grant_type == GRANT_PASSWORD_CODE, "username", pc->username,
         "for grant_type password_code"},
        {pc->grant_type == GRANT_PASSWORD_CODE, "password", pc->password,
         "for grant_type password_code"},
        {pc->grant_type == GRANT_REFRESH_TOKEN, "refresh_token", pc->refresh_token,
         "for grant_type refresh_token"},
        {pc->client_auth != CLIENT_AUTH_NONE, "client_id", pc->client_id,
         "(or \"client_auth\": \"none\")"},
        {pc->revoke_on_exit, "revoke_url", pc->revoke_url, "for revoke_on_exit"},
    };
    for (size_t i = 0; i < sizeof needs / sizeof needs[0]; i++) {
        if (!needs[i].needed || needs[i].value || row_unresolved(p, needs[i].row)) continue;
        return fail(p, path, "needs %s%s%s", needs[i].row, *needs[i].why ? " " : "", needs[i].why);
    }
    return 0;
}

static int parse_provider(struct parser *p, const cJSON *v, const char *path,
                          struct provider_config *pc)
{
    int rc = -1;
    if (!cJSON_IsObject(v)) return fail(p, path, "expected an object");
    if (check_keys(p, v, path, &provider_table) < 0) return -1;
    if (apply_defaults(p, &provider_table, pc) < 0) return -1;
    p->prov = pc;
    p->unresolved = 0;
    int preset = parse_row(p, v, path, &provider_table, 0, pc);
    if (preset < 0) goto out;
    if (preset == 0 && apply_preset(pc) < 0) {
        fail(p, path, "out of memory");
        goto out;
    }
    if (parse_keys(p, v, path, &provider_table, pc, 0) < 0) goto out;
    if (derive_from_site(p, pc, path) < 0) goto out;
    if (check_provider(p, pc, path) < 0) goto out;
    rc = 0;
out:
    p->prov = NULL;
    return rc;
}

static bool provider_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > PROVIDER_NAME_MAX) return false;
    for (const char *s = name; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_'))
            return false;
    return true;
}

static int parse_providers(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct config *c = base;
    if (!cJSON_IsObject(v)) return fail(p, path, "expected an object");
    int n = cJSON_GetArraySize(v);
    if (n == 0) return 0;
    if (!(c->providers = calloc((size_t)n, sizeof *c->providers)))
        return fail(p, path, "out of memory");
    char ppath[KEY_PATH_MAX];
    for (const cJSON *item = v->child; item; item = item->next) {
        join(ppath, path, item->string);
        if (!provider_name_ok(item->string))
            return fail(p, ppath, "a provider name is 1 to %d letters, digits, '-' or '_'",
                        PROVIDER_NAME_MAX);
        if (config_provider_index(c, item->string) >= 0) return fail(p, ppath, "duplicate key");
        struct provider_config *pc = &c->providers[c->n_providers];
        if (!(pc->name = strdup(item->string))) return fail(p, ppath, "out of memory");
        c->n_providers++;
        if (parse_provider(p, item, ppath, pc) < 0) return -1;
    }
    return 0;
}

/* ---- routes ----------------------------------------------------------------------------- */

static int parse_route_host(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct route_config *r = base;
    char *s;
    if (get_string(p, v, path, &s) != 0) return -1;
    const char *name = s;
    bool wildcard = strncmp(s, "*.", 2) == 0;
    if (wildcard) name += 2;
    char host[HOST_MAX];
    int port;
    int rc = host_normalize(name, strlen(name), 0, host, &port);
    if (rc == 0 && wildcard && (name[0] == '[' || strlen(host) + 2 > HOST_MAX)) rc = -1;
    if (rc < 0) {
        rc = fail(p, path, "\"%s\": expected a host name or *.suffix, optionally with :port", s);
        goto out;
    }
    r->host_wildcard = wildcard;
    r->host_port = port;
    size_t len = strlen(host) + 2;
    if (!(r->host = malloc(len))) {
        rc = fail(p, path, "out of memory");
        goto out;
    }
    snprintf(r->host, len, "%s%s", wildcard ? "." : "", host);
out:
    free(s);
    return rc;
}

static int parse_path_prefix(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct route_config *r = base;
    char *s;
    if (get_string(p, v, path, &s) != 0) return -1;
    if (s[0] != '/' || strpbrk(s, " ?#")) {
        free(s);
        return fail(p, path, "must begin with '/' and contain no space, '?' or '#'");
    }
    r->path_prefix = s;
    return 0;
}

static int parse_route_upstream(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct route_config *r = base;
    char *s;
    if (get_string(p, v, path, &s) != 0) return -1;
    /* the value is not repeated in the error: it may carry a password ("https://u:pw@h") */
    const char *msg = upstream_parse(s, &r->upstream); /* on failure, freed with the route */
    int rc = msg ? fail(p, path, "%s", msg) : 0;
    r->has_upstream = msg == NULL;
    free(s);
    return rc;
}

static int parse_route_provider(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct route_config *r = base;
    char *s;
    if (get_string(p, v, path, &s) != 0) return -1;
    r->provider = config_provider_index(p->cfg, s);
    int rc = r->provider < 0 ? fail(p, path, "unknown provider \"%s\"", s) : 0;
    free(s);
    return rc;
}

static int check_route(struct parser *p, const struct route_config *r, const char *path)
{
    char kpath[KEY_PATH_MAX];
    if (!r->host && !r->path_prefix) return fail(p, path, "a route needs host or path_prefix");
    if (r->strip_prefix && !r->path_prefix) {
        join(kpath, path, "strip_prefix");
        return fail(p, kpath, "needs path_prefix");
    }
    if (!r->host && !r->has_upstream)
        return fail(p, path, "a route without host needs an upstream");
    if (r->provider >= 0 && r->has_upstream && !r->upstream.tls && !r->allow_plaintext)
        return fail(p, path,
                    "a route with a provider needs an https upstream (or \"allow_plaintext\": "
                    "true)");
    return 0;
}

static int parse_routes(struct parser *p, const cJSON *v, const char *path, void *base)
{
    struct config *c = base;
    if (!cJSON_IsArray(v)) return fail(p, path, "expected an array");
    int n = cJSON_GetArraySize(v);
    if (n == 0) return 0;
    if (!(c->routes = calloc((size_t)n, sizeof *c->routes))) return fail(p, path, "out of memory");
    char rpath[KEY_PATH_MAX];
    for (const cJSON *item = v->child; item; item = item->next) {
        join_index(rpath, path, c->n_routes);
        struct route_config *r = &c->routes[c->n_routes++];
        r->provider = -1;
        if (apply_defaults(p, &route_table, r) < 0) return -1;
        if (parse_object(p, item, rpath, &route_table, r) < 0) return -1;
        if (check_route(p, r, rpath) < 0) return -1;
    }
    return 0;
}

/* ---- the whole file --------------------------------------------------------------------- */

static bool via_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("-._~:[]!#$%&'*+^`|", c) != NULL;
}

/* authproxy-<hostname>-<port of the first listen address> */
static int default_via(struct parser *p, struct config *c)
{
    char host[HOSTNAME_MAX] = "";
    if (gethostname(host, sizeof host) != 0 || !host[0]) snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    for (char *s = host; *s; s++)
        if (!via_char_ok(*s)) *s = '-';
    char via[VIA_MAX + HOSTNAME_MAX];
    snprintf(via, sizeof via, "authproxy-%s-%d", host, addr_port(&c->listen[0]));
    via[VIA_MAX] = '\0';
    if (!(c->via = strdup(via))) return fail(p, "via", "out of memory");
    return 0;
}

/* What needs the whole file: defaults that depend on other keys, loopback rules. */
static int finish(struct parser *p, struct config *c, bool listen_is_list)
{
    char path[KEY_PATH_MAX];
    if (c->n_listen == 0) {
        if (!(c->listen = calloc(1, sizeof *c->listen))) return fail(p, "listen", "out of memory");
        addr_parse(DEFAULT_LISTEN, &c->listen[0]);
        c->n_listen = 1;
    }
    for (int i = 0; i < c->n_listen; i++) {
        if (c->listen[i].loopback || c->allow_remote) continue;
        if (listen_is_list)
            join_index(path, "listen", i);
        else
            snprintf(path, sizeof path, "listen");
        return fail(p, path,
                    "%s is not a loopback address: binding it needs \"allow_remote\": true "
                    "(anyone who reaches authproxy can use its credentials)",
                    c->listen[i].text);
    }
    if (c->has_admin && !c->admin_listen.loopback && !c->allow_remote)
        return fail(p, "admin_listen",
                    "%s is not a loopback address: binding it needs \"allow_remote\": true",
                    c->admin_listen.text);
    if (!c->via && default_via(p, c) < 0) return -1;
    if (!*c->via || strlen(c->via) > VIA_MAX)
        return fail(p, "via", "must be 1 to %d characters", VIA_MAX);
    for (const char *s = c->via; *s; s++)
        if (!via_char_ok(*s))
            return fail(p, "via", "must be a single token (letters, digits, '-', '.', '_', ':')");
    /* lengths the request path would otherwise measure on every request */
    c->via_len = strlen(c->via);
    for (int i = 0; i < c->n_routes; i++) {
        struct route_config *r = &c->routes[i];
        r->host_len = r->host ? strlen(r->host) : 0;
        r->prefix_len = r->path_prefix ? strlen(r->path_prefix) : 0;
        if (r->has_upstream) {
            r->upstream.authority_len = strlen(r->upstream.authority);
            r->upstream.path_len = strlen(r->upstream.path);
        }
    }
    return 0;
}

static void provider_free(struct provider_config *pc)
{
    free(pc->name);
    free(pc->token_url);
    free(pc->code_url);
    free(pc->site);
    free(pc->introspect_url);
    free(pc->revoke_url);
    sfree(pc->client_id);
    sfree(pc->client_secret);
    sfree(pc->username);
    sfree(pc->password);
    sfree(pc->refresh_token);
    free(pc->redirect_uri);
    free(pc->scope);
    kv_free(pc->param_names, pc->n_param_names);
    kv_free(pc->params, pc->n_params);
    free(pc->disabled_reason);
}

static void config_free(struct config *c)
{
    if (!c) return;
    free(c->path);
    free(c->listen);
    free(c->via);
    free(c->ca_file);
    for (int i = 0; i < c->n_providers; i++)
        provider_free(&c->providers[i]);
    free(c->providers);
    for (int i = 0; i < c->n_routes; i++) {
        struct route_config *r = &c->routes[i];
        free(r->host);
        free(r->path_prefix);
        free(r->upstream.host);
        free(r->upstream.authority);
        free(r->upstream.path);
    }
    free(c->routes);
    free(c);
}

static struct config *parse_text(const char *json, const char *name, bool strict, FILE *warn_out,
                                 char err[CONFIG_ERR_MAX])
{
    struct config *c = calloc(1, sizeof *c);
    struct parser p = {.err = err, .strict = strict, .warn_out = warn_out, .cfg = c};
    cJSON *root = NULL;
    err[0] = '\0';
    if (!c) {
        fail(&p, name, "out of memory");
        goto out;
    }
    atomic_init(&c->refs, 1);
    const char *end = NULL;
    root = cJSON_ParseWithOpts(json, &end, true);
    if (!root) {
        int line = 1;
        for (const char *s = json; end && s < end && *s; s++)
            line += *s == '\n';
        fail(&p, name, "invalid JSON near line %d", line);
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        fail(&p, name, "expected a JSON object");
        goto out;
    }
    if (apply_defaults(&p, &config_table, c) < 0) goto out;
    if (check_keys(&p, root, "", &config_table) < 0) goto out;
    /* table order here: providers before the routes that name them */
    if (parse_rows(&p, root, "", &config_table, c) < 0) goto out;
    if (finish(&p, c, cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, "listen"))) < 0)
        goto out;
out:
    cJSON_Delete(root);
    if (p.failed) {
        config_free(c);
        return NULL;
    }
    return c;
}

struct config *config_parse(const char *json, bool strict, FILE *warn_out, char err[CONFIG_ERR_MAX])
{
    return parse_text(json, "config", strict, warn_out, err);
}

struct config *config_load(const char *path, bool strict, FILE *warn_out, char err[CONFIG_ERR_MAX])
{
    struct config *c = NULL;
    struct sbuf text = {0};
    char chunk[8192];
    err[0] = '\0';
    FILE *f = fopen(path, "re");
    if (!f) goto unreadable;
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (text.len + n > CONFIG_FILE_MAX) {
            snprintf(err, CONFIG_ERR_MAX, "cannot read %s: larger than %d bytes", path,
                     CONFIG_FILE_MAX);
            goto out;
        }
        if (sbuf_add(&text, chunk, n) < 0) {
            snprintf(err, CONFIG_ERR_MAX, "cannot read %s: out of memory", path);
            goto out;
        }
    }
    if (ferror(f)) goto unreadable;
    if (sbuf_add(&text, "", 0) < 0) {
        snprintf(err, CONFIG_ERR_MAX, "cannot read %s: out of memory", path);
        goto out;
    }
    c = parse_text(text.s, path, strict, warn_out, err);
    if (c && !(c->path = strdup(path))) {
        config_free(c);
        c = NULL;
        snprintf(err, CONFIG_ERR_MAX, "%s: out of memory", path);
    }
    goto out;
unreadable:
    snprintf(err, CONFIG_ERR_MAX, "cannot read %s: %s", path, strerror(errno));
out:
    if (f) fclose(f);
    sbuf_free(&text);
    return c;
}

struct config *config_ref(struct config *c)
{
    atomic_fetch_add(&c->refs, 1);
    return c;
}

void config_unref(struct config *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1) config_free(c);
}

int config_provider_index(const struct config *c, const char *name)
{
    for (int i = 0; i < c->n_providers; i++)
        if (strcmp(c->providers[i].name, name) == 0) return i;
    return -1;
}

/* ---- --check ---------------------------------------------------------------------------- */

static void print_addr(FILE *out, const char *what, const struct listen_addr *a)
{
    fprintf(out, "%s %s%s\n", what, a->text, a->loopback ? "" : " (remote)");
}

static void print_provider(FILE *out, const struct provider_config *pc)
{
    fprintf(out, "provider %s: preset %s, grant_type %s, token_url %s, client_auth %s", pc->name,
            preset_names[pc->preset], grant_names[pc->grant_type],
            pc->token_url ? pc->token_url : "(unset)", client_auth_names[pc->client_auth]);
    if (pc->scope) fprintf(out, ", scope \"%s\"", pc->scope);
    /* which secrets are present, never their values */
    const char *secrets[] = {pc->client_id ? "client_id" : NULL,
                             pc->client_secret ? "client_secret" : NULL,
                             pc->username ? "username" : NULL, pc->password ? "password" : NULL,
                             pc->refresh_token ? "refresh_token" : NULL};
    bool any = false;
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        if (!secrets[i]) continue;
        fprintf(out, "%s%s", any ? " " : ", set: ", secrets[i]);
        any = true;
    }
    if (pc->disabled)
        fprintf(out, ", disabled (%s)\n", pc->disabled_reason);
    else
        fprintf(out, ", enabled\n");
}

static void print_route(FILE *out, const struct config *c, int i)
{
    const struct route_config *r = &c->routes[i];
    const struct provider_config *pc = r->provider >= 0 ? &c->providers[r->provider] : NULL;
    fprintf(out, "route %d:", i);
    if (r->host) {
        fprintf(out, " host %s%s", r->host_wildcard ? "*" : "", r->host);
        if (r->host_port) fprintf(out, ":%d", r->host_port);
    }
    if (r->path_prefix)
        fprintf(out, " path %s%s", r->path_prefix, r->strip_prefix ? " (strip)" : "");
    if (r->has_upstream)
        fprintf(out, " -> %s://%s%s", r->upstream.tls ? "https" : "http", r->upstream.authority,
                r->upstream.path);
    else if (pc && !r->host_wildcard)
        fprintf(out, " -> https://%s", r->host);
    else
        fprintf(out, " -> %s://<requested host>", pc ? "https" : "<requested scheme>");
    if (pc)
        fprintf(out, " (provider %s%s", pc->name, pc->disabled ? ", disabled" : "");
    else
        fprintf(out, " (no provider");
    if (r->allow_plaintext) fprintf(out, ", allow_plaintext");
    if (r->client_authorization == CLIENT_AUTHZ_KEEP) fprintf(out, ", client_authorization keep");
    fprintf(out, ")\n");
}

void config_print(const struct config *c, FILE *out)
{
    for (int i = 0; i < c->n_listen; i++)
        print_addr(out, "listen", &c->listen[i]);
    if (c->has_admin)
        print_addr(out, "admin", &c->admin_listen);
    else
        fprintf(out, "admin none\n");
    fprintf(out, "via %s\n", c->via);
    fprintf(out, "workers %d\n", c->workers);
    for (int i = 0; i < c->n_providers; i++)
        print_provider(out, &c->providers[i]);
    for (int i = 0; i < c->n_routes; i++)
        print_route(out, c, i);
    if (c->n_routes == 0) /* valid (authproxy runs with it), but worth saying */
        fprintf(out, "no routes: every request would be refused (403 no_route)\n");
}

static bool str_eq(const char *a, const char *b)
{
    return (a == NULL) == (b == NULL) && (!a || strcmp(a, b) == 0);
}

static bool kv_eq(const struct kv *a, int na, const struct kv *b, int nb)
{
    if (na != nb) return false;
    for (int i = 0; i < na; i++)
        if (!str_eq(a[i].key, b[i].key) || !str_eq(a[i].value, b[i].value)) return false;
    return true;
}

bool provider_config_equal(const struct provider_config *a, const struct provider_config *b)
{
    return str_eq(a->name, b->name) && a->preset == b->preset && a->grant_type == b->grant_type &&
           a->client_auth == b->client_auth && a->param_style == b->param_style &&
           str_eq(a->token_url, b->token_url) && str_eq(a->code_url, b->code_url) &&
           str_eq(a->site, b->site) && str_eq(a->introspect_url, b->introspect_url) &&
           str_eq(a->revoke_url, b->revoke_url) && str_eq(a->client_id, b->client_id) &&
           str_eq(a->client_secret, b->client_secret) && str_eq(a->username, b->username) &&
           str_eq(a->password, b->password) && str_eq(a->refresh_token, b->refresh_token) &&
           str_eq(a->redirect_uri, b->redirect_uri) && str_eq(a->scope, b->scope) &&
           kv_eq(a->param_names, a->n_param_names, b->param_names, b->n_param_names) &&
           kv_eq(a->params, a->n_params, b->params, b->n_params) &&
           a->expires_in_ms == b->expires_in_ms && a->default_ttl_s == b->default_ttl_s &&
           a->refresh_before_s == b->refresh_before_s && a->idle_timeout_s == b->idle_timeout_s &&
           a->max_lifetime_s == b->max_lifetime_s && a->revoke_on_exit == b->revoke_on_exit &&
           a->accept_201 == b->accept_201 && a->use_jwt_exp == b->use_jwt_exp &&
           a->json_content_type == b->json_content_type && a->disabled == b->disabled &&
           str_eq(a->disabled_reason, b->disabled_reason);
}
