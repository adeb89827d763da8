/*
 * gateway/problem.h - RFC 8555 §6.7 problem documents (RFC 7807).
 */
#ifndef AGW_GATEWAY_PROBLEM_H
#define AGW_GATEWAY_PROBLEM_H

#include <jansson.h>

/* HTTP status and ACME error type (after "urn:ietf:params:acme:error:") for an AGW_ERR_* code.
 * Codes not listed answer 500 serverInternal. */
void gw_problem_map(int err, int *status, const char **type);

/* New problem document {"type","detail","status"} for err; detail may be NULL (then the fixed
 * text of the error). Caller owns the result. */
json_t *gw_problem_new(int err, const char *detail);

/* Adds a subproblem (RFC 8555 §6.7.1) for one identifier to problem["subproblems"]. */
void gw_problem_add_sub(json_t *problem, int err, const char *detail, const char *id_type,
                        const char *id_value);

/* Retry-After seconds a client should wait for err, or 0 for none (503-class and rateLimited). */
unsigned gw_problem_retry_after(int err);

#endif
