"""SQL only. Every function takes a keyword-only `session`; rules live in `broker.services`."""
