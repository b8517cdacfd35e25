"""Turning tensors into pictures: normalisation for display, grids, PNG bytes.

matplotlib is imported on first use (``import underhood`` stays light). Figures are bare
``matplotlib.figure.Figure`` objects (:func:`render.subplots`): pyplot is never imported, so the
user's backend and open figures are left alone; a notebook shows a returned figure as usual.
"""

from .ablation import ablation_figure
from .attribution import (
           LABELS,
           STYLES,
           attribution_figure,
           curves_figure,
           gradient_line_figure,
           metric_table_figure,
           reduce_channels,
           render_map,
           strips_figure,
           top_cams_figure,
)
from .embedding import embedding_figure, neighbors_figure
from .figures import feature_maps_figure, filters_figure, image_grid, predictions_figure
from .render import figure_to_png, new_figure, normalize, save_figure, subplots, to_numpy_image, to_png
from .transfer import probe_figure
from .units import statistics_figure, top_patches_figure

__all__ = ["normalize", "to_numpy_image", "to_png", "figure_to_png", "save_figure", "subplots", "new_figure",
           "image_grid",
           "filters_figure", "feature_maps_figure", "predictions_figure",
           "render_map", "attribution_figure", "strips_figure", "metric_table_figure",
           "curves_figure", "STYLES", "LABELS", "top_patches_figure", "statistics_figure", "embedding_figure",
           "neighbors_figure", "ablation_figure", "probe_figure", "reduce_channels", "gradient_line_figure",
           "top_cams_figure"]
