/* cli_model.c: see cli_model.h. */
#include "cli_model.h"

#include "err.h"

int cli_model_open(const char *dir, const char *dummy, cli_model_src *src)
{
    src->dir = dir;
    if (!dir) {
        return model_config_by_name(dummy, &src->cfg);
    }
    FORWARD_IF(model_config_of(dir, &src->cfg));
    int rc = model_store_dtype(dir, &src->store_dtype);
    FORWARD_IF(rc);
    src->is_store = rc;
    return tok_load(dir, &src->t);
}

int cli_model_load(const cli_model_src *src, backend *be, sched *sc, model **m)
{
    if (src->is_store)
        return model_load_store(src->dir, be, NULL, sched_layer_sink, sc, m);
    if (src->dir)
        return model_load_hf_sink(src->dir, be, sched_layer_sink, sc, m);
    return model_create_dummy_sink(&src->cfg, be, 1234, sched_layer_sink, sc, m);
}

