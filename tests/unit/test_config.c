/* test_config.c - config_parse / config_load: the SPEC example, defaults, errors with their key
 * paths, ${VAR} expansion, *_file secrets, disabled providers, presets, routes, listen
 * addresses, via, and --check output that never shows a secret.
 * Each test unrefs its configs, frees its captured output and removes its temporary files. */
#include <stdlib.h>
#include <unistd.h>
#include <netinet/in.h>

#include "config.h"
#include "unit.h"

#define JSON_MAX 8192

static char last_err[CONFIG_ERR_MAX];

static struct config *parse(const char *json)
{
    struct config *c = config_parse(json, false, NULL, last_err);
    if (!c) fprintf(stderr, "config_parse: %s\n", last_err);
    return c;
}

/* The error config_parse gives for json ("" when it loads). */
static const char *parse_error_strict(const char *json, bool strict)
{
    struct config *c = config_parse(json, strict, NULL, last_err);
    if (c) {
        config_unref(c);
        return "";
    }
    return last_err;
}

static const char *parse_error(const char *json)
{
    return parse_error_strict(json, false);
}

/* A temporary file holding data; path receives its name. */
static void temp_file(char path[64], const char *data)
{
    snprintf(path, 64, "/tmp/authproxy-unit-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) {
        perror("mkstemp");
        abort();
    }
    size_t n = strlen(data);
    if (write(fd, data, n) != (ssize_t)n) abort();
    close(fd);
}

/* The example of SPEC.md "Configuration", with the enable secret file at %s. */
static const char *spec_example =
    "{\n"
    "  \"listen\": [\"127.0.0.1:8080\"],\n"
    "  \"workers\": 1,\n"
    "  \"admin_listen\": \"127.0.0.1:9901\",\n"
    "  \"via\": \"authproxy-gw1\",\n"
    "  \"log\": {\"level\": \"info\", \"format\": \"text\"},\n"
    "  \"tls\": {\"ca_file\": \"/etc/ssl/certs/ca-certificates.crt\"},\n"
    "  \"limits\": {\n"
    "    \"max_header_bytes\": 65536, \"max_headers\": 100,\n"
    "    \"retry_buffer_bytes\": 1048576,\n"
    "    \"header_timeout_ms\": 10000, \"idle_timeout_ms\": 60000,\n"
    "    \"upstream_connect_timeout_ms\": 5000, \"upstream_timeout_ms\": 60000,\n"
    "    \"token_timeout_ms\": 10000, \"max_connections\": 10000, \"drain_ms\": 10000\n"
    "  },\n"
    "  \"providers\": {\n"
    "    \"epc\": {\n"
    "      \"preset\": \"epc\",\n"
    "      \"token_url\": \"https://api.elliemae.com/oauth2/v1/token\",\n"
    "      \"client_id\": \"${EPC_CLIENT_ID}\", \"client_secret\": \"${EPC_CLIENT_SECRET}\",\n"
    "      \"client_auth\": \"basic\",\n"
    "      \"scope\": \"pc pcapi\",\n"
    "      \"introspect_url\": \"https://api.elliemae.com/oauth2/v1/token/introspection\",\n"
    "      \"revoke_url\": \"https://api.elliemae.com/oauth2/v1/token/revocation\",\n"
    "      \"revoke_on_exit\": true\n"
    "    },\n"
    "    \"enable\": {\n"
    "      \"token_url\": \"https://enable.example.com/connect/token\",\n"
    "      \"client_id\": \"${ENABLE_CLIENT_ID}\", \"client_secret_file\": \"%s\",\n"
    "      \"client_auth\": \"body\",\n"
    "      \"scope\": \"read:deals read:users\",\n"
    "      \"params\": {\"dealtrack_registration_id\": \"${ENABLE_REGISTRATION_ID}\"}\n"
    "    },\n"
    "    \"eptura\": {\n"
    "      \"preset\": \"eptura\",\n"
    "      \"site\": \"https://acme.ioffice.example.com\",\n"
    "      \"client_id\": \"${EPTURA_CLIENT_ID}\",\n"
    "      \"username\": \"${EPTURA_USER}\", \"password\": \"${EPTURA_PASSWORD}\",\n"
    "      \"redirect_uri\": \"https://localhost/callback\", \"scope\": \"api\"\n"
    "    }\n"
    "  },\n"
    "  \"routes\": [\n"
    "    {\"host\": \"api.elliemae.com\", \"provider\": \"epc\"},\n"
    "    {\"host\": \"*.enable.example.com\", \"provider\": \"enable\"},\n"
    "    {\"path_prefix\": \"/eptura/\", \"strip_prefix\": true, \"upstream\": "
    "\"https://acme.ioffice.example.com\", \"provider\": \"eptura\"},\n"
    "    {\"host\": \"status.example.com\", \"upstream\": \"http://status.example.com\"}\n"
    "  ]\n"
    "}\n";

#define SECRET_EPC_ID "epc-id-SECRET-1111"
#define SECRET_EPC "epc-secret-SECRET-2222"
#define SECRET_ENABLE_ID "enable-id-SECRET-3333"
#define SECRET_ENABLE "enable-secret-SECRET-4444"
#define SECRET_EPTURA_ID "eptura-id-SECRET-5555"
#define SECRET_EPTURA_USER "eptura-user-SECRET-6666"
#define SECRET_EPTURA_PW "eptura-pw-SECRET-7777"

static void set_spec_env(void)
{
    setenv("EPC_CLIENT_ID", SECRET_EPC_ID, 1);
    setenv("EPC_CLIENT_SECRET", SECRET_EPC, 1);
    setenv("ENABLE_CLIENT_ID", SECRET_ENABLE_ID, 1);
    setenv("ENABLE_REGISTRATION_ID", "reg-42", 1);
    setenv("EPTURA_CLIENT_ID", SECRET_EPTURA_ID, 1);
    setenv("EPTURA_USER", SECRET_EPTURA_USER, 1);
    setenv("EPTURA_PASSWORD", SECRET_EPTURA_PW, 1);
}

static void unset_spec_env(void)
{
    const char *vars[] = {"EPC_CLIENT_ID",          "EPC_CLIENT_SECRET", "ENABLE_CLIENT_ID",
                          "ENABLE_REGISTRATION_ID", "EPTURA_CLIENT_ID",  "EPTURA_USER",
                          "EPTURA_PASSWORD"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

/* The SPEC example with the enable secret file at file. */
static void spec_json(char json[JSON_MAX], const char *file)
{
    snprintf(json, JSON_MAX, spec_example, file);
}

static const char *kv_get(const struct kv *arr, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(arr[i].key, key) == 0) return arr[i].value;
    return NULL;
}

static int port_of(const struct listen_addr *a)
{
    if (a->sa.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->sa)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->sa)->sin_port);
}

