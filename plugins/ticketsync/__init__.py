"""ticketsync: pending ticket requests in a bank's database become ServiceNow FSO cases, exactly once."""

__version__ = "0.1.0"
