"""Function and class handles: calls, maps and batches turned into pool requests."""
