"""Side-by-side speed benchmarks of nbserverless against Ray and its peers.

Run ``python -m benchmarks [SCENARIO ...] [--rounds N] [--quick]``; see BENCHMARKS.md at the
repository root. Speed is measured here, never in pytest.
"""

SCENARIOS = [
    # first_call runs first: it starts fresh subprocesses with their own Ray cluster and is
    # least disturbed while the main process has no cluster of its own yet.
    "first_call",
    # metering runs in a Jupyter kernel of its own (its own embedded cluster): also early.
    "metering",
    "warm_call",
    "cold_start",
    "map_tiny",
    "map_work",
    "batch_inference",
    "scale_down",
    # scale_nodes starts its own autoscaling cluster (Ray's fake multi-node provider)
    "scale_nodes",
    # long (minutes): real arrivals of the Azure LLM inference traces; its options after the name
    "trace_replay",
]
