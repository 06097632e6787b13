/* fuzz_policy.c: a policy file (sched_policy_load: gpu_batch_size,
 * num_gpu_batches, percent, the switches, sizes as numbers or "16G"
 * strings, offload_dir), over the defaults; then the checks and the
 * description of what loads (sched_policy_check, sched_policy_describe).
 *
 * Checked for any input: a policy that loads is written back
 * (sched_policy_write, what search --out saves) and loads again to the
 * same policy; one refused leaves the policy it was loaded over as it was. */
#include <string.h>

#include "err.h"
#include "fuzz_common.h"
#include "scheduler.h"

static int same(const sched_policy *a, const sched_policy *b)
{
    return a->gpu_batch_size == b->gpu_batch_size && a->num_gpu_batches == b->num_gpu_batches &&
           a->wg == b->wg && a->wc == b->wc && a->cg == b->cg && a->cc == b->cc &&
           a->hg == b->hg && a->hc == b->hc && a->overlap == b->overlap &&
           a->pin_weight == b->pin_weight && a->cpu_attention == b->cpu_attention &&
           a->compress_weight == b->compress_weight && a->compress_cache == b->compress_cache &&
           a->gpu_mem == b->gpu_mem && a->cpu_mem == b->cpu_mem &&
           strcmp(a->offload_dir, b->offload_dir) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_begin();
    fuzz_write("policy.json", data, size);
    char path[512], back[512];
    fuzz_path(path, sizeof path, "policy.json");
    sched_policy p, def;
    sched_policy_default(&p);
    def = p;
    if (sched_policy_load(path, &p) < 0) {
        FUZZ_CHECK(same(&p, &def), "a refused policy file changed the policy");
        return 0;
    }
    (void)sched_policy_check(&p);
    char line[512];
    sched_policy_describe(&p, line, sizeof line);
    FUZZ_CHECK(sched_policy_write(fuzz_path(back, sizeof back, "back.json"), &p) == 0, "%s",
               err_msg());
    sched_policy q;
    sched_policy_default(&q);
    q.gpu_mem = 12345; /* the file must set what it holds; zero sizes are left out */
    q.cpu_mem = 678;
    if (!p.gpu_mem)
        q.gpu_mem = 0;
    if (!p.cpu_mem)
        q.cpu_mem = 0;
    FUZZ_CHECK(sched_policy_load(back, &q) == 0, "the policy written back does not load: %s",
               err_msg());
    FUZZ_CHECK(same(&p, &q), "the policy written back loads to another policy");
    return 0;
}
