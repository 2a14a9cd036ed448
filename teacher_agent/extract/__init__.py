"""Concept extractors (probing, clustering, gradient attribution) behind one registry.

Importing this package registers the three built-in extractors.
"""

from teacher_agent.extract.attribution import AttributionExtractor
from teacher_agent.extract.base import (
    ConceptDirection,
    ExtractionContext,
    ExtractionResult,
    Extractor,
    available_extractors,
    get_extractor,
    register_extractor,
)
from teacher_agent.extract.clustering import ClusteringExtractor
from teacher_agent.extract.probing import ProbingExtractor

__all__ = [
    "AttributionExtractor",
    "ClusteringExtractor",
    "ConceptDirection",
    "ExtractionContext",
    "ExtractionResult",
    "Extractor",
    "ProbingExtractor",
    "available_extractors",
    "get_extractor",
    "register_extractor",
]
