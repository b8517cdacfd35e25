"""The activations family: what the network computes on inputs."""

from ..core.hooks import capture
from ..core.layers import last_hidden, stages
from .ablate import Ablation, ablate, ablated_logits, class_selectivity
from .embed import Embedding, embed, embed_features, features, knn_accuracy, trustworthiness
from .maps import embedding_layers, maps
from .neighbors import Neighbors, neighbors
from .patches import TopPatches, top_patches
from .statistics import LayerStatistics, statistics

__all__ = ["capture", "maps", "stages", "last_hidden", "embedding_layers", "statistics", "LayerStatistics",
           "top_patches", "TopPatches", "features", "embed", "embed_features", "Embedding", "knn_accuracy",
           "trustworthiness", "neighbors", "Neighbors", "ablate", "Ablation", "class_selectivity",
           "ablated_logits"]
