"""Clients of the external HTTP APIs: Bitly v4, the SMS provider, TM Discovery v2, TM Accounts.
Each sits behind a small interface; the simulators implement the same HTTP APIs."""
