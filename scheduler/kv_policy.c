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

double kv_policy_share(const kv_policy *kp)
{
    return isnan(kp->hh_share) ? 0.5 : kp->hh_share;
}

/* heavy and recent of a budget b; recent may come out < 1 and heavy < 0
 * (both refused). */
static void split_of(const kv_policy *kp, int b, kv_split *s)
{
    s->budget = b;
    s->sinks = kp->kind == KV_POLICY_WINDOW ? 0 : kp->sinks;
    if (kp->kind == KV_POLICY_H2O && kp->recent > 0) {
        s->recent = kp->recent; /* seed 004's h2o_S_R_C: heavy = C - S - R */
        s->heavy = b - s->sinks - s->recent;
        return;
    }
    /* the 1e-9 keeps 0.29 * 100 = 28.999999999999996 at 29 */
    s->heavy = kp->kind == KV_POLICY_H2O
                   ? (int)floor((b - s->sinks) * kv_policy_share(kp) + 1e-9) : 0;
    if (s->heavy < 0)
        s->heavy = 0;
    s->recent = b - s->sinks - s->heavy;
}

/* " and --hh-share S" or " and --recent R" for messages about h2o. */
static void split_flags(const kv_policy *kp, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (kp->kind == KV_POLICY_H2O && kp->recent > 0)
        snprintf(buf, cap, " and --recent %d", kp->recent);
    else if (kp->kind == KV_POLICY_H2O)
        snprintf(buf, cap, " and --hh-share %g", kv_policy_share(kp));
}

int kv_policy_check(const kv_policy *kp)
{
    const char *pol = kv_policy_name(kp->kind);
    if (kp->kind == KV_POLICY_FULL) {
        RETURN_IF(kp->ratio > 0 || kp->budget > 0, -EINVAL,
                  "--kv-ratio / --kv-budget need an evicting --kv-policy (h2o, window, "
                  "streaming)");
        RETURN_IF(kp->sinks > 0, -EINVAL, "--sinks needs --kv-policy h2o or streaming");
        RETURN_IF(kp->recent > 0, -EINVAL, "--recent needs --kv-policy h2o");
        return 0;
    }
    RETURN_IF(kp->recent < 0, -EINVAL, "--recent must be at least 1");
    RETURN_IF(kp->recent > 0 && kp->kind != KV_POLICY_H2O, -EINVAL,
              "--recent is h2o's (heavy = B - sinks - recent); --kv-policy %s keeps B - sinks "
              "recent tokens by itself: drop --recent", pol);
    RETURN_IF(kp->recent > 0 && !isnan(kp->hh_share), -EINVAL,
              "give one of --hh-share and --recent, not both");
    RETURN_IF(kp->ratio > 0 && kp->budget > 0, -EINVAL,
              "give one of --kv-ratio and --kv-budget, not both");
    RETURN_IF(kp->ratio <= 0 && kp->budget <= 0, -EINVAL,
              "--kv-policy %s needs a budget: --kv-ratio R (e.g. 0.2) or --kv-budget B", pol);
    RETURN_IF(kp->kind == KV_POLICY_WINDOW && kp->sinks > 0, -EINVAL,
              "--kv-policy window keeps no sinks; use --kv-policy streaming for --sinks");
    if (kp->kind == KV_POLICY_H2O)
        RETURN_IF(kv_policy_share(kp) >= 1.0, -EINVAL,
                  "--hh-share %g leaves no recent slot (recent = B - sinks - heavy must be "
                  ">= 1); use an --hh-share below 1", kv_policy_share(kp));
    if (kp->budget > 0) {
        kv_split s;
        char share[64];
        split_of(kp, kp->budget, &s);
        split_flags(kp, share, sizeof share);
        RETURN_IF(s.heavy < 0, -EINVAL,
                  "--kv-budget %d with --sinks %d%s leaves heavy = %d (heavy = B - sinks - "
                  "recent must be >= 0); raise --kv-budget or lower --recent", kp->budget,
                  s.sinks, share, s.heavy);
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
    char share[64];
    split_flags(kp, share, sizeof share);
    RETURN_IF(out->heavy < 0, -EINVAL,
              "prompt on line %d (%d tokens + %d new): --kv-ratio %g gives a budget of %ld, "
              "below --sinks %d%s; raise --kv-ratio or lower --recent", line, n_prompt, max_new,
              kp->ratio, b, out->sinks, share);
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
