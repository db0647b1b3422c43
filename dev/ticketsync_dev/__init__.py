"""Development tooling for ticketsync, never deployed: the ServiceNow emulator, the local stack and sample data.

Runtime code (``plugins/ticketsync``) never imports this package; ``tests/test_import_boundary.py`` checks it.
"""
