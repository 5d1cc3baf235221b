"""What runs on the cluster. Imports nothing from the kernel side."""
