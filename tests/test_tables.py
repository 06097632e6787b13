#!/usr/bin/env python3
"""tests/test_tables.py: benchmarks/tables.py's rules that decide what a peer row
reports -- the projection that stops a peer's tries (`projected`), the mark on cells
held by the old proportional rule (`held`) -- `--report` over a CSV with such a
cell, `--only` as a regular expression, and benchmarks/nsys_overlap.py's arithmetic
over a cupti_trace.c CSV. Standard library only; no run of any system."""
import csv
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import benchlib  # noqa: E402
import tables  # noqa: E402


class Projection(unittest.TestCase):
    def test_no_guess_before_two_runs(self):
        self.assertIsNone(tables.projected([], 8))
        self.assertIsNone(tables.projected([(8, 169.0)], 16))

    def test_line_through_the_last_two_runs(self):
        # Accelerate at opt-6.7b 32+8: 8 -> 169 s; a proportional rule said 338 s at 16
        self.assertAlmostEqual(tables.projected([(8, 169.0), (16, 190.0)], 24), 211.0)
        self.assertAlmostEqual(tables.projected([(8, 50.0), (16, 100.0), (32, 180.0)], 64),
                               340.0)

    def test_a_faster_larger_batch_projects_no_faster(self):
        # noise can make the larger batch quicker; the next is then no quicker still
        self.assertAlmostEqual(tables.projected([(8, 120.0), (16, 110.0)], 32), 110.0)


class LiveSlots(unittest.TestCase):
    """The bound counts the KV slots a decode step reads, as the engine moves them."""

    def test_full_cache_reads_the_filled_slots_and_h2o_its_whole_budget(self):
        self.assertAlmostEqual(benchlib.live_frac(512, 1024, benchlib.kv_cap(512, 1024)),
                               (512 + 1023 / 2) / 1536, places=9)
        self.assertEqual(benchlib.kv_cap(32, 32, 0.2), 13)
        self.assertEqual(benchlib.kv_cap(50, 0, 0.2), 10)  # 0.2 * 50 rounds to 10, not 11
        self.assertEqual(benchlib.live_frac(32, 32, benchlib.kv_cap(32, 32, 0.2)), 1.0)
        self.assertEqual(benchlib.live_of(["--kv-policy", "h2o", "--kv-ratio", "0.2"], 32, 32),
                         1.0)
        self.assertEqual(benchlib.live_of([], 32, 32), benchlib.live_frac(32, 32, 64))

    def test_the_kv_terms_scale_with_the_live_share(self):
        tiers = {t: dict(weights=0.0, kv=0.0) for t in ("gpu", "cpu", "disk")}
        tiers["cpu"]["kv"], tiers["disk"]["kv"] = 4e9, 2e9
        cal = dict(h2d_GBps=1.0, d2h_GBps=1.0, disk_read_GBps=1.0)
        whole = benchlib.bound(tiers, cal, 8, 16, False, 0.0, 0.0)
        half = benchlib.bound(tiers, cal, 8, 16, False, 0.0, 0.0, live=0.5)
        for term in ("h2d (W_cpu+W_disk+KV in)", "d2h (KV out)", "disk (W_disk+KV_disk)"):
            self.assertAlmostEqual(half["terms"][term], whole["terms"][term] / 2, places=9)


