"""Business rules: the ordered publish checks, the hash-chained log, reports and quarantine."""
