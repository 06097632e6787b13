#!/usr/bin/env python3
"""How much of the copies' time ran under kernels, from a device-side trace.

    nsys profile -t cuda --export sqlite -o run flexh2o generate ...
    python3 benchmarks/nsys_overlap.py run.sqlite [--skip-s 0]
or, with no Nsight Systems (the lent GPU machines):
    CUDA_INJECTION64_PATH=$PWD/build/benchmarks/libflexh2o-cupti-trace.so \
    FLEXH2O_CUPTI_OUT=run.csv flexh2o generate ...
    python3 benchmarks/nsys_overlap.py run.csv [--skip-s 0]

Reads the CUPTI kernel and memcpy activity records (the exported SQLite file's tables,
or benchmarks/cupti_trace.c's CSV; start/end in ns on the GPU clock) and prints, per
copy direction, the copies' busy time (and its share of the span: how busy that link
was), the part of it during which some kernel ran, and the kernels' busy time:
"overlap" = copy time under kernels / copy time, how much of the span the kernels kept
the GPU busy, and how much of the kernels' time ran under some copy (in a run the
copies bound, the compute the I/O hides). --skip-s drops the first seconds
(model loading, whose copies run with no compute to overlap); --last-s keeps only the
last seconds (the decode steps after a prefill). Prints Markdown.
"""
import argparse
import sqlite3
import sys


def union(iv):
    """Merged, sorted disjoint intervals."""
    out = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def total(iv):
    return sum(b - a for a, b in iv)


def intersect(x, y):
    """Length of the intersection of two disjoint sorted interval lists."""
    i = j = 0
    n = 0
    while i < len(x) and j < len(y):
        a, b = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if a < b:
            n += b - a
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return n


def read_sqlite(path):
    """([(start, end)] of kernels, [(start, end, bytes, copyKind)] of copies)."""
    db = sqlite3.connect(path)
    tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
    kt, mt = "CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY"
    if kt not in tables or mt not in tables:
        sys.exit(f"{path}: no {kt} / {mt} table (profile with -t cuda)")
    return (db.execute(f"select start, end from {kt}").fetchall(),
            db.execute(f"select start, end, bytes, copyKind from {mt}").fetchall())


def read_csv(path):
    """The same from cupti_trace.c's CSV (kind,start_ns,end_ns,stream,bytes,copy_kind,name)."""
    kern, copies = [], []
    with open(path) as f:
        if not f.readline().startswith("kind,start_ns,end_ns"):
            sys.exit(f"{path}: not a cupti_trace.c CSV (its header line is missing)")
        for line in f:
            kind, s, e, _stream, b, k = line.rstrip("\n").split(",", 6)[:6]
            if kind == "kernel":
                kern.append((int(s), int(e)))
            elif kind == "memcpy":
                copies.append((int(s), int(e), int(b), int(k)))
    return kern, copies


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sqlite", help="an nsys SQLite export, or a cupti_trace.c CSV (.csv)")
    ap.add_argument("--skip-s", type=float, default=0.0)
    ap.add_argument("--last-s", type=float, default=0.0,
                    help="only the last seconds before the last kernel ends (decode steps "
                    "after a prefill); 0: from --skip-s on")
    a = ap.parse_args()
    if a.sqlite.endswith(".csv"):
        kern, copies = read_csv(a.sqlite)
    else:
        kern, copies = read_sqlite(a.sqlite)
    t0 = min(s for s, _ in kern) + a.skip_s * 1e9 if kern else 0
    if kern and a.last_s > 0:
        t0 = max(t0, max(e for _, e in kern) - a.last_s * 1e9)
    kern = union([(s, e) for s, e in kern if s >= t0])
    # copyKind: 1 host->device, 2 device->host (CUPTI_ActivityMemcpyKind)
    names = {1: "host->device", 2: "device->host"}
    span = (max(e for _, e in kern) - kern[0][0]) if kern else 0
    print("| copies | count | GiB | busy ms | link busy | under kernels ms | overlap |")
    print("|---|---|---|---|---|---|---|")
    every = []
    for kind, name in names.items():
        rows = [(s, e, b) for s, e, b, k in copies if k == kind and s >= t0]
        iv = union([(s, e) for s, e, _ in rows])
        every += iv
        busy, under = total(iv), intersect(iv, kern)
        gib = sum(b for _, _, b in rows) / 2**30
        print(f"| {name} | {len(rows)} | {gib:.2f} | {busy / 1e6:.1f} | "
              f"{100 * busy / span if span else 0:.0f}% | {under / 1e6:.1f} | "
              f"{100 * under / busy if busy else 0:.0f}% |")
    print(f"\nkernels busy {total(kern) / 1e6:.1f} ms of a {span / 1e6:.1f} ms span "
          f"({100 * total(kern) / span if span else 0:.0f}% of the GPU's time computing)")
    # in a run the copies bound, the question is the other way round: how much of the
    # compute hid under some copy (the rest is time the links sat idle for it)
    hidden = intersect(kern, union(every))
    print(f"kernels under copies {hidden / 1e6:.1f} ms "
          f"({100 * hidden / total(kern) if kern else 0:.0f}% of the compute hidden under I/O)")


if __name__ == "__main__":
    main()