TEST(config_spec_example)
{
    char file[64], json[JSON_MAX];
    temp_file(file, SECRET_ENABLE "\n");
    spec_json(json, file);
    set_spec_env();
    struct config *c = parse(json);
    unset_spec_env();
    unlink(file);
    REQUIRE(c);
    CHECK_EQ_INT(atomic_load(&c->refs), 1);
    CHECK(c->path == NULL);
    CHECK_EQ_INT(c->n_listen, 1);
    CHECK_STR(c->listen[0].text, "127.0.0.1:8080");
    CHECK_EQ_INT(c->listen[0].sa.ss_family, AF_INET);
    CHECK_EQ_INT(port_of(&c->listen[0]), 8080);
    CHECK(c->listen[0].loopback);
    CHECK_EQ_INT(c->workers, 1);
    CHECK(c->has_admin);
    CHECK_STR(c->admin_listen.text, "127.0.0.1:9901");
    CHECK_EQ_INT(port_of(&c->admin_listen), 9901);
    CHECK(!c->allow_remote);
    CHECK_STR(c->via, "authproxy-gw1");
    CHECK_EQ_INT(c->log_level, LOG_INFO);
    CHECK_EQ_INT(c->log_format, LOG_TEXT);
    CHECK_STR(c->ca_file, "/etc/ssl/certs/ca-certificates.crt");
    CHECK_EQ_INT(c->limits.max_header_bytes, 65536);
    CHECK_EQ_INT(c->limits.drain_ms, 10000);

    REQUIRE(c->n_providers == 3);
    const struct provider_config *epc = &c->providers[0], *en = &c->providers[1],
                                 *ep = &c->providers[2];
    CHECK_STR(epc->name, "epc");
    CHECK_EQ_INT(epc->preset, PRESET_EPC);
    CHECK_EQ_INT(epc->grant_type, GRANT_CLIENT_CREDENTIALS);
    CHECK_EQ_INT(epc->client_auth, CLIENT_AUTH_BASIC);
    CHECK_STR(epc->token_url, "https://api.elliemae.com/oauth2/v1/token");
    CHECK_STR(epc->client_id, SECRET_EPC_ID);
    CHECK_STR(epc->client_secret, SECRET_EPC);
    CHECK_STR(epc->scope, "pc pcapi");
    CHECK_STR(epc->revoke_url, "https://api.elliemae.com/oauth2/v1/token/revocation");
    CHECK_STR(epc->introspect_url, "https://api.elliemae.com/oauth2/v1/token/introspection");
    CHECK(epc->revoke_on_exit);
    CHECK(epc->accept_201);
    CHECK_EQ_INT(epc->idle_timeout_s, 900);
    CHECK_EQ_INT(epc->max_lifetime_s, 7200);
    CHECK_EQ_INT(epc->default_ttl_s, 300);
    CHECK_EQ_INT(epc->refresh_before_s, 60);
    CHECK(!epc->disabled);

    CHECK_STR(en->name, "enable");
    CHECK_EQ_INT(en->preset, PRESET_RFC6749);
    CHECK_EQ_INT(en->client_auth, CLIENT_AUTH_BODY);
    CHECK_STR(en->client_id, SECRET_ENABLE_ID);
    CHECK_STR(en->client_secret, SECRET_ENABLE); /* trailing newline stripped */
    CHECK_STR(en->scope, "read:deals read:users");
    CHECK_EQ_INT(en->n_params, 1);
    CHECK_STR(kv_get(en->params, en->n_params, "dealtrack_registration_id"), "reg-42");
    CHECK(!en->use_jwt_exp); /* no preset */
    CHECK(!en->disabled);

    CHECK_STR(ep->name, "eptura");
    CHECK_EQ_INT(ep->preset, PRESET_EPTURA);
    CHECK_EQ_INT(ep->grant_type, GRANT_PASSWORD_CODE);
    CHECK_EQ_INT(ep->param_style, PARAM_HEADERS);
    CHECK_STR(ep->code_url, "https://acme.ioffice.example.com/external/api/oauth2/auth");
    CHECK_STR(ep->token_url, "https://acme.ioffice.example.com/external/api/oauth2/token");
    CHECK_STR(ep->revoke_url, "https://acme.ioffice.example.com/external/api/oauth2/revoke");
    CHECK_STR(ep->username, SECRET_EPTURA_USER);
    CHECK_STR(ep->password, SECRET_EPTURA_PW);
    CHECK_STR(ep->redirect_uri, "https://localhost/callback");
    CHECK_STR(ep->scope, "api");
    CHECK(ep->expires_in_ms);
    CHECK(ep->json_content_type);
    CHECK(!ep->disabled);

    REQUIRE(c->n_routes == 4);
    const struct route_config *r = c->routes;
    CHECK_STR(r[0].host, "api.elliemae.com");
    CHECK(!r[0].host_wildcard);
    CHECK_EQ_INT(r[0].host_port, 0);
    CHECK(r[0].path_prefix == NULL);
    CHECK(!r[0].has_upstream);
    CHECK_EQ_INT(r[0].provider, 0);
    CHECK_EQ_INT(r[0].client_authorization, CLIENT_AUTHZ_REPLACE);
    CHECK_STR(r[1].host, ".enable.example.com");
    CHECK(r[1].host_wildcard);
    CHECK_EQ_INT(r[1].provider, 1);
    CHECK(r[2].host == NULL);
    CHECK_STR(r[2].path_prefix, "/eptura/");
    CHECK(r[2].strip_prefix);
    CHECK(r[2].has_upstream);
    CHECK(r[2].upstream.tls);
    CHECK_STR(r[2].upstream.host, "acme.ioffice.example.com");
    CHECK_EQ_INT(r[2].upstream.port, 443);
    CHECK_STR(r[2].upstream.authority, "acme.ioffice.example.com");
    CHECK_STR(r[2].upstream.path, "");
    CHECK_EQ_INT(r[2].provider, 2);
    CHECK_STR(r[3].host, "status.example.com");
    CHECK(!r[3].upstream.tls);
    CHECK_EQ_INT(r[3].upstream.port, 80);
    CHECK_EQ_INT(r[3].provider, -1);
    CHECK_EQ_INT(config_provider_index(c, "eptura"), 2);
    CHECK_EQ_INT(config_provider_index(c, "nope"), -1);
    config_unref(c);
}

