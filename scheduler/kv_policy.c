/* kv_policy.c: policy names, flag checks and the per-prompt budget split
 * (DESIGN.md "H2O KV policy"). */
#include "kv_policy.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

static const char *const names[] = {"full", "h2o", "window", "streaming"};

int kv_policy_parse(const char *name, kv_policy_kind *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (kv_policy_kind)i;
            return 0;
        }
    RETURN_IF(1, -EINVAL, "--kv-policy must be full, h2o, window or streaming, got \"%s\"",
              name);
}

const char *kv_policy_name(kv_policy_kind kind)
{
    return kind >= KV_POLICY_FULL && kind <= KV_POLICY_STREAMING ? names[kind] : "?";
}

/* heavy and recent of a budget b; recent may come out < 1 (refused). */
static void split_of(const kv_policy *kp, int b, kv_split *s)
{
    s->budget = b;
    s->sinks = kp->kind == KV_POLICY_WINDOW ? 0 : kp->sinks;
    /* the 1e-9 keeps 0.29 * 100 = 28.999999999999996 at 29 */
    s->heavy = kp->kind == KV_POLICY_H2O ? (int)floor((b - s->sinks) * kp->hh_share + 1e-9) : 0;
    if (s->heavy < 0)
        s->heavy = 0;
    s->recent = b - s->sinks - s->heavy;
}

int kv_policy_check(const kv_policy *kp)
{
    const char *pol = kv_policy_name(kp->kind);
    if (kp->kind == KV_POLICY_FULL) {
        RETURN_IF(kp->ratio > 0 || kp->budget > 0, -EINVAL,
                  "--kv-ratio / --kv-budget need an evicting --kv-policy (h2o, window, "
                  "streaming)");
        RETURN_IF(kp->sinks > 0, -EINVAL, "--sinks needs --kv-policy h2o or streaming");
        return 0;
    }
    RETURN_IF(kp->ratio > 0 && kp->budget > 0, -EINVAL,
              "give one of --kv-ratio and --kv-budget, not both");
    RETURN_IF(kp->ratio <= 0 && kp->budget <= 0, -EINVAL,
              "--kv-policy %s needs a budget: --kv-ratio R (e.g. 0.2) or --kv-budget B", pol);
    RETURN_IF(kp->kind == KV_POLICY_WINDOW && kp->sinks > 0, -EINVAL,
              "--kv-policy window keeps no sinks; use --kv-policy streaming for --sinks");
    if (kp->kind == KV_POLICY_H2O)
        RETURN_IF(kp->hh_share >= 1.0, -EINVAL,
                  "--hh-share %g leaves no recent slot (recent = B - sinks - heavy must be "
                  ">= 1); use an --hh-share below 1", kp->hh_share);
    if (kp->budget > 0) {
        kv_split s;
        char share[64] = "";
        split_of(kp, kp->budget, &s);
        if (kp->kind == KV_POLICY_H2O)
            snprintf(share, sizeof share, " and --hh-share %g", kp->hh_share);
        RETURN_IF(s.recent < 1, -EINVAL,
                  "--kv-budget %d with --sinks %d%s leaves recent = %d (B - sinks - heavy "
                  "must be >= 1); raise --kv-budget or lower --sinks", kp->budget, s.sinks,
                  share, s.recent);
    }
    return 0;
}

int kv_policy_split(const kv_policy *kp, int n_prompt, int max_new, int line, kv_split *out)
{
    long total = (long)n_prompt + max_new;
    long b = total;
    if (kp->kind != KV_POLICY_FULL) {
        if (kp->budget > 0) {
            b = kp->budget;
        } else {
            /* the 1e-9 keeps 0.2 * 50 = 10.000000000000002 at 10 */
            double x = kp->ratio * (double)total;
            b = (long)ceil(x - 1e-9 * (x > 1 ? x : 1));
        }
    }
    if (b >= total || kp->kind == KV_POLICY_FULL) {
        /* nothing will ever be evicted: run as full */
        *out = (kv_split){.budget = (int)(total > 0 ? total : 1), .recent = 1, .evicts = 0};
        return 0;
    }
    split_of(kp, (int)b, out);
    out->evicts = 1;
    char share[64] = "";
    if (kp->kind == KV_POLICY_H2O)
        snprintf(share, sizeof share, " and --hh-share %g", kp->hh_share);
    RETURN_IF(out->recent < 1, -EINVAL,
              "prompt on line %d (%d tokens + %d new): --kv-ratio %g gives a budget of %ld, "
              "which leaves recent = %d after --sinks %d%s (B - sinks - heavy must be >= 1); "
              "raise --kv-ratio or lower --sinks", line, n_prompt, max_new, kp->ratio, b,
              out->recent, out->sinks, share);
    return 0;
}

int kv_policy_needs_scores(const kv_policy *kp)
{
    return kp->kind == KV_POLICY_H2O;
}
