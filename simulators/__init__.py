"""Provider simulators: the HTTP APIs of Bitly v4, the SMS provider (with its delivery-status
stream), TM Discovery v2 and TM Accounts, for development, tests and benchmarks. They
implement the providers' wire APIs, not dmd's client interfaces, so the real clients are
what gets exercised. Each has configurable latency, error rate, timeouts and rate limit,
and counters the tests read (``/_sim/stats``).
"""