TEST(config_spec_example_without_variables)
{
    char file[64], json[JSON_MAX];
    temp_file(file, SECRET_ENABLE);
    spec_json(json, file);
    set_spec_env();
    unsetenv("EPTURA_USER");
    unsetenv("EPTURA_PASSWORD");
    char *warn = NULL;
    size_t warn_len = 0;
    FILE *w = open_memstream(&warn, &warn_len);
    REQUIRE(w);
    struct config *c = config_parse(json, false, w, last_err);
    fclose(w);
    CHECK(c != NULL);
    if (c) {
        const struct provider_config *ep = &c->providers[2];
        CHECK(!c->providers[0].disabled);
        CHECK(!c->providers[1].disabled);
        CHECK(ep->disabled);
        CHECK_STR(ep->disabled_reason, "environment variable EPTURA_USER is not set");
        CHECK(ep->username == NULL);
        CHECK(ep->password == NULL);
        CHECK_STR(ep->token_url, "https://acme.ioffice.example.com/external/api/oauth2/token");
        config_unref(c);
    }
    /* one line, naming the provider and the variable */
    CHECK_STR(warn, "warning: provider eptura disabled: environment variable EPTURA_USER is not "
                    "set (providers.eptura.username)\n");
    free(warn);
    CHECK_STR(parse_error_strict(json, true),
              "providers.eptura.username: environment variable EPTURA_USER is not set");
    unset_spec_env();
    unlink(file);
}

TEST(config_defaults)
{
    struct config *c = parse("{}");
    REQUIRE(c);
    CHECK_EQ_INT(c->n_listen, 1);
    CHECK_STR(c->listen[0].text, "127.0.0.1:8080");
    CHECK(c->listen[0].loopback);
    CHECK_EQ_INT(c->workers, 1);
    CHECK(!c->has_admin);
    CHECK(!c->allow_remote);
    CHECK_EQ_INT(c->log_level, LOG_INFO);
    CHECK_EQ_INT(c->log_format, LOG_TEXT);
    CHECK_STR(c->ca_file, "/etc/ssl/certs/ca-certificates.crt");
    CHECK_EQ_INT(c->limits.max_header_bytes, 65536);
    CHECK_EQ_INT(c->limits.max_headers, 100);
    CHECK_EQ_INT(c->limits.retry_buffer_bytes, 1048576);
    CHECK_EQ_INT(c->limits.retry_buffer_total_bytes, 64 << 20);
    CHECK_EQ_INT(c->limits.header_timeout_ms, 10000);
    CHECK_EQ_INT(c->limits.idle_timeout_ms, 60000);
    CHECK_EQ_INT(c->limits.upstream_connect_timeout_ms, 5000);
    CHECK_EQ_INT(c->limits.upstream_timeout_ms, 60000);
    CHECK_EQ_INT(c->limits.token_timeout_ms, 10000);
    CHECK_EQ_INT(c->limits.max_connections, 10000);
    CHECK_EQ_INT(c->limits.drain_ms, 10000);
    CHECK_EQ_INT(c->n_providers, 0);
    CHECK_EQ_INT(c->n_routes, 0);
    config_unref(c);

    c = parse("{\"log\": {\"level\": \"debug\", \"format\": \"json\"}, \"workers\": 4,"
              " \"limits\": {\"max_headers\": 50}, \"tls\": {\"ca_file\": \"/x/ca.pem\"}}");
    REQUIRE(c);
    CHECK_EQ_INT(c->log_level, LOG_DEBUG);
    CHECK_EQ_INT(c->log_format, LOG_JSON);
    CHECK_EQ_INT(c->workers, 4);
    CHECK_EQ_INT(c->limits.max_headers, 50);
    CHECK_EQ_INT(c->limits.max_header_bytes, 65536);
    CHECK_STR(c->ca_file, "/x/ca.pem");
    config_unref(c);
}

TEST(config_via_default)
{
    char host[256] = "";
    gethostname(host, sizeof host);
    char want[400];
    snprintf(want, sizeof want, "authproxy-%s-9123", host);
    struct config *c = parse("{\"listen\": [\"127.0.0.1:9123\", \"127.0.0.1:9124\"]}");
    REQUIRE(c);
    CHECK_STR(c->via, want);
    config_unref(c);
    snprintf(want, sizeof want, "authproxy-%s-8080", host);
    c = parse("{}");
    REQUIRE(c);
    CHECK_STR(c->via, want);
    config_unref(c);
    CHECK_STR(parse_error("{\"via\": \"a b\"}"),
              "via: must be a single token (letters, digits, '-', '.', '_', ':')");
    CHECK_STR(parse_error("{\"via\": \"\"}"), "via: must be 1 to 128 characters");
}

TEST(config_unknown_keys)
{
    CHECK_STR(parse_error("{\"foo\": 1}"), "foo: unknown key");
    CHECK_STR(parse_error("{\"limits\": {\"foo\": 1}}"), "limits.foo: unknown key");
    CHECK_STR(parse_error("{\"log\": {\"colour\": true}}"), "log.colour: unknown key");
    CHECK_STR(parse_error("{\"tls\": {\"cert\": \"x\"}}"), "tls.cert: unknown key");
    CHECK_STR(parse_error("{\"providers\": {\"epc\": {\"preset\": \"epc\", \"scpoe\": \"x\"}}}"),
              "providers.epc.scpoe: unknown key");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"scope_file\": \"/x\"}}}"),
              "providers.p.scope_file: unknown key");
    CHECK_STR(parse_error("{\"routes\": [{\"host\": \"a.com\"}, {\"host\": \"b.com\"},"
                          " {\"hots\": \"c.com\"}]}"),
              "routes[2].hots: unknown key");
    CHECK_STR(parse_error("{\"workers\": 1, \"workers\": 2}"), "workers: duplicate key");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"client_auth\": \"none\", \"token_url\": "
                          "\"https://t/\"}, \"p\": {}}}"),
              "providers.p: duplicate key");
}

