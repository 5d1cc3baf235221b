"""What remote code prints shows up in the caller's output, live for long calls."""

from __future__ import annotations

import sys
import time

import nbserverless as nbs


class Recorder:
    def __init__(self):
        self.writes: list[tuple[float, str]] = []

    def write(self, text):
        self.writes.append((time.monotonic(), text))
        return len(text)

    def flush(self):
        pass

    def text(self):
        return "".join(t for _, t in self.writes)


def test_prints_reach_the_callers_streams(ray_cluster, capsys):
    @nbs.remote(cpus=0.1)
    def talk(x):
        print(f"hello {x}")
        print("warning!", file=sys.stderr)
        return x

    assert talk(5) == 5
    out, err = capsys.readouterr()
    assert "hello 5" in out and "warning!" in err


def test_long_calls_stream_output_while_running(ray_cluster, monkeypatch):
    @nbs.remote(cpus=0.1)
    def slow_talk():
        print("starting", flush=True)
        time.sleep(2.0)
        print("done")
        return 1

    rec = Recorder()
    monkeypatch.setattr(sys, "stdout", rec)
    slow_talk()  # warm, so the timing below is the call itself
    rec.writes.clear()
    assert slow_talk() == 1
    returned = time.monotonic()
    text = rec.text()
    assert text.index("starting") < text.index("done")
    first = next(t for t, s in rec.writes if "starting" in s)
    assert returned - first > 1.0  # "starting" arrived while the call still ran


def test_map_output_comes_back_with_results(ray_cluster, capsys):
    @nbs.remote(cpus=0.1)
    def shout(x):
        print(f"item-{x}")
        return x

    assert list(shout.map(range(5), progress=False)) == list(range(5))
    out = capsys.readouterr().out
    assert all(f"item-{i}" in out for i in range(5))
