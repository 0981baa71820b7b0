/* test_router.c - host_normalize, router_match and router_strip_len.
 * Routes come from config_parse() so that they are normalised as in production; each test
 * unrefs its config. */
#include <stdlib.h>

#include "config.h"
#include "router.h"
#include "unit.h"

/* host_normalize on a C string; returns its result, fills host and port. */
static int norm(const char *in, int default_port, char host[HOST_MAX], int *port)
{
    host[0] = '\0';
    *port = -1;
    return host_normalize(in, strlen(in), default_port, host, port);
}

static struct config *load(const char *json)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = config_parse(json, false, NULL, err);
    if (!c) fprintf(stderr, "config_parse: %s\n", err);
    return c;
}

static const struct route_config *match(const struct config *c, const char *host, int port,
                                        const char *path, bool origin_form)
{
    return router_match(c, host, port, path, strlen(path), origin_form);
}

static int index_of(const struct config *c, const struct route_config *r)
{
    return r ? (int)(r - c->routes) : -1;
}

TEST(host_normalize_case_and_trailing_dot)
{
    char h[HOST_MAX];
    int port;
    CHECK_EQ_INT(norm("API.Example.COM", 80, h, &port), 0);
    CHECK_STR(h, "api.example.com");
    CHECK_EQ_INT(port, 80);
    CHECK_EQ_INT(norm("api.example.com.", 443, h, &port), 0);
    CHECK_STR(h, "api.example.com");
    CHECK_EQ_INT(port, 443);
    CHECK_EQ_INT(norm("api.example.com.:8443", 443, h, &port), 0);
    CHECK_STR(h, "api.example.com");
    CHECK_EQ_INT(port, 8443);
    CHECK_EQ_INT(norm("my_host-1.local", 80, h, &port), 0);
    CHECK_STR(h, "my_host-1.local");
    CHECK_EQ_INT(norm("10.0.0.1:81", 80, h, &port), 0);
    CHECK_STR(h, "10.0.0.1");
    CHECK_EQ_INT(port, 81);
}

TEST(host_normalize_ports)
{
    char h[HOST_MAX];
    int port;
    CHECK_EQ_INT(norm("a.com:1", 80, h, &port), 0);
    CHECK_EQ_INT(port, 1);
    CHECK_EQ_INT(norm("a.com:65535", 80, h, &port), 0);
    CHECK_EQ_INT(port, 65535);
    CHECK_EQ_INT(norm("a.com:", 80, h, &port), 0); /* empty port: the default (RFC 3986) */
    CHECK_EQ_INT(port, 80);
    CHECK_EQ_INT(norm("a.com", 0, h, &port), 0);
    CHECK_EQ_INT(port, 0);
    CHECK_EQ_INT(norm("a.com:0", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com:65536", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com:123456", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com:8o", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com:-1", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com:80:80", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com: 80", 80, h, &port), -1);
}

TEST(host_normalize_ipv6)
{
    char h[HOST_MAX];
    int port;
    CHECK_EQ_INT(norm("[::1]", 80, h, &port), 0);
    CHECK_STR(h, "::1");
    CHECK_EQ_INT(port, 80);
    CHECK_EQ_INT(norm("[2001:DB8::A]:8080", 80, h, &port), 0);
    CHECK_STR(h, "2001:db8::a");
    CHECK_EQ_INT(port, 8080);
    CHECK_EQ_INT(norm("[::ffff:127.0.0.1]:1", 80, h, &port), 0);
    CHECK_STR(h, "::ffff:127.0.0.1");
    CHECK_EQ_INT(norm("[]", 80, h, &port), -1);
    CHECK_EQ_INT(norm("[::1", 80, h, &port), -1);
    CHECK_EQ_INT(norm("[::1]x", 80, h, &port), -1);
    CHECK_EQ_INT(norm("[::g]", 80, h, &port), -1);
    CHECK_EQ_INT(norm("[fe80::1%eth0]", 80, h, &port), -1);
    CHECK_EQ_INT(norm("[1:2:3]", 80, h, &port), -1);
    CHECK_EQ_INT(norm("::1", 80, h, &port), -1); /* unbracketed */
}