class PlanTiers(unittest.TestCase):
    """--plan's disk KV holds the records' row logs; the bound's KV bytes do not."""

    def test_row_logs_leave_the_disk_kv(self):
        out = ("[flexh2o] plan (GiB)  tier    weights       KV      act  staging     work    total\n"
               "[flexh2o] plan        gpu       0.500    0.000    0.010    0.100    0.200    0.810\n"
               "[flexh2o] plan        cpu       1.000    0.000    0.000    0.050    0.000    1.050\n"
               "[flexh2o] plan        disk      0.000    2.200    0.000    0.000    0.000    2.200\n"
               "[flexh2o] plan        disk KV: 0.200 GiB of it the records' row logs\n")
        real = benchlib.sh
        benchlib.sh = lambda cmd: subprocess.CompletedProcess(cmd, 0, out, "")
        try:
            tiers = benchlib.plan_tiers(["flexh2o", "generate"])
        finally:
            benchlib.sh = real
        self.assertAlmostEqual(tiers["disk"]["kv"], 2.0 * 2**30, places=3)
        self.assertAlmostEqual(tiers["disk"]["kv_log"], 0.2 * 2**30, places=3)
        self.assertAlmostEqual(tiers["disk"]["total"], 2.2 * 2**30, places=3)


class Machine(unittest.TestCase):
    INFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {m}\n"
            "model name\t: Intel(R) Xeon(R) Processor\nstepping\t: 1\n\n"
            "processor\t: 1\ncpu family\t: 6\nmodel\t\t: {m}\n"
            "model name\t: Intel(R) Xeon(R) Processor\n")

    def test_vms_of_one_model_name_stay_apart(self):
        a = tables.cpu_machine(self.INFO.format(m=207), 2)
        b = tables.cpu_machine(self.INFO.format(m=167), 2)
        self.assertEqual(a, "Intel(R) Xeon(R) Processor (2 cores, family 6 model 207)")
        self.assertNotEqual(a, b)

    def test_no_numbers_no_suffix(self):
        self.assertEqual(tables.cpu_machine("model name : Some CPU\n", 4), "Some CPU (4 cores)")


class PeerTries(unittest.TestCase):
    def test_powers_of_two_from_8_then_the_full_cache_block(self):
        self.assertEqual(tables.peer_tries(64), [8, 16, 32, 64])
        self.assertEqual(tables.peer_tries(14), [8, 14])
        self.assertEqual(tables.peer_tries(56), [8, 16, 32, 56])
        self.assertEqual(tables.peer_tries(4), [4])

    def test_given_batches_replace_them(self):
        self.assertEqual(tables.peer_tries(64, "64,32"), [32, 64])
        self.assertEqual(tables.peer_tries(14, "56"), [56])
        with self.assertRaises(ValueError):
            tables.peer_tries(64, "0,8")
        with self.assertRaises(ValueError):
            tables.peer_tries(64, "x")


class CurrentRows(unittest.TestCase):
    def test_plots_take_only_the_grid_s_current_caps_and_machine(self):
        # the cpu-bf16 grid's small models got halved caps in session 31: their rows under
        # the fp32 caps stay in the CSV but are no cells of the grid any more
        g = tables.GRIDS["cpu-bf16"]
        now, old = tables.cap_str(g["caps"]["opt-1.3b"]), tables.cap_str(
            tables.GRIDS["cpu"]["caps"]["opt-1.3b"])
        self.assertNotEqual(now, old)
        row = dict(system="HF Accelerate", model="opt-1.3b", prompt_len="32", gen_len="8",
                   machine="m", status="ok", tok_s="1")
        by = {1: dict(row, cap=old, tok_s="113"), 2: dict(row, cap=now, tok_s="57"),
              3: dict(row, cap=now, machine="other"), 4: dict(row, cap=now, status="failed")}
        got = tables.current_rows("cpu-bf16", "m", by)
        self.assertEqual([r["tok_s"] for r in got], ["57"])


class Held(unittest.TestCase):
    def test_old_rule_note_is_marked(self):
        r = {"status": "ok", "note": "batch 8: 0.378 tok/s; batch 16 not run (batch 8 took 169 s)"}
        self.assertEqual(tables.held(r), "\u2020")

    def test_other_stops_are_not(self):
        for note in ("batch 8: 1 tok/s; batch 16: 0.9 tok/s",
                     "batch 8: 1 tok/s; batch 16 not run (projected 300 s from batches 4 and 8)",
                     ""):
            self.assertEqual(tables.held({"status": "ok", "note": note}), "", note)
        self.assertEqual(tables.held({"status": "failed: x", "note":
                                      "batch 16 not run (batch 8 took 9 s)"}), "")
        self.assertEqual(tables.held(None), "")


