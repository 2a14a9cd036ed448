"""One revision per schema change; hand-reviewed, never edited after merge."""
