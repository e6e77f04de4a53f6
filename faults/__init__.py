"""Fault testing, Jepsen-style: record a history of operations under faults, then check it against the stores."""
