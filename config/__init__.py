"""Configuration of dmd: the profiles (``local.env``, ``aws.env``) and the Celery configuration."""
