/* backend_check.c: backend_ops_check(), the refusal of a model family whose
 * ops a backend does not have (backend.h). */
#include "backend.h"
#include "err.h"

int backend_ops_check(const backend_ops *o, unsigned need, const char *what)
{
    static const struct {
        unsigned bit;
        const char *name;
    } ops[] = {
        {BACKEND_OP_RMSNORM, "rmsnorm"},
        {BACKEND_OP_ROPE, "rope"},
        {BACKEND_OP_SWIGLU, "swiglu"},
        {BACKEND_OP_GELU, "gelu"},
    };
    unsigned known = BACKEND_OP_RMSNORM | BACKEND_OP_ROPE | BACKEND_OP_SWIGLU | BACKEND_OP_GELU;
    RETURN_IF(need & ~known, -EINVAL, "internal: backend_ops_check for %s was asked for ops "
              "0x%x it does not know", what, need & ~known);
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        if (!(need & ops[i].bit))
            continue;
        int have = ops[i].bit == BACKEND_OP_RMSNORM ? o->rmsnorm != NULL
                 : ops[i].bit == BACKEND_OP_ROPE    ? o->rope != NULL
                 : ops[i].bit == BACKEND_OP_SWIGLU  ? o->swiglu != NULL
                                                    : o->gelu != NULL;
        RETURN_IF(!have, -ENOTSUP, "%s needs the %s op, which the %s backend does not have "
                  "yet; run it with --device cpu", what, ops[i].name, o->name);
    }
    return 0;
}