TEST(config_type_errors)
{
    CHECK_STR(parse_error("{\"limits\": {\"max_headers\": \"abc\"}}"),
              "limits.max_headers: expected an integer");
    CHECK_STR(parse_error("{\"limits\": {\"max_headers\": 1.5}}"),
              "limits.max_headers: expected an integer");
    CHECK_STR(parse_error("{\"limits\": {\"max_headers\": true}}"),
              "limits.max_headers: expected an integer");
    CHECK_STR(parse_error("{\"limits\": {\"max_headers\": 0}}"),
              "limits.max_headers: must be between 1 and 10000");
    CHECK_STR(parse_error("{\"limits\": {\"max_connections\": -5}}"),
              "limits.max_connections: must be between 1 and 1000000");
    CHECK_STR(parse_error("{\"limits\": {\"max_headers\": 1e30}}"),
              "limits.max_headers: expected an integer");
    CHECK_STR(parse_error("{\"workers\": 0}"), "workers: must be between 1 and 1024");
    CHECK_STR(parse_error("{\"limits\": 5}"), "limits: expected an object");
    CHECK_STR(parse_error("{\"allow_remote\": \"yes\"}"), "allow_remote: expected true or false");
    CHECK_STR(parse_error("{\"log\": {\"level\": \"verbose\"}}"),
              "log.level: expected one of debug, info, warn, error");
    CHECK_STR(parse_error("{\"via\": 5}"), "via: expected a string");
    CHECK_STR(parse_error("{\"listen\": 5}"), "listen: expected a string or an array of strings");
    CHECK_STR(parse_error("{\"listen\": []}"), "listen: expected at least one address");
    CHECK_STR(parse_error("{\"listen\": [\"127.0.0.1:1\", 2]}"), "listen[1]: expected a string");
    CHECK_STR(parse_error("{\"routes\": {}}"), "routes: expected an array");
    CHECK_STR(parse_error("{\"routes\": [5]}"), "routes[0]: expected an object");
    CHECK_STR(parse_error("{\"providers\": []}"), "providers: expected an object");
    CHECK_STR(parse_error("{\"providers\": {\"p\": \"x\"}}"), "providers.p: expected an object");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"client_auth\": \"post\"}}}"),
              "providers.p.client_auth: expected one of basic, body, none");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"params\": {\"a\": 1}}}}"),
              "providers.p.params.a: expected a string");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"expires_in_unit\": \"h\"}}}"),
              "providers.p.expires_in_unit: expected one of s, ms");
    CHECK_STR(parse_error("{\"routes\": [{\"host\": \"a.com\", \"strip_prefix\": 1}]}"),
              "routes[0].strip_prefix: expected true or false");
    CHECK_STR(parse_error("{\"via\": \"a\\u0001b\"}"), "via: contains a control character");
}

TEST(config_invalid_json)
{
    CHECK_STR(parse_error("{\n  \"workers\": 1,\n  \"via\": \n}\n"),
              "config: invalid JSON near line 4");
    CHECK_STR(parse_error("{\"workers\": 1} x"), "config: invalid JSON near line 1");
    CHECK_STR(parse_error(""), "config: invalid JSON near line 1");
    CHECK_STR(parse_error("[1]"), "config: expected a JSON object");
}

TEST(config_variable_expansion)
{
    setenv("AP_TEST_A", "alpha", 1);
    setenv("AP_TEST_B", "beta", 1);
    setenv("AP_TEST_PORT", "9555", 1);
    setenv("AP_TEST_WORKERS", "3", 1);
    setenv("AP_TEST_BOOL", "true", 1);
    setenv("AP_TEST_EMPTY", "", 1);
    struct config *c =
        parse("{\"via\": \"${AP_TEST_A}-${AP_TEST_B}.${AP_TEST_A}$x$${AP_TEST_EMPTY}\","
              " \"listen\": \"127.0.0.1:${AP_TEST_PORT}\", \"workers\": \"${AP_TEST_WORKERS}\","
              " \"allow_remote\": \"${AP_TEST_BOOL}\","
              " \"routes\": [{\"host\": \"${AP_TEST_A}.example\", \"upstream\": "
              "\"https://${AP_TEST_B}.example:${AP_TEST_PORT}/v1/\"}]}");
    REQUIRE(c);
    CHECK_STR(c->via, "alpha-beta.alpha$x$");
    CHECK_STR(c->listen[0].text, "127.0.0.1:9555");
    CHECK_EQ_INT(port_of(&c->listen[0]), 9555);
    CHECK_EQ_INT(c->workers, 3);
    CHECK(c->allow_remote);
    CHECK_STR(c->routes[0].host, "alpha.example");
    CHECK_STR(c->routes[0].upstream.authority, "beta.example:9555");
    CHECK_STR(c->routes[0].upstream.path, "/v1");
    config_unref(c);
    setenv("AP_TEST_WORKERS", "many", 1);
    CHECK_STR(parse_error("{\"workers\": \"${AP_TEST_WORKERS}\"}"), "workers: expected an integer");
    CHECK_STR(parse_error("{\"via\": \"${AP_TEST_A\"}"),
              "via: bad variable reference: expected ${NAME}");
    CHECK_STR(parse_error("{\"via\": \"${1A}\"}"), "via: bad variable reference: expected ${NAME}");
    CHECK_STR(parse_error("{\"via\": \"${}\"}"), "via: bad variable reference: expected ${NAME}");
    setenv("AP_TEST_NL", "a\nb", 1);
    CHECK_STR(parse_error("{\"via\": \"${AP_TEST_NL}\"}"), "via: contains a control character");
    unsetenv("AP_TEST_A");
    unsetenv("AP_TEST_B");
    unsetenv("AP_TEST_PORT");
    unsetenv("AP_TEST_WORKERS");
    unsetenv("AP_TEST_BOOL");
    unsetenv("AP_TEST_EMPTY");
    unsetenv("AP_TEST_NL");
}

TEST(config_unset_variable_outside_provider)
{
    unsetenv("AP_TEST_NOPE");
    CHECK_STR(parse_error("{\"listen\": [\"127.0.0.1:${AP_TEST_NOPE}\"]}"),
              "listen[0]: environment variable AP_TEST_NOPE is not set");
    CHECK_STR(parse_error("{\"listen\": \"${AP_TEST_NOPE}\"}"),
              "listen: environment variable AP_TEST_NOPE is not set");
    CHECK_STR(parse_error("{\"tls\": {\"ca_file\": \"${AP_TEST_NOPE}/ca.pem\"}}"),
              "tls.ca_file: environment variable AP_TEST_NOPE is not set");
    CHECK_STR(parse_error("{\"limits\": {\"drain_ms\": \"${AP_TEST_NOPE}\"}}"),
              "limits.drain_ms: environment variable AP_TEST_NOPE is not set");
    CHECK_STR(parse_error("{\"routes\": [{\"host\": \"a.com\", \"upstream\": "
                          "\"https://${AP_TEST_NOPE}\"}]}"),
              "routes[0].upstream: environment variable AP_TEST_NOPE is not set");
}

static const char *unset_provider_json =
    "{\"providers\": {"
    "  \"ok\": {\"token_url\": \"https://t.example/token\", \"client_id\": \"id\"},"
    "  \"p\": {\"token_url\": \"https://t.example/token\", \"client_id\": \"${AP_TEST_UNSET_ID}\","
    "         \"client_secret\": \"${AP_TEST_UNSET_SECRET}\", \"scope\": \"${AP_TEST_SCOPE}\","
    "         \"params\": {\"x\": \"${AP_TEST_UNSET_SECRET}\"}}},"
    " \"routes\": [{\"host\": \"a.example\", \"provider\": \"p\"}]}";

