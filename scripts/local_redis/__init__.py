"""Local Redis processes started from the `redis-server` binary: a Sentinel topology and a Cluster.

Used by `make up` (scripts/ensure_services.py), the fault tests and the benchmarks; nodes.py is their
common part (daemonized processes with pid files, started and stopped by this code alone).
"""
