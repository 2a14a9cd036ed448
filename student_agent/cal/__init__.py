"""The Concept Alignment Layer: config, forms (registry), pure loss terms, checkpoints."""
