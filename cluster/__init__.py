"""Cluster kit: Ray, DeepSpeed, Slurm and Prometheus/Grafana files, and the code that validates them."""
