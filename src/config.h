/* config.h - the configuration snapshot: JSON file -> immutable structs.
 *
 * A struct config is built once by config_load() and never changed afterwards. It is
 * reference-counted: every loop and every in-flight request holds a reference for its whole
 * life, so a reload (SIGHUP) can swap in a new snapshot while old requests finish on the old
 * one. All strings and arrays inside are owned by the snapshot and freed by the last
 * config_unref(). */
#ifndef AUTHPROXY_CONFIG_H
#define AUTHPROXY_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define CONFIG_DEFAULT_PATH "conf/authproxy.json"
#define CONFIG_ERR_MAX 512

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_TEXT, LOG_JSON };

enum preset { PRESET_RFC6749, PRESET_EPC, PRESET_EPTURA, PRESET_ENABLE };
enum grant_type { GRANT_CLIENT_CREDENTIALS, GRANT_PASSWORD_CODE, GRANT_REFRESH_TOKEN };
enum client_auth { CLIENT_AUTH_BASIC, CLIENT_AUTH_BODY, CLIENT_AUTH_NONE };
enum param_style { PARAM_FORM, PARAM_JSON, PARAM_HEADERS };
enum client_authz { CLIENT_AUTHZ_REPLACE, CLIENT_AUTHZ_KEEP };

struct kv {
    char *key;
    char *value;
};

/* A parsed "host:port" listen address. */
struct listen_addr {
    char text[80]; /* as written, for logs */
    struct sockaddr_storage sa;
    bool loopback;
};

/* A parsed upstream URL "http(s)://host[:port][/path]". */
struct upstream_url {
    bool tls;
    char *host;      /* lowercase, no trailing dot, IPv6 without brackets */
    int port;        /* explicit or the scheme's default */
    char *authority; /* what goes into Host: "host" or "host:port" when port is not default */
    char *path;      /* "" or "/base" without trailing slash */
    size_t authority_len, path_len;
};

struct provider_config {
    char *name;
    enum preset preset;
    enum grant_type grant_type;
    enum client_auth client_auth;
    enum param_style param_style;
    char *token_url, *code_url, *site, *introspect_url, *revoke_url;
    char *client_id, *client_secret, *username, *password, *refresh_token, *redirect_uri;
    char *scope;
    /* standard name -> wire name. Standard names: grant_type client_id client_secret
     * redirect_uri scope code refresh_token username password token token_type_hint
     * response_type state. A preset's names are merged with (overridden by) the file's. */
    struct kv *param_names;
    int n_param_names;
    struct kv *params; /* extra parameters, sent verbatim */
    int n_params;
    bool expires_in_ms; /* expires_in_unit == "ms" */
    int64_t default_ttl_s, refresh_before_s;
    int64_t idle_timeout_s, max_lifetime_s; /* 0 = none */
    bool revoke_on_exit;
    /* quirks filled by the preset */
    bool accept_201;  /* token endpoint may answer 201 */
    bool use_jwt_exp; /* take expiry from the JWT's exp when expires_in is absent */
    bool json_content_type;
    /* set when a ${VAR} or *_file inside the provider could not be resolved */
    bool disabled;
    char *disabled_reason; /* "environment variable EPC_CLIENT_ID is not set" */
};

struct route_config {
    char *host;         /* NULL: any host. Lowercase, no trailing dot. For "*.x.com": ".x.com" */
    bool host_wildcard; /* host is a suffix starting with '.' */
    int host_port;      /* 0 = any port */
    char *path_prefix;  /* NULL: any path */
    size_t host_len, prefix_len; /* strlen of host and path_prefix (0 when NULL) */
    bool strip_prefix;
    bool has_upstream; /* false: https://<requested host> (http when no provider...) */
    struct upstream_url upstream;
    int provider; /* index into config.providers, -1 for none */
    bool allow_plaintext;
    enum client_authz client_authorization;
};

struct limits {
    int64_t max_header_bytes, max_headers, retry_buffer_bytes, retry_buffer_total_bytes;
    int64_t header_timeout_ms, idle_timeout_ms;
    int64_t upstream_connect_timeout_ms, upstream_timeout_ms;
    int64_t token_timeout_ms, max_connections, drain_ms;
};

struct config {
    atomic_int refs;
    char *path; /* the file it was loaded from; NULL for config_parse() */
    struct listen_addr *listen;
    int n_listen;
    int workers;
    bool has_admin;
    struct listen_addr admin_listen;
    bool allow_remote;
    char *via; /* the name this instance appends to Via */
    size_t via_len;
    enum log_level log_level;
    enum log_format log_format;
    char *ca_file;
    struct limits limits;
    struct provider_config *providers;
    int n_providers;
    struct route_config *routes;
    int n_routes;
};

/* Loads and validates PATH. On failure returns NULL and writes one line naming the offending
 * key path ("providers.epc.scpoe: unknown key") into err. With strict, a disabled provider is
 * an error instead of a warning. Warnings (disabled providers) are written to warn_out, one line
 * each, when it is not NULL. */
struct config *config_load(const char *path, bool strict, FILE *warn_out, char err[CONFIG_ERR_MAX]);

/* Same, from a JSON text already in memory (tests). */
struct config *config_parse(const char *json, bool strict, FILE *warn_out,
                            char err[CONFIG_ERR_MAX]);

struct config *config_ref(struct config *c);
void config_unref(struct config *c);

/* --check: prints listeners, providers (with their state, never a secret) and routes, and
 * says so when there is no route (a configuration that loaded is valid: the load reports what
 * is not). */
void config_print(const struct config *c, FILE *out);

/* Do two providers have the same settings (so a reload keeps the token)? */
bool provider_config_equal(const struct provider_config *a, const struct provider_config *b);

/* Index of the provider called name, or -1. */
int config_provider_index(const struct config *c, const char *name);

#endif
