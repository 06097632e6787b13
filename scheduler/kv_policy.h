/* kv_policy.h: the KV-cache policies of `flexh2o generate` (full, h2o,
 * window, streaming) and how a budget is split per prompt.
 *
 * DESIGN.md "H2O KV policy" is the normative text. Per prompt:
 *
 *   B      = ceil(ratio * (prompt_len + max_new))   (--kv-ratio)
 *          | budget                                 (--kv-budget)
 *   heavy  = floor((B - sinks) * hh_share)   h2o; 0 for window and streaming
 *          | B - sinks - recent                h2o with --recent (seed 004's h2o_S_R_C)
 *   sinks  = 0 for window
 *   recent = B - sinks - heavy, which must be >= 1
 *
 * and when B >= prompt_len + max_new nothing is ever evicted: that prompt
 * runs exactly as `full` (its slots are then prompt_len + max_new).
 */
#ifndef FH_KV_POLICY_H
#define FH_KV_POLICY_H

typedef enum kv_policy_kind {
    KV_POLICY_FULL,      /* every token keeps its slot */
    KV_POLICY_H2O,       /* sinks + heavy hitters by accumulated score + recent */
    KV_POLICY_WINDOW,    /* the B newest tokens */
    KV_POLICY_STREAMING, /* the first sinks tokens + the newest (StreamingLLM) */
} kv_policy_kind;

typedef struct kv_policy {
    kv_policy_kind kind;
    double ratio;     /* > 0: B = ceil(ratio * (prompt_len + max_new)); 0: unset */
    int budget;       /* > 0: B for every prompt; 0: unset */
    int sinks;        /* first tokens never evicted (h2o, streaming) */
    double hh_share;  /* share of B - sinks for heavy hitters (h2o); NAN: unset, 0.5 */
    int recent;       /* > 0: h2o's recent slots (heavy = B - sinks - recent); 0: unset */
} kv_policy;

/* The cache layout of one prompt (the kern_seq fields budget/sinks/recent). */
typedef struct kv_split {
    int budget, sinks, heavy, recent;
    int evicts;       /* 0: B >= prompt_len + max_new, runs as full */
} kv_split;

/* "full", "h2o", "window", "streaming" -> kind. @return 0 or -EINVAL. */
int kv_policy_parse(const char *name, kv_policy_kind *out);
const char *kv_policy_name(kv_policy_kind kind);

/* Check the flags alone (before any prompt is known): a budget or ratio is
 * given exactly when the policy evicts, sinks and hh_share only where the
 * policy uses them, and a --kv-budget leaves recent >= 1. The message
 * names the flags to change. @return 0 or -EINVAL. */
int kv_policy_check(const kv_policy *kp);

/* The split for a prompt of n_prompt tokens generating up to max_new.
 * @return 0, or -EINVAL (message names the prompt line and the flags) when
 * the prompt would evict with recent < 1. */
int kv_policy_split(const kv_policy *kp, int n_prompt, int max_new, int line,
                    kv_split *out);

/* hh_share, or its default 0.5 when unset (NAN). */
double kv_policy_share(const kv_policy *kp);

/* 1 when eviction reads the H2O scores (only h2o: window and streaming
 * always evict the one unprotected token, the oldest after the sinks). */
int kv_policy_needs_scores(const kv_policy *kp);

#endif