class Report(unittest.TestCase):
    def test_report_marks_the_held_peer_and_its_ratio(self):
        g = tables.GRIDS["cpu"]
        m = g["models"][0]
        p, n = g["sizes"][0]
        cap = tables.cap_str(g["caps"][m])
        base = dict(machine="test box", date="2026-12-02", commit="x", grid="cpu", model=m,
                    prompt_len=p, gen_len=n, cap=cap, lowest_tier="disk", load="1.0",
                    status="ok", command="c", setup_s="1", note="")
        rows = [dict(base, system="flexh2o full", block="64x1", tok_s="4.0",
                     bound_tok_s="5.0", efficiency="0.8"),
                dict(base, system="HF Accelerate", block="8x1", tok_s="1.0",
                     note="batch 8: 1.0 tok/s; batch 16 not run (batch 8 took 200 s)")]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.csv")
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=tables.COLUMNS, restval="")
                w.writeheader()
                w.writerows(rows)
            r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tables.py"),
                                "--report", "--csv", path], capture_output=True, text=True,
                               env=dict(os.environ, PATH="/nonexistent"))  # no gnuplot
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, "tables.md")) as f:
                md = f.read()
        self.assertIn("| HF Accelerate | 1.00 (8x1,D)\u2020 |", md)
        self.assertIn("| flexh2o full | 4.00x\u2020 |", md)
        self.assertIn("| flexh2o full | 80% of 5.00 |", md)
        self.assertIn("\u2020 a peer held below its best batch", md)


class Only(unittest.TestCase):
    def dry(self, pattern):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tables.py"),
                            "--grid", "gpu", "--dry-run", "--only", pattern,
                            "--csv", os.devnull], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [x for x in r.stdout.splitlines() if x.startswith("# ")]

    def test_a_regular_expression_picks_cells_across_models(self):
        heads = self.dry("flexh2o.*-512-32-")
        self.assertEqual(len(heads), 6, heads)  # three systems x two models
        self.assertTrue(all("512+32" in h and "flexh2o" in h for h in heads), heads)

    def test_a_plain_part_of_a_slug_still_matches(self):
        heads = self.dry("HF_Accelerate-opt-6.7b-512-32-")
        self.assertEqual(len(heads), 1, heads)
        self.assertIn("HF Accelerate | opt-6.7b 512+32", heads[0])


class PeerWeights(unittest.TestCase):
    def test_gpu_grid_accelerate_makes_its_weights_in_memory(self):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tables.py"),
                            "--grid", "gpu", "--dry-run", "--csv", os.devnull, "--only",
                            "(HF_Accelerate|DeepSpeed_ZeRO-Inference)-opt-30b-512-32-"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        cmds = [x for x in r.stdout.splitlines() if "hf_offload.py" in x]
        self.assertEqual(len(cmds), 2, r.stdout)
        acc = next(x for x in cmds if "--engine accelerate" in x)
        ds = next(x for x in cmds if "--engine deepspeed" in x)
        # no 60 GB checkpoint for Accelerate; DeepSpeed still reads one
        self.assertIn("--random-init", acc)
        self.assertNotIn("--prepare", acc)
        self.assertNotIn("--ckpt", acc)
        self.assertIn("--prepare", ds)
        self.assertIn("--ckpt", ds)

    def test_cpu_grid_reads_the_checkpoint_both_systems_share(self):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tables.py"),
                            "--grid", "cpu", "--dry-run", "--csv", os.devnull, "--only",
                            "HF_Accelerate-opt-1.3b-32-8-"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--prepare", r.stdout)
        self.assertNotIn("--random-init", r.stdout)


