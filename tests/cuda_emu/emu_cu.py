#!/usr/bin/env python3
"""emu_cu.py IN.cu OUT.cc: a kernels/*.cu file as C++ for tests/cuda_emu.

Two rewrites, nothing else: each launch `K<<<grid, block[, smem[, stream]]>>>(args);`
becomes `emu_launch_cfg(grid, block, smem, stream, BOUND, [=] { K(args); });` (the
arguments captured by value: the launch may run after the launcher returned; BOUND the
first argument of K's `__launch_bounds__` in this file, 0 where it has none, which the
emulated launch checks) and each `extern __shared__ T name[];` becomes
`T *name = (T *)emu_dyn_smem();`. The rest
of the text compiles against the shim headers of tests/cuda_emu (cuda_runtime.h,
cuda_fp16.h, mma.h) as it is; a #line keeps compiler messages on the .cu file.
"""
import re
import sys


def split_top(s):
    """s split at the commas outside (), [], {} and <>-free nesting."""
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def close_paren(s, i):
    """Index of the ')' closing the '(' at s[i]."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "(":
            depth += 1
        elif s[j] == ")":
            depth -= 1
            if depth == 0:
                return j
    raise SystemExit("emu_cu: unbalanced launch arguments")


def launch_bounds(text):
    """{kernel name: the text of its __launch_bounds__'s first argument} for the kernels
    defined in text that declare one."""
    out = {}
    for m in re.finditer(r"__global__\s+void\s+__launch_bounds__\s*\(", text):
        b = close_paren(text, m.end() - 1)
        name = re.match(r"\s*(\w+)\s*\(", text[b + 1:])
        if not name:
            raise SystemExit("emu_cu: a __launch_bounds__ that precedes no kernel name")
        out[name.group(1)] = split_top(text[m.end():b])[0]
    return out


def rewrite_launches(text):
    bounds = launch_bounds(text)
    out, pos = [], 0
    launch = re.compile(r"([A-Za-z_][\w:]*(?:<[^;<>]*>)?)\s*<<<")
    while True:
        m = launch.search(text, pos)
        if not m:
            out.append(text[pos:])
            return "".join(out)
        end = text.index(">>>", m.end())
        cfg = split_top(text[m.end():end])
        if not 2 <= len(cfg) <= 4:
            raise SystemExit(f"emu_cu: launch configuration {cfg}")
        cfg += ["0", "0"][: 4 - len(cfg)]
        a = text.index("(", end + 3)
        b = close_paren(text, a)
        out.append(text[pos:m.start()])
        name = re.sub(r"<.*", "", m.group(1)).split("::")[-1]
        bound = f"({bounds[name]})" if name in bounds else "0"
        out.append(f"emu_launch_cfg({', '.join(cfg)}, {bound}, "
                   f"[=] {{ {m.group(1)}{text[a:b + 1]}; }})")
        pos = b + 1


def main():
    src, dst = sys.argv[1], sys.argv[2]
    text = open(src).read()
    text = rewrite_launches(text)
    text = re.sub(r"extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;",
                  r"\1 *\2 = (\1 *)emu_dyn_smem();", text)
    with open(dst, "w") as f:
        f.write(f'#line 1 "{src}"\n{text}')


if __name__ == "__main__":
    main()
