"""The query surface: the GraphQL endpoint (``dmd api``), event details from TM Discovery
with a 24 h Redis cache, and account profiles through the TM Accounts API."""
