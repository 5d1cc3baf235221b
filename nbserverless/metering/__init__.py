"""Numbers: counters, latency sketches, replica lifetimes, cost. No UI."""
