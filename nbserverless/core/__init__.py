"""The kernel-side runtime: session, pools, scaling policy, replicas, warm stock, cluster."""
