"""Write ``examples/quickstart.ipynb`` (committed without outputs).

Run: ``python examples/make_quickstart.py``; then ``nbserverless run examples/quickstart.ipynb``.
"""

from __future__ import annotations

from pathlib import Path

from _notebook import write_notebook

CELLS = [
    (
        "md",
        "# nbserverless quickstart\n\n"
        "Run one cell or one function on replicas that start when work arrives and disappear "
        "after an idle keep-alive, and see what it costs. Everything here runs on an embedded "
        "local Ray cluster; set `NBSERVERLESS_ADDRESS` (or `%serverless connect ADDRESS`) to "
        "use an existing one.",
    ),
    (
        "code",
        "%load_ext nbserverless\n"
        "import nbserverless as nbs\n\n"
        "# small replicas, removed after 10 idle seconds\n"
        "nbs.config(cpus=0.25, keep_alive=10);",
    ),
    (
        "md",
        "## A cell on a replica\n\n"
        "`%%serverless` ships the names the cell reads (`words`), runs the body on a replica, "
        "streams its output here, brings back what it assigns (`counts`) and shows its last "
        "expression.",
    ),
    (
        "code",
        'words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "the"]',
    ),
    (
        "code",
        "%%serverless --cpus 0.25 --name word-count\n"
        "import os\n"
        "from collections import Counter\n\n"
        "counts = Counter(words)\n"
        'print(f"counted {len(words)} words in process {os.getpid()}")\n'
        "counts.most_common(3)",
    ),
    (
        "code",
        "# `counts` was assigned on the replica by the cell above and came back here\n"
        'counts["the"]  # noqa: F821',
    ),
    (
        "md",
        "## A remote function and `map`\n\n"
        "Calls spread over up to `max_replicas` replicas; results come back in input order.",
    ),
    (
        "code",
        "@nbs.remote(cpus=0.25, max_replicas=2)\n"
        "def slow_square(x):\n"
        "    import time\n\n"
        "    time.sleep(0.05)\n"
        "    return x * x\n\n\n"
        "print(slow_square(7))\n"
        "squares = list(slow_square.map(range(40)))\n"
        "squares[:10]",
    ),
    (
        "md",
        "## A stateful remote class\n\n"
        "`__init__` runs once per replica (its cold start); public methods run remotely.",
    ),
    (
        "code",
        "@nbs.remote(cpus=0.25, max_replicas=1)\n"
        "class Accumulator:\n"
        "    def __init__(self, start):\n"
        "        self.total = start\n\n"
        "    def add(self, k):\n"
        "        self.total += k\n"
        "        return self.total\n\n\n"
        "acc = Accumulator(100)\n"
        "[acc.add(k) for k in (1, 2, 3)]",
    ),
    ("md", "## What it cost\n\nPer-function numbers, then the live dashboard."),
    (
        "code",
        "s = slow_square.stats()\n"
        "print(\n"
        "    f\"{s['invocations']} calls, p50 {s['p50_ms']:.1f} ms, \"\n"
        "    f\"peak {s['peak_replicas']} replicas, cost ≈ ${s['cost']:.2e} (estimate)\"\n"
        ")",
    ),
    ("code", "%serverless status"),
]


def main() -> Path:
    return write_notebook(CELLS, Path(__file__).with_name("quickstart.ipynb"))


if __name__ == "__main__":
    print(main())