TEST(config_unset_variable_disables_provider)
{
    unsetenv("AP_TEST_UNSET_ID");
    unsetenv("AP_TEST_UNSET_SECRET");
    setenv("AP_TEST_SCOPE", "read", 1);
    char *warn = NULL;
    size_t warn_len = 0;
    FILE *w = open_memstream(&warn, &warn_len);
    REQUIRE(w);
    struct config *c = config_parse(unset_provider_json, false, w, last_err);
    fclose(w);
    CHECK(c != NULL);
    if (c) {
        CHECK(!c->providers[0].disabled);
        const struct provider_config *p = &c->providers[1];
        CHECK(p->disabled);
        CHECK_STR(p->disabled_reason, "environment variable AP_TEST_UNSET_ID is not set");
        CHECK(p->client_id == NULL);
        CHECK(p->client_secret == NULL);
        CHECK_STR(p->scope, "read"); /* what resolves is kept */
        CHECK_EQ_INT(p->n_params, 0);
        CHECK_EQ_INT(c->routes[0].provider, 1);
        config_unref(c);
    }
    CHECK(warn && strstr(warn, "provider p disabled") && strstr(warn, "AP_TEST_UNSET_ID"));
    int lines = 0;
    for (const char *s = warn; s && *s; s++)
        lines += *s == '\n';
    CHECK_EQ_INT(lines, 1);
    free(warn);
    CHECK_STR(parse_error_strict(unset_provider_json, true),
              "providers.p.client_id: environment variable AP_TEST_UNSET_ID is not set");
    /* warn_out may be NULL */
    c = config_parse(unset_provider_json, false, NULL, last_err);
    CHECK(c && c->providers[1].disabled);
    config_unref(c);
    unsetenv("AP_TEST_SCOPE");
}

TEST(config_unresolved_value_is_not_reported_missing)
{
    unsetenv("AP_TEST_NOPE");
    /* token_url, username and the preset itself unresolved: disabled, not "needs ..." */
    const char *jsons[] = {
        "{\"providers\": {\"p\": {\"token_url\": \"${AP_TEST_NOPE}\", \"client_id\": \"i\"}}}",
        "{\"providers\": {\"p\": {\"preset\": \"${AP_TEST_NOPE}\", \"site\": \"https://s\","
        " \"client_id\": \"i\", \"username\": \"u\", \"password\": \"p\"}}}",
        "{\"providers\": {\"p\": {\"grant_type\": \"password_code\", \"token_url\": "
        "\"https://t\", \"code_url\": \"https://c\", \"client_id\": \"i\","
        " \"username_file\": \"${AP_TEST_NOPE}\", \"password\": \"p\"}}}",
    };
    for (size_t i = 0; i < sizeof jsons / sizeof jsons[0]; i++) {
        struct config *c = parse(jsons[i]);
        CHECK(c && c->providers[0].disabled);
        config_unref(c);
    }
}

TEST(config_secret_files)
{
    char f1[64], f2[64], f3[64], f4[64];
    temp_file(f1, "s3cret\n");
    temp_file(f2, "crlf\r\n");
    temp_file(f3, "two\n\n");
    temp_file(f4, "");
    char json[JSON_MAX];
    snprintf(json, sizeof json,
             "{\"providers\": {\"p\": {\"grant_type\": \"password_code\", \"token_url\": "
             "\"https://t.example/token\", \"code_url\": \"https://t.example/code\","
             " \"client_id_file\": \"%s\", \"client_secret_file\": \"%s\","
             " \"username_file\": \"%s\", \"password\": \"pw\"}}}",
             f1, f2, f4);
    struct config *c = parse(json);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(c->providers[0].client_id, "s3cret");
        CHECK_STR(c->providers[0].client_secret, "crlf");
        CHECK_STR(c->providers[0].username, "");
        CHECK(!c->providers[0].disabled);
        config_unref(c);
    }
    /* one newline is stripped, not two: the second is a control character in a secret */
    snprintf(
        json, sizeof json,
        "{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id_file\": \"%s\"}}}",
        f3);
    char want[CONFIG_ERR_MAX];
    snprintf(want, sizeof want, "providers.p.client_id_file: file %s contains a control character",
             f3);
    CHECK_STR(parse_error(json), want);
    /* the path itself may use ${VAR} */
    setenv("AP_TEST_FILE", f1, 1);
    c = parse("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id_file\": "
              "\"${AP_TEST_FILE}\"}}}");
    CHECK(c && !c->providers[0].disabled && strcmp(c->providers[0].client_id, "s3cret") == 0);
    config_unref(c);
    unsetenv("AP_TEST_FILE");
    unlink(f1);
    unlink(f2);
    unlink(f3);
    unlink(f4);
}

TEST(config_unreadable_secret_file)
{
    const char *json = "{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                       "\"i\", \"client_secret_file\": \"/nonexistent/authproxy-secret\"}}}";
    char *warn = NULL;
    size_t warn_len = 0;
    FILE *w = open_memstream(&warn, &warn_len);
    REQUIRE(w);
    struct config *c = config_parse(json, false, w, last_err);
    fclose(w);
    CHECK(c != NULL);
    if (c) {
        CHECK(c->providers[0].disabled);
        CHECK_STR(c->providers[0].disabled_reason,
                  "cannot read file /nonexistent/authproxy-secret: No such file or directory");
        CHECK(c->providers[0].client_secret == NULL);
        config_unref(c);
    }
    CHECK(warn && strstr(warn, "cannot read file /nonexistent/authproxy-secret"));
    free(warn);
    CHECK_STR(parse_error_strict(json, true),
              "providers.p.client_secret_file: cannot read file /nonexistent/authproxy-secret: No "
              "such file or directory");
    /* a directory is unreadable too */
    c = parse("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id_file\": "
              "\"/tmp\"}}}");
    CHECK(c && c->providers[0].disabled &&
          strstr(c->providers[0].disabled_reason, "cannot read file /tmp"));
    config_unref(c);
}

TEST(config_secret_and_file_conflict)
{
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"client_secret\": \"s\", \"client_secret_file\": \"/x\"}}}"),
              "providers.p.client_secret: give client_secret or client_secret_file, not both");
}