TEST(host_normalize_rejects)
{
    char h[HOST_MAX];
    int port;
    CHECK_EQ_INT(host_normalize("", 0, 80, h, &port), -1);
    CHECK_EQ_INT(norm(":80", 80, h, &port), -1);
    CHECK_EQ_INT(norm(".", 80, h, &port), -1);
    CHECK_EQ_INT(norm("user@a.com", 80, h, &port), -1);
    CHECK_EQ_INT(norm("user:pw@a.com:80", 80, h, &port), -1);
    CHECK_EQ_INT(norm("[::1]@x", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a b.com", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com/x", 80, h, &port), -1);
    CHECK_EQ_INT(norm("*.a.com", 80, h, &port), -1);
    CHECK_EQ_INT(norm(".a.com", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a..com", 80, h, &port), -1);
    CHECK_EQ_INT(norm("a.com..", 80, h, &port), -1);
    CHECK_EQ_INT(norm("\xc3\xa9.com", 80, h, &port), -1);
    char long_host[300];
    memset(long_host, 'a', sizeof long_host - 1);
    long_host[sizeof long_host - 1] = '\0';
    CHECK_EQ_INT(norm(long_host, 80, h, &port), -1);
    long_host[HOST_MAX - 1] = '\0'; /* 255 characters fit */
    CHECK_EQ_INT(norm(long_host, 80, h, &port), 0);
    /* the length argument is honoured: no NUL needed */
    CHECK_EQ_INT(host_normalize("a.com:80garbage", 8, 443, h, &port), 0);
    CHECK_STR(h, "a.com");
    CHECK_EQ_INT(port, 80);
}

static const char *routes_json =
    "{\"providers\": {\"p\": {\"token_url\": \"https://t.example/token\", \"client_id\": \"id\"}},"
    " \"routes\": ["
    "  {\"host\": \"api.example.com\", \"provider\": \"p\"},"
    "  {\"host\": \"*.wild.example.com\", \"provider\": \"p\"},"
    "  {\"host\": \"ported.example.com:8443\", \"provider\": \"p\"},"
    "  {\"path_prefix\": \"/eptura/\", \"strip_prefix\": true, \"upstream\": "
    "\"https://e.example\"},"
    "  {\"path_prefix\": \"/api\", \"strip_prefix\": true, \"upstream\": \"https://a.example\"},"
    "  {\"host\": \"both.example.com\", \"path_prefix\": \"/v2/\"},"
    "  {\"host\": \"both.example.com\"},"
    "  {\"host\": \"API.example.com.\", \"upstream\": \"https://never.example\"}"
    "]}";

TEST(router_exact_host)
{
    struct config *c = load(routes_json);
    REQUIRE(c);
    CHECK_EQ_INT(index_of(c, match(c, "api.example.com", 443, "/x", false)), 0);
    CHECK_EQ_INT(index_of(c, match(c, "api.example.com", 80, "/x", true)), 0); /* any port */
    CHECK_EQ_INT(index_of(c, match(c, "api.example.co", 80, "/x", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "xapi.example.com", 80, "/x", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "api.example.com.evil", 80, "/x", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "", 80, "/x", true)), -1);
    CHECK(router_match(c, NULL, 80, "/x", 2, true) == NULL);
    config_unref(c);
}

TEST(router_wildcard_host)
{
    struct config *c = load(routes_json);
    REQUIRE(c);
    CHECK_EQ_INT(index_of(c, match(c, "a.wild.example.com", 443, "/", false)), 1);
    CHECK_EQ_INT(index_of(c, match(c, "b.a.wild.example.com", 443, "/", false)), 1);
    CHECK_EQ_INT(index_of(c, match(c, "wild.example.com", 443, "/", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "xwild.example.com", 443, "/", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "a.wild.example.com.x", 443, "/", false)), -1);
    config_unref(c);
}

TEST(router_port)
{
    struct config *c = load(routes_json);
    REQUIRE(c);
    CHECK_EQ_INT(index_of(c, match(c, "ported.example.com", 8443, "/", false)), 2);
    CHECK_EQ_INT(index_of(c, match(c, "ported.example.com", 443, "/", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "ported.example.com", 80, "/", true)), -1);
    config_unref(c);
}

TEST(router_path_prefix_origin_form_only)
{
    struct config *c = load(routes_json);
    REQUIRE(c);
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/eptura/v1/x", true)), 3);
    CHECK_EQ_INT(index_of(c, match(c, "", 80, "/eptura/", true)), 3);
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/eptura/v1/x", false)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/eptura", true)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/EPTURA/", true)), -1);
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/api", true)), 4);
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/apix", true)), 4); /* byte prefix */
    CHECK_EQ_INT(index_of(c, match(c, "localhost", 8080, "/ap", true)), -1);
    /* path_len is honoured: the path is not NUL-terminated */
    CHECK(router_match(c, "localhost", 8080, "/eptura/", 7, true) == NULL);
    config_unref(c);
}

TEST(router_first_match_wins)
{
    struct config *c = load(routes_json);
    REQUIRE(c);
    CHECK_EQ_INT(index_of(c, match(c, "both.example.com", 80, "/v2/x", true)), 5);
    CHECK_EQ_INT(index_of(c, match(c, "both.example.com", 80, "/v1/x", true)), 6);
    CHECK_EQ_INT(index_of(c, match(c, "both.example.com", 80, "/v2/x", false)), 6);
    /* route 7 normalises to route 0's host and is never reached */
    CHECK_EQ_INT(index_of(c, match(c, "api.example.com", 80, "/", true)), 0);
    CHECK_STR(c->routes[7].host, "api.example.com");
    config_unref(c);
}

TEST(router_no_route)
{
    struct config *c = load("{\"routes\": [{\"host\": \"a.example\"}]}");
    REQUIRE(c);
    CHECK(match(c, "b.example", 80, "/", true) == NULL);
    CHECK(match(c, "a.example", 80, "/", true) == &c->routes[0]);
    config_unref(c);
    c = load("{}");
    REQUIRE(c);
    CHECK(match(c, "a.example", 80, "/", true) == NULL);
    config_unref(c);
}

static size_t strip(const struct route_config *r, const char *path)
{
    return router_strip_len(r, path, strlen(path));
}

TEST(router_strip_len)
{
    struct config *c = load(routes_json);
    REQUIRE(c);
    const struct route_config *eptura = &c->routes[3], *api = &c->routes[4];
    CHECK_EQ_INT(strip(eptura, "/eptura/v1/x"), 7); /* "/v1/x" */
    CHECK_EQ_INT(strip(eptura, "/eptura/"), 7);     /* "/" */
    CHECK_EQ_INT(strip(eptura, "/eptura/?q=1"), 7); /* "/?q=1" */
    CHECK_EQ_INT(strip(api, "/api/x"), 4);          /* "/x" */
    CHECK_EQ_INT(strip(api, "/api"), 4);            /* "": the caller sends "/" */
    CHECK_EQ_INT(strip(api, "/api?q"), 4);          /* "?q": the caller sends "/?q" */
    CHECK_EQ_INT(strip(api, "/other"), 0);          /* not a match: nothing */
    CHECK_EQ_INT(strip(&c->routes[0], "/x"), 0);    /* no path_prefix */
    CHECK_EQ_INT(strip(&c->routes[5], "/v2/x"), 0); /* path_prefix without strip_prefix */
    config_unref(c);
}

/* path_normalize on s: the result, or "ERR" */
static const char *pnorm(const char *s)
{
    static char out[512];
    size_t n;
    if (path_normalize(s, strlen(s), out, &n) < 0) return "ERR";
    CHECK(n <= strlen(s)); /* never longer: it may be written back over the input */
    out[n] = 0;
    return out;
}

TEST(path_normalize_rfc3986)
{
    CHECK_STR(pnorm("/"), "/");
    CHECK_STR(pnorm("/docs/a.txt"), "/docs/a.txt");
    CHECK_STR(pnorm("/docs/../secret.txt"), "/secret.txt");
    CHECK_STR(pnorm("/docs/%2e%2e/secret.txt"), "/secret.txt");
    CHECK_STR(pnorm("/docs/%2E%2e/secret.txt"), "/secret.txt");
    CHECK_STR(pnorm("/docs/.%2e/x"), "/x");
    CHECK_STR(pnorm("/a/./b/../c"), "/a/c");
    CHECK_STR(pnorm("/a/b/.."), "/a/");
    CHECK_STR(pnorm("/a/b/."), "/a/b/");
    CHECK_STR(pnorm("/a/.."), "/");
    CHECK_STR(pnorm("/."), "/");
    CHECK_STR(pnorm("/a//b"), "/a//b");
    CHECK_STR(pnorm("/a/..b/.c"), "/a/..b/.c"); /* not dot-segments */
    CHECK_STR(pnorm("/%7euser/%41%62c"), "/~user/Abc");
    CHECK_STR(pnorm("/a%20b/%c3%a9"), "/a%20b/%C3%A9");
    CHECK_STR(pnorm("/docs/x?a=../b&c=%2f"), "/docs/x?a=../b&c=%2f"); /* the query is not a path */
    CHECK_STR(pnorm("/a/../b?q"), "/b?q");
    /* SPEC's 400s */
    CHECK_STR(pnorm("/.."), "ERR");
    CHECK_STR(pnorm("/a/../.."), "ERR");
    CHECK_STR(pnorm("/docs/../../etc/passwd"), "ERR");
    CHECK_STR(pnorm("/docs/%2e%2e/%2e%2e/x"), "ERR");
    CHECK_STR(pnorm("/docs/..%2fsecret.txt"), "ERR");
    CHECK_STR(pnorm("/docs/a%2Fb"), "ERR");
    CHECK_STR(pnorm("/docs/a%5cb"), "ERR");
    CHECK_STR(pnorm("/docs/a\\b"), "ERR");
    CHECK_STR(pnorm("/bad%zz"), "ERR");
    CHECK_STR(pnorm("/bad%4"), "ERR");
    CHECK_STR(pnorm("/bad%"), "ERR");
    CHECK_STR(pnorm("*"), "ERR");
}
