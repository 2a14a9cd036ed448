"""The transfer benchmark of docs/method.md: M2KT against KD and latent translation on the same frozen students."""
