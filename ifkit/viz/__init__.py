"""ifkit's plots and figures: every colour in ``palette``, notebook plots by topic, and the producers of
``ifkit figures``.

    from ifkit.viz import plot_roc, plot_suspicious            # notebook plots: arrays in, a Figure out
    from ifkit.viz.figures_detection import detection_table     # results/detection.csv -> figures/detection_table.png
    from ifkit.viz import palette                               # METHOD_PALETTE, detection_palette(), ...

Modules: ``basics`` (notebooks 00, 01), ``flat`` (02, 04), ``theory`` (03), ``detection`` (05, 06), ``relabel``
(06), ``generation`` (07, 08); ``figures`` is the registry of ``ifkit figures`` (``FIGURES``, ``register``,
``save_all``) and ``figures_*`` its producers by topic. Importing this package registers every producer.
"""

from . import figures_bench, figures_detection, figures_generation, figures_relabel, figures_theory  # noqa: F401
from .basics import plot_agreement, plot_damping_effect, plot_score_distributions, plot_suspicious
from .detection import (
    plot_detection_setting,
    plot_hurt_queries,
    plot_noise_models,
    plot_roc,
    plot_suggested_labels,
)
from .figures import FIGURES, register, save_all
from .flat import (
    plot_flat_trajectories,
    plot_influence_along_finetuning,
    plot_loss_change_split,
    plot_method_aucs,
    plot_parameter_change,
    plot_snapshot_scores,
    plot_taylor_terms,
)
from .generation import plot_top_examples, plot_top_images
from .relabel import plot_relabel_candidates
from .theory import plot_bound, plot_sharpness_vs_radius

__all__ = ["FIGURES", "plot_agreement", "plot_bound", "plot_damping_effect", "plot_detection_setting",
           "plot_flat_trajectories", "plot_hurt_queries", "plot_influence_along_finetuning",
           "plot_loss_change_split", "plot_method_aucs", "plot_noise_models", "plot_parameter_change",
           "plot_relabel_candidates", "plot_roc",
           "plot_score_distributions", "plot_sharpness_vs_radius", "plot_snapshot_scores", "plot_suggested_labels",
           "plot_suspicious", "plot_taylor_terms", "plot_top_examples", "plot_top_images", "register", "save_all"]
