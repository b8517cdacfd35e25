"""The activations family: what the network computes on inputs."""

from ..core.hooks import capture
from ..core.layers import last_hidden, stages
from .ablate import Ablation, ablate, ablated_logits, class_selectivity
from .dissect import DissectionResult, dissect
from .embed import Embedding, embed, embed_features, features, grid_cells, knn_accuracy, swiss_roll, trustworthiness
from .evolution import Evolution, evolution
from .invariance import Invariance, invariance, transformed
from .maps import embedding_layers, maps
from .neighbors import Neighbors, neighbors
from .patches import TopPatches, top_patches
from .statistics import LayerStatistics, statistics

__all__ = ["capture", "maps", "stages", "last_hidden", "embedding_layers", "statistics", "LayerStatistics",
           "top_patches", "TopPatches", "features", "embed", "embed_features", "Embedding", "knn_accuracy",
           "trustworthiness", "neighbors", "Neighbors", "ablate", "Ablation", "class_selectivity",
           "ablated_logits", "dissect", "DissectionResult", "invariance", "Invariance", "transformed",
           "evolution", "Evolution", "swiss_roll", "grid_cells"]
