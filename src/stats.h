/* stats.h - counters kept per loop, read by the admin endpoints. Plain integers: each loop
 * writes only its own struct, the admin handler runs on the same loop. */
#ifndef AUTHPROXY_STATS_H
#define AUTHPROXY_STATS_H

#include <stdint.h>

#define LATENCY_BUCKETS 12

struct stats {
    uint64_t requests_by_class[6]; /* index status/100, 0 for aborted */
    uint64_t upstream_connects, upstream_reuses;
    uint64_t retries_401;
    uint64_t latency_le[LATENCY_BUCKETS]; /* upstream latency histogram, cumulative at read */
    uint64_t latency_count;
    double latency_sum_s;
    int64_t open_connections;
};

extern const double stats_latency_bounds[LATENCY_BUCKETS];

#endif
