/* router.h - picks the route for a request: first match in configuration order wins.
 *
 * Pure functions over an immutable struct config; no allocation, no state. */
#ifndef AUTHPROXY_ROUTER_H
#define AUTHPROXY_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

#define HOST_MAX 256

/* Splits and normalises an authority "Host[:port]" / "[v6]:port": lowercases, drops one
 * trailing dot, validates characters (letters, digits, '-', '.', '_' for names; hex and ':'
 * inside brackets). out receives the host without brackets, NUL-terminated; *port receives the
 * explicit port or default_port. Returns 0, or -1 when the authority is malformed (empty host,
 * bad port, userinfo '@', bad characters, too long). */
int host_normalize(const char *in, size_t len, int default_port, char out[HOST_MAX], int *port);

/* The first route of c matching the request, or NULL.
 * host/port: normalised (host_normalize) target host of an absolute-form request, or of the
 * Host header for origin-form; host may be "" when an origin-form request has no Host.
 * path: the path part of the target (begins with '/'), not NUL-terminated.
 * origin_form: path_prefix routes only match origin-form requests. */
const struct route_config *router_match(const struct config *c, const char *host, int port,
                                        const char *path, size_t path_len, bool origin_form);

/* RFC 3986 6.2.2 on an origin-form target's path (the query, from '?', is copied unchanged):
 * percent-encoded unreserved characters decoded (%2e is '.'), other escapes kept with
 * uppercase hex, dot-segments removed (5.2.4). Writes at most len bytes to out, sets *out_len.
 * Returns 0, or -1 when the path climbs above '/', holds an encoded slash (%2f) or a backslash
 * (raw or %5c), or a malformed escape: SPEC's 400 for gateway routes. */
int path_normalize(const char *in, size_t len, char *out, size_t *out_len);

/* For a matched path_prefix route with strip_prefix: how many leading bytes of path to drop so
 * that the remainder still begins with '/'. 0 when nothing is stripped.
 * A prefix ending in '/' keeps that '/': "/eptura/" on "/eptura/v1/x" -> 7, remainder "/v1/x".
 * A prefix without one is dropped whole: "/api" on "/api/x" -> 4, remainder "/x". When the
 * remainder does not begin with '/' (it is empty, as for "/api" itself, or starts with '?', or
 * the prefix ended mid-segment: "/api" on "/apix"), the caller sends '/' before it, as nginx
 * does: "/", "/?q=1", "/x". */
size_t router_strip_len(const struct route_config *r, const char *path, size_t path_len);

#endif
