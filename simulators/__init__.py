"""Provider simulators: the HTTP APIs of Bitly v4 (and later the SMS provider, TM Discovery,
TM Accounts), for development, tests and benchmarks. They implement the providers' wire
APIs, not dmd's client interfaces, so the real clients are what gets exercised.
"""
