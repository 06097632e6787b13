#!/usr/bin/env python3
"""A/B of two flexh2o binaries over grid cells' own generate commands (tables.csv), interleaved, page cache dropped before each run."""
import csv, re, subprocess, sys, time, os
csvp, rounds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bins = dict(a.split('=', 1) for a in sys.argv[4].split(','))
cells = sys.argv[5].split(',')   # "system|model|p|g"
rows = {}
for r in csv.DictReader(open(csvp)):
    rows[f"{r['system']}|{r['model']}|{r['prompt_len']}|{r['gen_len']}"] = r
log = open(out, 'a')
def say(s):
    print(s); log.write(s + '\n'); log.flush()
say(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} ab.py rounds {rounds} bins {bins}")
for rd in range(rounds):
    for c in cells:
        cmd = rows[c]['command'].split('build/src/flexh2o generate', 1)[1]
        order = list(bins.items()) if rd % 2 == 0 else list(bins.items())[::-1]
        for name, b in order:
            o = f"/tmp/exp/ab/out-{name}.jsonl"
            if os.path.exists(o): os.remove(o)
            c2 = re.sub(r'--out \S+', f'--out {o}', cmd)
            subprocess.run('sync; echo 1 > /proc/sys/vm/drop_caches', shell=True)
            t0 = time.time()
            p = subprocess.run(f"{b} generate {c2} --quiet", shell=True, capture_output=True, text=True)
            m = re.search(r'prefill ([\d.]+) tok/s.*decode ([\d.]+) tok/s.*total ([\d.]+) generated tok/s in ([\d.]+) s', p.stderr)
            say(f"{rd+1} {c} {name}: " + (f"total {m.group(3)} tok/s ({m.group(4)} s), prefill {m.group(1)}, decode {m.group(2)}" if m else f"FAILED rc={p.returncode} {p.stderr[-300:]}"))
