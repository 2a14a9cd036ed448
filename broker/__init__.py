"""The M2KT broker: verifies, stores and serves signed knowledge packets (PROTOCOL.md v1)."""
