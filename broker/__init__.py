"""The M2KT broker: verifies, stores and serves signed knowledge packets (docs/protocol.md v1)."""