TEST(config_preset_epc)
{
    struct config *c = parse("{\"providers\": {\"epc\": {\"preset\": \"epc\", \"token_url\": "
                             "\"https://api.elliemae.com/oauth2/v1/token\", \"client_id\": \"i\"},"
                             " \"epc2\": {\"preset\": \"epc\", \"token_url\": \"https://t/\","
                             " \"client_id\": \"i\", \"scope\": \"other\", \"idle_timeout_s\": 0,"
                             " \"client_auth\": \"body\"}}}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    CHECK_EQ_INT(p->grant_type, GRANT_CLIENT_CREDENTIALS);
    CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_BASIC);
    CHECK_STR(p->scope, "pc pcapi");
    CHECK_EQ_INT(p->idle_timeout_s, 900);
    CHECK_EQ_INT(p->max_lifetime_s, 7200);
    CHECK(p->accept_201);
    CHECK(!p->use_jwt_exp && !p->expires_in_ms);
    p = &c->providers[1]; /* explicit keys win over the preset */
    CHECK_STR(p->scope, "other");
    CHECK_EQ_INT(p->idle_timeout_s, 0);
    CHECK_EQ_INT(p->max_lifetime_s, 7200);
    CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_BODY);
    config_unref(c);
}

TEST(config_preset_eptura)
{
    struct config *c = parse(
        "{\"providers\": {"
        " \"e\": {\"preset\": \"eptura\", \"site\": \"https://acme.example/\", \"client_id\": "
        "\"i\", \"username\": \"u\", \"password\": \"p\"},"
        " \"e2\": {\"preset\": \"eptura\", \"site\": \"https://acme.example\", \"client_id\": "
        "\"i\", \"username\": \"u\", \"password\": \"p\", \"token_url\": "
        "\"https://other.example/token\", \"expires_in_unit\": \"s\", \"param_style\": \"json\","
        " \"param_names\": {\"code\": \"x-code\", \"state\": \"x-state\"}}}}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    CHECK_EQ_INT(p->grant_type, GRANT_PASSWORD_CODE);
    CHECK_EQ_INT(p->param_style, PARAM_HEADERS);
    CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_BODY);
    CHECK_STR(p->code_url, "https://acme.example/external/api/oauth2/auth");
    CHECK_STR(p->token_url, "https://acme.example/external/api/oauth2/token");
    CHECK_STR(p->revoke_url, "https://acme.example/external/api/oauth2/revoke");
    CHECK(p->expires_in_ms && p->json_content_type);
    CHECK_EQ_INT(p->n_param_names, 9);
    const struct {
        const char *std, *wire;
    } names[] = {{"grant_type", "x-grant-type"},
                 {"client_id", "x-client-id"},
                 {"redirect_uri", "x-redirect-uri"},
                 {"scope", "x-scope"},
                 {"code", "x-auth-code"},
                 {"refresh_token", "x-refresh-token"},
                 {"username", "x-auth-username"},
                 {"password", "x-auth-password"},
                 {"token", "x-token"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        CHECK_STR(kv_get(p->param_names, p->n_param_names, names[i].std), names[i].wire);
    p = &c->providers[1];
    CHECK_STR(p->token_url, "https://other.example/token"); /* explicit wins */
    CHECK_STR(p->code_url, "https://acme.example/external/api/oauth2/auth");
    CHECK(!p->expires_in_ms);
    CHECK_EQ_INT(p->param_style, PARAM_JSON);
    CHECK_EQ_INT(p->n_param_names, 10); /* merged: one replaced, one added */
    CHECK_STR(kv_get(p->param_names, p->n_param_names, "code"), "x-code");
    CHECK_STR(kv_get(p->param_names, p->n_param_names, "state"), "x-state");
    CHECK_STR(kv_get(p->param_names, p->n_param_names, "scope"), "x-scope");
    config_unref(c);
    /* without site nothing is derived */
    CHECK_STR(parse_error("{\"providers\": {\"e\": {\"preset\": \"eptura\", \"client_id\": \"i\","
                          " \"username\": \"u\", \"password\": \"p\"}}}"),
              "providers.e: needs token_url (or site, with the eptura preset)");
}

TEST(config_preset_enable_and_rfc6749)
{
    struct config *c = parse(
        "{\"providers\": {\"en\": {\"preset\": \"enable\", \"token_url\": \"https://t/\","
        " \"client_id\": \"i\"}, \"r\": {\"preset\": \"rfc6749\", \"token_url\": \"https://t/\","
        " \"client_id\": \"i\", \"expires_in_unit\": \"ms\", \"default_ttl_s\": 60,"
        " \"refresh_before_s\": 0}}}");
    REQUIRE(c);
    const struct provider_config *p = &c->providers[0];
    CHECK_EQ_INT(p->grant_type, GRANT_CLIENT_CREDENTIALS);
    CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_BODY);
    CHECK(p->use_jwt_exp);
    CHECK(!p->accept_201);
    p = &c->providers[1];
    CHECK_EQ_INT(p->preset, PRESET_RFC6749);
    CHECK_EQ_INT(p->grant_type, GRANT_CLIENT_CREDENTIALS);
    CHECK_EQ_INT(p->client_auth, CLIENT_AUTH_BASIC);
    CHECK_EQ_INT(p->param_style, PARAM_FORM);
    CHECK(p->scope == NULL);
    CHECK_EQ_INT(p->n_param_names, 0);
    CHECK(p->expires_in_ms);
    CHECK_EQ_INT(p->default_ttl_s, 60);
    CHECK_EQ_INT(p->refresh_before_s, 0);
    CHECK_EQ_INT(p->idle_timeout_s, 0);
    CHECK(!p->use_jwt_exp && !p->accept_201 && !p->json_content_type);
    config_unref(c);
}

TEST(config_provider_validation)
{
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"client_id\": \"i\"}}}"),
              "providers.p: needs token_url");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"ftp://t/\"}}}"),
              "providers.p.token_url: expected an http:// or https:// URL");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://u:pw@t/\"}}}"),
              "providers.p.token_url: expected an http:// or https:// URL");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https:///x\"}}}"),
              "providers.p.token_url: expected an http:// or https:// URL");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\"}}}"),
              "providers.p: needs client_id (or \"client_auth\": \"none\")");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"grant_type\": \"password_code\", \"code_url\": \"https://c/\","
                          " \"username\": \"u\"}}}"),
              "providers.p: needs password for grant_type password_code");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"grant_type\": \"password_code\", \"username\": \"u\","
                          " \"password\": \"p\"}}}"),
              "providers.p: needs code_url for grant_type password_code");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"grant_type\": \"refresh_token\"}}}"),
              "providers.p: needs refresh_token for grant_type refresh_token");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"revoke_on_exit\": true}}}"),
              "providers.p: needs revoke_url for revoke_on_exit");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"param_names\": {\"codes\": \"x\"}}}}"),
              "providers.p.param_names.codes: not a standard parameter name");
    CHECK_STR(parse_error("{\"providers\": {\"a b\": {}}}"),
              "providers.a b: a provider name is 1 to 64 letters, digits, '-' or '_'");
    CHECK_STR(parse_error("{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                          "\"i\", \"default_ttl_s\": 0}}}"),
              "providers.p.default_ttl_s: must be between 1 and 31536000");
    /* what is valid */
    struct config *c = parse("{\"providers\": {\"p\": {\"token_url\": \"http://t:8080/tok?x=1\","
                             " \"client_auth\": \"none\", \"grant_type\": \"refresh_token\","
                             " \"refresh_token\": \"r\"}}}");
    CHECK(c != NULL);
    config_unref(c);
}

