/* admin.h - the admin listener's endpoints: /healthz, /readyz, /metrics, /tokens,
 * POST /tokens/<name>/refresh. Answers are built on the loop that received the request; the
 * connection closes after each answer. Owns no memory beyond one response being built. */
#ifndef AUTHPROXY_ADMIN_H
#define AUTHPROXY_ADMIN_H

struct exchange;

void admin_request(struct exchange *ex);

#endif
