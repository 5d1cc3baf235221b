"""First call in a new kernel: in a fresh process with an IPython shell (as a new kernel has),
``%load_ext nbserverless`` then a cell defining an ``@nbs.remote`` function and calling it, up to
its first result; vs ``import ray; ray.init(address="local")`` alone in another fresh process.
The two run alternately; each process stops what it started and exits (killed by its own
handle on a timeout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ._common import Side, add_rows, interleave, need, ratio

SC = "first_call"
TIMEOUT_S = 150

NBS_SCRIPT = r"""
import json, sys, time
LOAD_EXT = {load_ext}
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()          # a new kernel already has its shell
t0 = time.perf_counter()
if LOAD_EXT:
    shell.run_line_magic("load_ext", "nbserverless")
t_ext = time.perf_counter()
res = shell.run_cell('''
import nbserverless as nbs
@nbs.remote(cpus=0.25)
def first(x):
    return x * 2
_bench_y = first(21)
''')
t1 = time.perf_counter()
res.raise_error()
y = shell.user_ns["_bench_y"]
print("BENCH " + json.dumps(dict(first_result_s=t1 - t0, load_ext_s=t_ext - t0,
                                 ok=y == 42, why=f"got {y!r}")), flush=True)
import nbserverless as nbs, ray
nbs.shutdown()
if ray.is_initialized():
    ray.shutdown()
"""

RAY_SCRIPT = r"""
import json, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
t0 = time.perf_counter()
import ray
ray.init(address="local")
t1 = time.perf_counter()
print("BENCH " + json.dumps({"init_s": t1 - t0, "ok": ray.is_initialized()}), flush=True)
ray.shutdown()
"""


def _run_script(src: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NBSERVERLESS_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env.get("PYTHONPATH", "")]
    )
    p = subprocess.Popen(
        [sys.executable, "-c", src],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError(f"fresh process did not finish within {TIMEOUT_S} s") from None
    for line in out.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    raise RuntimeError(f"no result (exit {p.returncode}): {err.strip()[-600:]}")


def run(ctx) -> None:
    need("ray")
    need("IPython")

    def nbs_one(load_ext: bool):
        need("nbserverless")
        return _run_script(NBS_SCRIPT.replace("{load_ext}", str(load_ext)))

    ext_side = Side("fresh process: %load_ext + first result", lambda: nbs_one(True))
    imp_side = Side("fresh process: import nbserverless + first result", lambda: nbs_one(False))
    ray_side = Side("fresh process: ray.init(address='local')", lambda: _run_script(RAY_SCRIPT))
    interleave(ctx, SC, [ext_side, ray_side, imp_side])
    ext = add_rows(ctx, SC, ext_side, [("first_result_s", "s"), ("load_ext_s", "s")])
    imp = add_rows(ctx, SC, imp_side, [("first_result_s", "s")])
    ry = add_rows(ctx, SC, ray_side, [("init_s", "s")])
    for label, rows in (("%load_ext", ext), ("import", imp)):
        r, v = ratio(rows["first_result_s"], ry["init_s"])
        diff = rows["first_result_s"].value - ry["init_s"].value if v else float("nan")
        ctx.check(
            SC, f"{label} + first result − ray.init", diff, "<=", 0.3, 0.3, unit=" s", valid=v
        )
