"""The transfer benchmark of METHOD.md: M2KT against KD and latent translation on the same frozen students."""
