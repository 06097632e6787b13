/* cmd_model.c: the verbs that make or read a model without running it:
 * `flexh2o convert` (a Hugging Face directory into a weight store),
 * `flexh2o make-model` (a random model in Hugging Face format) and
 * `flexh2o tokenize` (text lines into the ids generate feeds). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "cli.h"
#include "cli_args.h"
#include "err.h"
#include "model.h"
#include "model_config.h"
#include "off.h"
#include "tok.h"

int cli_tokenize(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o tokenize --model DIR < lines.txt\n"
                 "  prints, per input line, the JSON array of ids generate feeds (BOS first\n"
                 "  where the model adds one); DIR needs only the tokenizer files");
            return 0;
        } else {
            return cli_unknown_flag("tokenize", argv[i]);
        }
    }
    if (!dir)
        return cli_usage("tokenize", "--model DIR is required");
    tok *t = NULL;
    if (tok_load(dir, &t) < 0)
        return cli_fail();
    int bos = tok_bos_id(t);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int rc = 0, lineno = 0;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n')
            len--;
        int32_t *ids = NULL;
        int n = tok_encode(t, line, (size_t)len, &ids);
        if (n < 0) {
            /* the lines before are printed; this one is named (the output
             * is a line per input line, so nothing after it is) */
            if (n != -ENOMEM)
                err_prefix("input line %d", lineno);
            fflush(stdout);
            rc = cli_fail();
            break;
        }
        const char *sep = "";
        putchar('[');
        if (bos >= 0) {
            printf("%d", bos);
            sep = ", ";
        }
        for (int i = 0; i < n; i++, sep = ", ")
            printf("%s%d", sep, ids[i]);
        printf("]\n");
        free(ids);
    }
    free(line);
    tok_destroy(t);
    return rc;
}

int cli_make_model(int argc, char **argv)
{
    const char *name = NULL, *out = NULL;
    int seed = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc) {
            int rc = cli_parse_int("make-model", "--seed", argv[++i], 0, 2147483647, &seed);
            if (rc)
                return rc;
        } else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o make-model --config NAME --out DIR [--seed S]\n"
                 "  writes a random model of NAME's family in Hugging Face format; NAME:\n"
                 "  tiny (OPT, built in), tiny-llama, tiny-mistral, tiny-qwen2, tiny-neox,\n"
                 "  any configs/models shape, or a config.json path");
            return 0;
        } else {
            return cli_unknown_flag("make-model", argv[i]);
        }
    }
    if (!name || !out)
        return cli_usage("make-model", "--config NAME and --out DIR are required");
    model_config cfg;
    if (model_config_by_name(name, &cfg) < 0 ||
        model_write_random(&cfg, out, (uint64_t)seed) < 0)
        return cli_fail();
    fprintf(stderr, "[flexh2o] wrote %s (%s, %.2f M parameters) to %s\n", name, cfg.name,
            model_config_params(&cfg) / 1e6, out);
    return 0;
}

int cli_convert(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    uint32_t dtype = OFF_DTYPE_F16, q4 = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            in = argv[++i];
        } else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--dtype") == 0 && i + 1 < argc) {
            const char *d = argv[++i];
            if (strcmp(d, "f16") == 0)
                dtype = OFF_DTYPE_F16;
            else if (strcmp(d, "f32") == 0)
                dtype = OFF_DTYPE_F32;
            else if (strcmp(d, "bf16") == 0)
                dtype = OFF_DTYPE_BF16;
            else
                return cli_usage("convert", "--dtype must be f16 (the GPU's), bf16 (a bf16 "
                                 "checkpoint's, exactly) or f32 (the CPU backend's)");
        } else if (strcmp(argv[i], "--compress-weight") == 0) {
            q4 = OFF_DTYPE_Q4;
        } else if (strcmp(argv[i], "--help") == 0) {
            puts("usage: flexh2o convert --model HF_DIR --out STORE [--dtype f16|bf16|f32]\n"
                 "         [--compress-weight]\n"
                 "  writes STORE/model.flxh2o (4 KiB-aligned, checksummed per-layer segments\n"
                 "  that the disk tier streams with O_DIRECT) plus config.json and the\n"
                 "  tokenizer files; then: flexh2o generate --model STORE ...\n"
                 "  --dtype: storage type (default f16: both backends stream it as it is,\n"
                 "  the CPU backend widening each layer to fp32 just before its compute;\n"
                 "  bf16: a bf16 checkpoint's values exactly, streamed and widened as f16\n"
                 "  on the CPU backend, converted to fp16 on load on CUDA; f32: the CPU\n"
                 "  backend's exact weights, twice the bytes on every tier)\n"
                 "  --compress-weight: the layers' matrices as 4-bit groups (kernels/kern.h);\n"
                 "  such a store runs with --compress-weight and streams its disk share");
            return 0;
        } else {
            return cli_unknown_flag("convert", argv[i]);
        }
    }
    if (!in || !out)
        return cli_usage("convert", "--model HF_DIR and --out STORE are required");
    if (q4 && dtype == OFF_DTYPE_BF16)
        return cli_usage("convert", "--compress-weight keeps the vectors f16 or f32: give "
                         "--dtype f16 or f32 with it");
    if (model_convert(in, out, dtype | q4) < 0)
        return cli_fail();
    fprintf(stderr, "[flexh2o] wrote the weight store %s/model.flxh2o (%s%s)\n", out,
            dtype == OFF_DTYPE_F16 ? "f16" : dtype == OFF_DTYPE_BF16 ? "bf16" : "f32",
            q4 ? ", 4-bit matrices" : "");
    if (dtype == OFF_DTYPE_F16 && model_hf_h16(in) == KERN_H16_BF16)
        fprintf(stderr, "[flexh2o] note: %s is bf16; f16 rounds its values (--dtype bf16 "
                "keeps them exactly)\n", in);
    return 0;
}
