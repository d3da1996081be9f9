"""The operator's side: the ``dmd`` command, provisioning, dead-letter listing and replay, the
metrics server, the local stack, sale progress and the demo."""
