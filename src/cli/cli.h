/* cli.h: the verbs of the flexh2o command line, one file each (cmd_*.c),
 * dispatched by main.c. Each takes the arguments from the verb on (argv[0]
 * is the verb), prints what it does and every error itself, and returns the
 * process exit status: 0 done, 1 failed, 2 a usage error, 3 (generate) done
 * with prompt lines skipped, (merge) done with requests no shard has. */
#ifndef FH_CLI_H
#define FH_CLI_H

int cli_generate(int argc, char **argv);   /* cmd_generate.c */
int cli_search(int argc, char **argv);     /* cmd_search.c */
int cli_calibrate(int argc, char **argv);  /* cmd_calibrate.c */
int cli_convert(int argc, char **argv);    /* cmd_model.c */
int cli_make_model(int argc, char **argv); /* cmd_model.c */
int cli_tokenize(int argc, char **argv);   /* cmd_model.c */
int cli_eval(int argc, char **argv);       /* cmd_eval.c */
int cli_score(int argc, char **argv);      /* cmd_eval.c */
int cli_merge(int argc, char **argv);      /* cmd_merge.c */

#endif
