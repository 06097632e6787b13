/* h2o_pick.c: which slot H2O evicts for one (sequence, head), reference of
 * the normative rule in DESIGN.md ("H2O KV policy"). */
#include "../kern.h"

int kern_h2o_pick_ref(const float *scores, const int32_t *pos, int n_slots,
                      int sinks, int recent, int32_t newest_pos)
{
    int best = -1;
    for (int i = 0; i < n_slots; i++) {
        if (pos[i] < sinks || pos[i] > newest_pos - recent)
            continue;
        float si = scores ? scores[i] : 0.0f, sb = best < 0 || !scores ? 0.0f : scores[best];
        if (best < 0 || si < sb || (si == sb && pos[i] < pos[best]))
            best = i;
    }
    return best;
}
