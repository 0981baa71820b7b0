/* trim.h - gives memory back after a burst (see trim.c). */
#ifndef AUTHPROXY_TRIM_H
#define AUTHPROXY_TRIM_H

struct loop;

void trim_start(struct loop *l);
void trim_stop(struct loop *l);

#endif
