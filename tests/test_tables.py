#!/usr/bin/env python3
"""tests/test_tables.py: benchmarks/tables.py's rules that decide what a peer row
reports -- the projection that stops a peer's tries (`projected`), the mark on cells
held by the old proportional rule (`held`) -- and `--report` over a CSV with such a
cell. Standard library only; no run of any system."""
import csv
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
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


if __name__ == "__main__":
    unittest.main()