TEST(config_routes)
{
    struct config *c = parse(
        "{\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": \"i\"}},"
        " \"routes\": ["
        "  {\"host\": \"*.Enable.Example.COM.\", \"provider\": \"p\"},"
        "  {\"host\": \"api.example.com:8443\", \"upstream\": \"HTTPS://Example.COM:443/base/\","
        "   \"provider\": \"p\", \"client_authorization\": \"keep\"},"
        "  {\"host\": \"h.example\", \"upstream\": \"http://h:8080\", \"provider\": \"p\","
        "   \"allow_plaintext\": true},"
        "  {\"path_prefix\": \"/v6/\", \"upstream\": \"https://[::1]:8443/\"},"
        "  {\"path_prefix\": \"/v6b\", \"upstream\": \"https://[2001:DB8::1]\"},"
        "  {\"host\": \"[::1]:81\"}"
        "]}");
    REQUIRE(c);
    REQUIRE(c->n_routes == 6);
    const struct route_config *r = c->routes;
    CHECK_STR(r[0].host, ".enable.example.com");
    CHECK(r[0].host_wildcard);
    CHECK_STR(r[1].host, "api.example.com");
    CHECK_EQ_INT(r[1].host_port, 8443);
    CHECK(r[1].upstream.tls);
    CHECK_STR(r[1].upstream.host, "example.com");
    CHECK_EQ_INT(r[1].upstream.port, 443);
    CHECK_STR(r[1].upstream.authority, "example.com");
    CHECK_STR(r[1].upstream.path, "/base");
    CHECK_EQ_INT(r[1].client_authorization, CLIENT_AUTHZ_KEEP);
    CHECK(!r[2].upstream.tls);
    CHECK_EQ_INT(r[2].upstream.port, 8080);
    CHECK_STR(r[2].upstream.authority, "h:8080");
    CHECK(r[2].allow_plaintext);
    CHECK_STR(r[3].upstream.host, "::1");
    CHECK_STR(r[3].upstream.authority, "[::1]:8443");
    CHECK_STR(r[3].upstream.path, "");
    CHECK(!r[3].strip_prefix);
    CHECK_EQ_INT(r[3].provider, -1);
    CHECK_STR(r[4].upstream.authority, "[2001:db8::1]");
    CHECK_EQ_INT(r[4].upstream.port, 443);
    CHECK_STR(r[5].host, "::1");
    CHECK_EQ_INT(r[5].host_port, 81);
    config_unref(c);
}

TEST(config_route_errors)
{
    const char *prov = "\"providers\": {\"p\": {\"token_url\": \"https://t/\", \"client_id\": "
                       "\"i\"}}";
    char json[JSON_MAX];
#define ROUTES(routes) (snprintf(json, sizeof json, "{%s, \"routes\": [%s]}", prov, routes), json)
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\"}, {\"host\": \"b\"}, {\"host\": \"c\"},"
                                 " {\"host\": \"d.example\", \"upstream\": \"http://d.example\","
                                 " \"provider\": \"p\"}")),
              "routes[3]: a route with a provider needs an https upstream (or "
              "\"allow_plaintext\": true)");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"provider\": \"x\"}")),
              "routes[0].provider: unknown provider \"x\"");
    CHECK_STR(parse_error(ROUTES("{\"provider\": \"p\"}")),
              "routes[0]: a route needs host or path_prefix");
    CHECK_STR(parse_error(ROUTES("{\"path_prefix\": \"v1/\", \"upstream\": \"https://u\"}")),
              "routes[0].path_prefix: must begin with '/' and contain no space, '?' or '#'");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"strip_prefix\": true}")),
              "routes[0].strip_prefix: needs path_prefix");
    CHECK_STR(parse_error(ROUTES("{\"path_prefix\": \"/x/\"}")),
              "routes[0]: a route without host needs an upstream");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a b\"}")),
              "routes[0].host: \"a b\": expected a host name or *.suffix, optionally with :port");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"*\"}")),
              "routes[0].host: \"*\": expected a host name or *.suffix, optionally with :port");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a.*.com\"}")),
              "routes[0].host: \"a.*.com\": expected a host name or *.suffix, optionally with "
              ":port");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a:99999\"}")),
              "routes[0].host: \"a:99999\": expected a host name or *.suffix, optionally with "
              ":port");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"upstream\": \"https://u/x?y=1\"}")),
              "routes[0].upstream: an upstream takes no query or fragment");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"upstream\": \"https://me@u/\"}")),
              "routes[0].upstream: an upstream takes no user name or password");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"upstream\": \"https://me:pw@u/\"}")),
              "routes[0].upstream: an upstream takes no user name or password");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"upstream\": \"ftp://u/\"}")),
              "routes[0].upstream: expected an http:// or https:// URL");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"upstream\": \"https://u:0/\"}")),
              "routes[0].upstream: expected http(s)://host[:port][/path] with a "
              "valid host and port");
    CHECK_STR(parse_error(ROUTES("{\"host\": \"a\", \"client_authorization\": \"drop\"}")),
              "routes[0].client_authorization: expected one of replace, keep");
#undef ROUTES
}

