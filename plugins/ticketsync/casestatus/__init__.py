"""Status back: the state of each created case flows back to its source row (issue 13, docs/case-status.md)."""
