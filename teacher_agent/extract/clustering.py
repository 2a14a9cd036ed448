"""Unsupervised concepts: clusters of hidden states, named by their dominant property.

For every layer we cluster the probe split's standardised read-out states
(k-means for several k, or spectral clustering) without looking at labels.
Each cluster is an unsupervised concept; we name it after the labelled concept
whose indicator it matches best (balanced accuracy of "in the cluster" as a
predictor of the label or of its negation). To compare with the other
extractors, every labelled concept then takes the best-matching cluster (chosen
on the selection part of the probe split), and its read-out is the hyperplane
halfway between the cluster's centroid and the centroid of the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans, SpectralClustering  # type: ignore[import-untyped]

from m2kt.ml.metrics import balanced_accuracy
from m2kt.ml.seed import derive_seed
from teacher_agent.extract.base import (
    ExtractionContext,
    ExtractionResult,
    register_extractor,
)
from teacher_agent.extract.probing import split_index

__all__ = ["ClusteringExtractor", "cluster_members"]

logger = logging.getLogger(__name__)


def cluster_members(x: torch.Tensor, k: int, algorithm: str, seed: int) -> torch.Tensor:
    """Cluster ``[N, d]`` states into ``k`` groups; returns a ``[N, k]`` 0/1 membership matrix."""
    data = x.double().numpy()
    if algorithm == "kmeans":
        assign = KMeans(n_clusters=k, n_init=4, random_state=seed % 2**32).fit_predict(data)
    elif algorithm == "spectral":
        assign = SpectralClustering(
            n_clusters=k, affinity="nearest_neighbors", n_neighbors=15, random_state=seed % 2**32
        ).fit_predict(data)
    else:
        raise ValueError(f"ClusteringExtractor.algorithm must be 'kmeans' or 'spectral', got {algorithm!r}")
    return torch.from_numpy(np.eye(k, dtype=np.int64)[assign])  # [N, k]


def _match(members: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best signed match of clusters to concepts.

    members: ``[N, C]``; labels: ``[N, K]``. Returns ``score [C, K]`` (balanced accuracy of the
    better of "member => concept" and "member => not concept") and ``sign [C, K]`` (+1 or -1).
    """
    c, k = members.shape[1], labels.shape[1]
    m = members.unsqueeze(2).expand(-1, c, k)  # [N, C, K]
    y = labels.unsqueeze(1).expand(-1, c, k)  # [N, C, K]
    n = members.shape[0]
    bacc = balanced_accuracy(m.reshape(n, c * k), y.reshape(n, c * k)).view(c, k)  # [C, K]
    return torch.maximum(bacc, 1 - bacc), torch.where(bacc >= 0.5, 1.0, -1.0)


@dataclass
class ClusteringExtractor:
    """Clusters per layer as unsupervised concepts, matched to the labelled ones for comparison.

    Args:
        ks: Cluster counts tried per layer (all clusters of all ks are candidates).
        algorithm: ``"kmeans"`` or ``"spectral"``.
        select_frac: Share of the probe split used to pick each concept's cluster.
    """

    ks: tuple[int, ...] = (2, 3, 4, 6, 8)
    algorithm: str = "kmeans"
    select_frac: float = 0.25
    name: str = "clustering"

    def extract(self, ctx: ExtractionContext) -> ExtractionResult:
        states, labels = ctx.probe_states, ctx.probe_labels  # [N, L, d], [N, K]
        _, sel_idx = split_index(len(states), self.select_frac, ctx.seed)
        n_layers, d, n_concepts = states.shape[1], states.shape[2], labels.shape[1]
        best_score = torch.full((n_concepts,), -1.0)
        layers = torch.zeros(n_concepts, dtype=torch.long)
        directions, biases = torch.zeros(n_concepts, d), torch.zeros(n_concepts)
        protos = torch.zeros(n_concepts, 2, d)
        layer_scores = torch.zeros(n_layers, n_concepts)  # [L, K]
        named: list[dict[str, object]] = []
        for layer in range(n_layers):
            x = states[:, layer]  # [N, d]
            z = (x - x.mean(0)) / x.std(0).clamp(min=1e-4)  # [N, d]
            members = torch.cat(
                [cluster_members(z, k, self.algorithm, derive_seed(ctx.seed, f"cluster.{layer}.{k}")) for k in self.ks],
                dim=1,
            )  # [N, C]
            score, sign = _match(members[sel_idx], labels[sel_idx])  # [C, K]
            layer_scores[layer] = score.max(0).values
            full_score, _ = _match(members, labels)
            for c in range(members.shape[1]):
                k = int(full_score[c].argmax())
                named.append(
                    {
                        "layer": layer,
                        "cluster": c,
                        "size": int(members[:, c].sum()),
                        "dominant": ctx.concepts[k].key,
                        "match": float(full_score[c, k]),
                    }
                )
            for k in (score.max(0).values > best_score).nonzero().squeeze(1).tolist():
                c = int(score[:, k].argmax())
                inside = members[:, c].bool()
                centre_in, centre_out = x[inside].mean(0), x[~inside].mean(0)  # [d], [d]
                w = (centre_in - centre_out) * sign[c, k]  # points towards "concept holds"
                directions[k] = w
                biases[k] = -float(w @ (centre_in + centre_out) / 2)
                protos[k] = (
                    torch.stack([centre_out, centre_in]) if sign[c, k] > 0 else torch.stack([centre_in, centre_out])
                )
                layers[k], best_score[k] = layer, score[c, k]
        return ctx.finish(
            self.name,
            layers,
            directions,
            biases,
            protos,
            layer_scores,
            extras={"clusters": named, "algorithm": self.algorithm},
        )


register_extractor("clustering", ClusteringExtractor)
