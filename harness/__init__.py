"""Process harness shared by tests, benchmarks and scripts: free ports, waits, granian, redis-server, Celery, nginx.

Nothing here imports pytest: the test tiers bind it to their run in tests/fixtures/, the benchmarks in bench/.
"""
