"""HTTP clients of the external services (Bitly, and later the SMS provider, Discovery, Accounts)."""
