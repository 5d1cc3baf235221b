"""Where the time of a tiny-item ``map`` goes, kernel side: ``python -m benchmarks.map_tiny_profile
[--n 200000] [--top 25]``.

Runs ``f.map(range(n))`` of a noop on two warm replicas (as the ``map_tiny`` scenario does) and
``multiprocessing.Pool(2).map`` over the same items in the same run, then prints:

- the CPU time of each kernel thread of the map (the consumer, the feeder that reads the input
  and sends chunks, the completion thread that takes replies), against the wall time;
- per-chunk round-trip accounting: items per chunk, time queued in the pool, dispatch to reply
  (transfer + replica), the replica's own execution time, and the kernel's handling of the reply;
- cProfile of each of those threads (top functions by own time).

This is a measurement aid, not a scenario: it runs nothing of the benchmark table.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import pstats
import statistics
import threading
import time

from ._common import CLUSTER, notebook_def, wait_until


def inc(x):
    return x + 1


class ThreadProfiles:
    """A cProfile per thread of ours (``nbs-*`` threads started from now on, plus this one)."""

    def __init__(self) -> None:
        self.profiles: dict[str, cProfile.Profile] = {}
        self.cpu: dict[str, float] = {}
        self._orig = threading.Thread.run

    def __enter__(self) -> ThreadProfiles:
        profiles, cpu, orig = self.profiles, self.cpu, self._orig

        def run(thread: threading.Thread) -> None:
            if not thread.name.startswith("nbs-"):
                return orig(thread)
            prof = profiles.setdefault(thread.name, cProfile.Profile())
            t0 = time.thread_time()
            prof.enable()
            try:
                return orig(thread)
            finally:
                prof.disable()
                cpu[thread.name] = cpu.get(thread.name, 0.0) + time.thread_time() - t0

        threading.Thread.run = run  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        threading.Thread.run = self._orig  # type: ignore[method-assign]

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds so far of every live ``nbs-*`` thread (and of finished ones)."""
        out = dict(self.cpu)
        for t in threading.enumerate():
            if t.name.startswith("nbs-") and t.ident is not None and t.is_alive():
                try:
                    clk = time.pthread_getcpuclockid(t.ident)
                    out[t.name] = time.clock_gettime(clk)
                except (OSError, AttributeError):
                    pass
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    n = args.n

    with ThreadProfiles() as tp:
        CLUSTER.ensure()
        nbs = CLUSTER.nbserverless()
        from nbserverless.handles import mapping

        nbs.config(prewarm=0)
        fn = notebook_def("def inc(x):\n    return x + 1\n")["inc"]
        f = nbs.remote(min_replicas=2, max_replicas=2, keep_alive=30, name="profile_map_inc")(fn)
        list(f.map(range(2_000), progress=False))  # replicas up and warm (untimed)
        pool = f._get_pool()
        wait_until(lambda: sum(r.state == "ready" for r in pool.reps.values()) >= 2, 60, 0.05)

        chunks: list[tuple] = []  # (n, t_submit, t_dispatch, exec_s, t_reply, handled_s)
        orig_on_done = mapping.MapRun._on_done

        def on_done(self, job, *a, **kw):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            orig_on_done(self, job, *a, **kw)
            chunks.append(
                (job.n, job.t_submit, job.t_dispatch, job.exec_s, t, time.perf_counter() - t)
            )

        mapping.MapRun._on_done = on_done  # type: ignore[method-assign]
        before = tp.thread_cpu()
        main_prof = cProfile.Profile()
        c0 = time.thread_time()
        t0 = time.perf_counter()
        main_prof.enable()
        out = list(f.map(range(n), progress=False))
        main_prof.disable()
        wall = time.perf_counter() - t0
        consumer_cpu = time.thread_time() - c0
        after = tp.thread_cpu()
        mapping.MapRun._on_done = orig_on_done  # type: ignore[method-assign]
    assert out == [x + 1 for x in range(n)], "wrong results"

    with multiprocessing.get_context("fork").Pool(2) as mp:
        mp.map(inc, range(2_000))
        t1 = time.perf_counter()
        mp_out = mp.map(inc, range(n))
        mp_wall = time.perf_counter() - t1
    assert mp_out == out

    print(
        f"\n{n:,} noop items: nbs map {wall:.3f} s ({n / wall:,.0f} items/s); "
        f"multiprocessing.Pool(2).map {mp_wall:.3f} s ({n / mp_wall:,.0f} items/s); "
        f"ratio {mp_wall / wall:.2f}x"
    )
    print("\nkernel CPU by thread during the map (s):")
    print(f"  consumer (this thread, list(f.map(...)))   {consumer_cpu:.3f}")
    for name in sorted(after):
        d = after[name] - before.get(name, 0.0)
        if d > 0.0005:
            print(f"  {name:40s}   {d:.3f}")

    if chunks:
        sizes = [c[0] for c in chunks]
        queued = [c[2] - c[1] for c in chunks if c[2]]
        trip = [c[4] - c[2] for c in chunks if c[2]]
        execs = [c[3] for c in chunks]
        handled = [c[5] for c in chunks]

        def ms(xs: list[float]) -> str:
            return f"median {statistics.median(xs) * 1e3:7.2f} ms, total {sum(xs):.3f} s"

        print(
            f"\n{len(chunks)} chunks, items per chunk median {statistics.median(sizes):,.0f} "
            f"(min {min(sizes):,}, max {max(sizes):,})"
        )
        print(f"  queued in the pool          {ms(queued)}")
        print(f"  dispatch -> reply handled   {ms(trip)}")
        print(f"  replica execution           {ms(execs)}")
        print(f"  kernel: map's reply handling {ms(handled)}")
        print("  (dispatch -> reply minus execution = transfer, Ray and pickling both ways)")

    def top(prof: cProfile.Profile, title: str) -> None:
        s = io.StringIO()
        st = pstats.Stats(prof, stream=s)
        if not st.stats:  # type: ignore[attr-defined]
            return
        st.sort_stats("tottime").print_stats(args.top)
        print(f"\n--- cProfile: {title} (by own time) ---")
        print("\n".join(s.getvalue().splitlines()[4:]))

    top(main_prof, "consumer thread")
    for name, prof in tp.profiles.items():
        top(prof, name)
    CLUSTER.stop()


if __name__ == "__main__":
    main()