TEST(config_listen_addresses)
{
    struct config *c = parse("{\"listen\": [\"[::1]:8080\", \"localhost:9000\", "
                             "\"127.0.0.2:80\", \"[::ffff:127.0.0.1]:81\"],"
                             " \"admin_listen\": \"[::1]:9901\"}");
    REQUIRE(c);
    CHECK_EQ_INT(c->n_listen, 4);
    CHECK_EQ_INT(c->listen[0].sa.ss_family, AF_INET6);
    CHECK(c->listen[0].loopback);
    CHECK_EQ_INT(port_of(&c->listen[0]), 8080);
    CHECK_EQ_INT(c->listen[1].sa.ss_family, AF_INET);
    CHECK_STR(c->listen[1].text, "localhost:9000");
    CHECK_EQ_INT(ntohl(((struct sockaddr_in *)&c->listen[1].sa)->sin_addr.s_addr), 0x7f000001);
    CHECK(c->listen[1].loopback);
    CHECK(c->listen[2].loopback);
    CHECK(c->listen[3].loopback);
    CHECK(c->has_admin && c->admin_listen.loopback);
    config_unref(c);

    c = parse("{\"listen\": \"0.0.0.0:8080\", \"admin_listen\": \"[::]:9901\","
              " \"allow_remote\": true}");
    REQUIRE(c);
    CHECK_EQ_INT(c->n_listen, 1);
    CHECK(!c->listen[0].loopback);
    CHECK(!c->admin_listen.loopback);
    config_unref(c);

    CHECK_STR(parse_error("{\"listen\": [\"127.0.0.1:8080\", \"0.0.0.0:8080\"]}"),
              "listen[1]: 0.0.0.0:8080 is not a loopback address: binding it needs "
              "\"allow_remote\": true (anyone who reaches authproxy can use its credentials)");
    CHECK_STR(parse_error("{\"admin_listen\": \"10.0.0.1:9901\"}"),
              "admin_listen: 10.0.0.1:9901 is not a loopback address: binding it needs "
              "\"allow_remote\": true");
    CHECK_STR(parse_error("{\"listen\": \"127.0.0.1\"}"),
              "listen: \"127.0.0.1\": expected host:port");
    CHECK_STR(parse_error("{\"listen\": [\"127.0.0.1:0\"]}"),
              "listen[0]: \"127.0.0.1:0\": expected a port between 1 and 65535");
    CHECK_STR(parse_error("{\"listen\": [\"127.0.0.1:65536\"]}"),
              "listen[0]: \"127.0.0.1:65536\": expected a port between 1 and 65535");
    CHECK_STR(parse_error("{\"listen\": [\"example.com:80\"]}"),
              "listen[0]: \"example.com:80\": expected an IP address or localhost (host names "
              "are not resolved)");
    CHECK_STR(parse_error("{\"listen\": [\"::1:80\"]}"),
              "listen[0]: \"::1:80\": an IPv6 address needs brackets, as in [::1]:8080");
    CHECK_STR(parse_error("{\"listen\": [\"[::1]\"]}"),
              "listen[0]: \"[::1]\": expected [IPv6 address]:port");
    CHECK_STR(parse_error("{\"listen\": [\"[127.0.0.1]:80\"]}"),
              "listen[0]: \"[127.0.0.1]:80\": expected an IP address or localhost (host names "
              "are not resolved)");
}

TEST(config_print_never_shows_secrets)
{
    char file[64], json[JSON_MAX];
    temp_file(file, SECRET_ENABLE "\n");
    spec_json(json, file);
    set_spec_env();
    unsetenv("EPTURA_PASSWORD");
    struct config *c = parse(json);
    unset_spec_env();
    unlink(file);
    REQUIRE(c);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    REQUIRE(f);
    config_print(c, f);
    fclose(f);
    REQUIRE(out);
    const char *secrets[] = {SECRET_EPC_ID,    SECRET_EPC,         SECRET_ENABLE_ID, SECRET_ENABLE,
                             SECRET_EPTURA_ID, SECRET_EPTURA_USER, SECRET_EPTURA_PW, "SECRET"};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++) {
        if (strstr(out, secrets[i])) fprintf(stderr, "secret %s printed:\n%s", secrets[i], out);
        CHECK(strstr(out, secrets[i]) == NULL);
    }
    CHECK(strstr(out, "listen 127.0.0.1:8080\n") != NULL);
    CHECK(strstr(out, "admin 127.0.0.1:9901\n") != NULL);
    CHECK(strstr(out, "via authproxy-gw1\n") != NULL);
    CHECK(strstr(out, "provider epc: preset epc, grant_type client_credentials, token_url "
                      "https://api.elliemae.com/oauth2/v1/token, client_auth basic, scope \"pc "
                      "pcapi\", set: client_id client_secret, enabled\n") != NULL);
    CHECK(strstr(out, "provider eptura: preset eptura, grant_type password_code") != NULL);
    CHECK(strstr(out, "disabled (environment variable EPTURA_PASSWORD is not set)\n") != NULL);
    CHECK(strstr(out, "route 0: host api.elliemae.com -> https://api.elliemae.com (provider "
                      "epc)\n") != NULL);
    CHECK(strstr(out, "route 1: host *.enable.example.com -> https://<requested host> (provider "
                      "enable)\n") != NULL);
    CHECK(strstr(out, "route 2: path /eptura/ (strip) -> https://acme.ioffice.example.com "
                      "(provider eptura, disabled)\n") != NULL);
    CHECK(strstr(out, "route 3: host status.example.com -> http://status.example.com (no "
                      "provider)\n") != NULL);
    free(out);
    config_unref(c);

    c = parse("{}");
    REQUIRE(c);
    f = open_memstream(&out, &len);
    REQUIRE(f);
    config_print(c, f); /* valid (exit 0, test_cli.py): it runs, and refuses every request */
    fclose(f);
    CHECK(out && strstr(out, "no routes"));
    free(out);
    config_unref(c);
}

TEST(config_load_file)
{
    char err[CONFIG_ERR_MAX];
    struct config *c = config_load("/nonexistent/authproxy.json", false, NULL, err);
    CHECK(c == NULL);
    CHECK_STR(err, "cannot read /nonexistent/authproxy.json: No such file or directory");
    char path[64];
    temp_file(path, "{\"workers\": 2}\n");
    c = config_load(path, false, NULL, err);
    REQUIRE(c);
    CHECK_STR(c->path, path);
    CHECK_EQ_INT(c->workers, 2);
    config_unref(c);
    unlink(path);
    temp_file(path, "{\n\"workers\": 2,\n}\n");
    c = config_load(path, false, NULL, err);
    CHECK(c == NULL);
    char want[CONFIG_ERR_MAX];
    snprintf(want, sizeof want, "%s: invalid JSON near line 3", path);
    CHECK_STR(err, want);
    unlink(path);
    c = config_load("/tmp", false, NULL, err);
    CHECK(c == NULL);
    CHECK_STR(err, "cannot read /tmp: Is a directory");
}

TEST(config_refcount)
{
    struct config *c = parse("{}");
    REQUIRE(c);
    CHECK(config_ref(c) == c);
    CHECK_EQ_INT(atomic_load(&c->refs), 2);
    config_unref(c);
    CHECK_EQ_INT(atomic_load(&c->refs), 1);
    config_unref(c); /* freed: LeakSanitizer would see it otherwise */
    config_unref(NULL);
}