class WarmUp(unittest.TestCase):
    def cmds(self, grid, pattern):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tables.py"),
                            "--grid", grid, "--dry-run", "--csv", os.devnull, "--only",
                            pattern], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [x for x in r.stdout.splitlines() if x and not x.startswith("#")]

    def test_gpu_grid_warms_up_every_system_and_the_cpu_grid_none(self):
        # the run of each system (flexh2o's generate, the peers' hf_offload.py) off the
        # clock first on the GPU, where one-time kernel loading is a third of a cell
        gpu = self.cmds("gpu", "opt-6.7b-512-32-")
        self.assertEqual(len(gpu), 5, gpu)
        for cmd in gpu:
            run = cmd.split(" && ")[-1]
            self.assertIn("--warm-up", run, cmd)
        cpu = self.cmds("cpu", "opt-1.3b-32-8-")
        self.assertEqual(len(cpu), 5, cpu)
        for cmd in cpu:
            self.assertNotIn("--warm-up", cmd)


class BlockRule(unittest.TestCase):
    def test_the_grid_not_search_s_prefill_guard_caps_the_block(self):
        # every flexh2o cell's search is told the grid's max block and no prefill cap of
        # its own (search's default, 60 s without --prompts, held opt-6.7b to 56 rows)
        for grid, pattern, mb in (("cpu", "flexh2o.*-opt-6.7b-32-32-", "64"),
                                  ("gpu", "flexh2o.*-opt-30b-512-32-", "1024")):
            r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tables.py"),
                                "--grid", grid, "--dry-run", "--csv", os.devnull, "--only",
                                pattern], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            searches = [x.split(" search ", 1)[1].split(" && ")[0]
                        for x in r.stdout.splitlines() if " search " in x]
            self.assertEqual(len(searches), 3, r.stdout)
            for cmd in searches:
                self.assertIn("--max-prefill-seconds 0", cmd)
                self.assertIn("--max-block " + mb, cmd)


class TraceOverlap(unittest.TestCase):
    def test_copy_time_under_kernels(self):
        # kernels [1000, 2000) and [3000, 4000) ns; an h2d copy [1500, 3500) is busy
        # 2000 ns, 1000 of them under kernels; a d2h copy [2000, 3000) runs alone; a
        # copy before the first kernel (loading) is left out
        lines = ["kind,start_ns,end_ns,stream,bytes,copy_kind,name",
                 "memcpy,0,900,14,1024,1,",
                 "kernel,1000,2000,7,0,0,_Z4pickPK6__half",
                 "memcpy,1500,3500,14,1073741824,1,",
                 "memcpy,2000,3000,15,536870912,2,",
                 "kernel,3000,4000,7,0,0,_Z3foo<1,2>"]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.csv")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            r = subprocess.run([sys.executable,
                                os.path.join(ROOT, "benchmarks", "nsys_overlap.py"), path],
                               capture_output=True, text=True)
            # the last 1500 ns: the second kernel alone, no copy starts in them
            last = subprocess.run([sys.executable,
                                   os.path.join(ROOT, "benchmarks", "nsys_overlap.py"), path,
                                   "--last-s", "1.5e-6"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(last.returncode, 0, last.stderr)
        self.assertIn("| host->device | 0 | 0.00 |", last.stdout)
        self.assertIn("(100% of the GPU's time computing)", last.stdout)
        # the links busy 2000 and 1000 ns of the 3000 ns span
        self.assertIn("| host->device | 1 | 1.00 | 0.0 | 67% | 0.0 | 50% |", r.stdout)
        self.assertIn("| device->host | 1 | 0.50 | 0.0 | 33% | 0.0 | 0% |", r.stdout)
        self.assertIn("kernels busy 0.0 ms of a 0.0 ms span (67% of the GPU's time computing)",
                      r.stdout)
        # 500 ns of each kernel ran under the h2d copy
        self.assertIn("(50% of the compute hidden under I/O)", r.stdout)


if __name__ == "__main__":
    unittest.main()
