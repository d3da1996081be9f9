"""What dmd is about, with no I/O: entities and statuses, ids, campaigns and send windows,
provider events, templates, the URL policy and the error tree. Imports nothing else of dmd."""
