#!/usr/bin/env python3
"""A/B of flag sets of one flexh2o binary over grid cells' own generate commands
(tables.csv's flexh2o rows), interleaved (the order flips each round), page cache
dropped before each run, under the cell's memory cgroup cap (tables.py's run_capped, in
a cgroup of its own).

  ab_flags.py CSV ROUNDS LOG BIN 'fp32=;bf16=--cpu-matmul bf16' 'system|model|p|g,...'

A set that names --model runs that model instead of the cell's (a bf16 store of it).
"""
import csv, os, re, subprocess, sys, time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 3))
import tables  # noqa: E402  benchmarks/tables.py

tables.CGROUP = tables.CGROUP.rstrip("/") + "-ab"

csvp, rounds, out, binp = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sets = [s.split('=', 1) for s in sys.argv[5].split(';')]
cells = sys.argv[6].split(',')
rows = {f"{r['system']}|{r['model']}|{r['prompt_len']}|{r['gen_len']}": r
        for r in csv.DictReader(open(csvp)) if r['status'] == 'ok'}
log = open(out, 'a')


def say(s):
    print(s, flush=True)
    log.write(s + '\n')
    log.flush()


say(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} ab_flags.py rounds {rounds} "
    f"bin {binp} sets {sets}")
for rd in range(rounds):
    for c in cells:
        r = rows[c]
        cmd = r['command'].split('build/src/flexh2o generate', 1)[1]
        cap = re.search(r'os (\d+M)', r['cap'])
        order = sets if rd % 2 == 0 else sets[::-1]
        for name, flags in order:
            o = f"/tmp/exp/ab/out-{name}.jsonl"
            if os.path.exists(o):
                os.remove(o)
            c2 = re.sub(r'--out \S+', f'--out {o}', cmd)
            if '--model ' in flags:  # a set of its own model (a bf16 store of it)
                c2 = re.sub(r'--model \S+', '', c2)
            subprocess.run('sync; echo 1 > /proc/sys/vm/drop_caches', shell=True)
            rc, so, se, note = tables.run_capped(f"{binp} generate {c2} --quiet {flags}".split(),
                                                 cap.group(1) if cap else None, 1800)
            m = re.search(r'prefill ([\d.]+) tok/s.*decode ([\d.]+) tok/s.*total ([\d.]+) '
                          r'generated tok/s in ([\d.]+) s', se)
            say(f"{rd + 1} {c} [{r['block']}] {name}: " +
                (f"total {m.group(3)} tok/s ({m.group(4)} s), prefill {m.group(1)}, decode "
                 f"{m.group(2)}" if m else f"FAILED rc={rc} {note} {se[-300:]}"))
