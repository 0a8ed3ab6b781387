"""Every colour and display order of ifkit's figures and notebook plots, in one place.

``METHOD_PALETTE`` gives each influence method one colour used by every figure; VM and FVM (the paper's methods)
are the two warm colours, everything else is cool or grey. ``DETECTION_PALETTE`` adds the names that detection
and relabel results bring (variants, references, retraining baselines); ``FLAT_COLOURS`` the optimisers of the
flat fine-tuning. Pass ``palette(methods)`` or ``detection_palette(methods)`` to seaborn's ``palette=``, or ask
``method_colour(name)`` / ``detection_colour(name)`` for one name (variants such as "fvm (sam)" included).
"""

from __future__ import annotations

from collections.abc import Iterable

METHOD_PALETTE: dict[str, str] = {
    # baselines without curvature: greys and greens
    "loss": "#7f7f7f",
    "graddot": "#bcbd22",
    "gradcos": "#dbdb8d",
    "tracin": "#2ca02c",
    # classic influence (inverse-Hessian family): blues
    "if-exact": "#1f77b4",
    "if-cg": "#4a90c8",
    "if-lissa": "#9ecae1",
    "datainf": "#9467bd",
    "ekfac": "#17becf",
    # self-influence and ensembles
    "self-if": "#8c564b",
    "gex": "#e377c2",
    # non-influence baseline (confident learning)
    "cleanlab": "#000000",
    # the paper's methods: the only warm colours, always these two
    "vm": "#ff7f0e",
    "fvm": "#d62728",
}
METHOD_ORDER: tuple[str, ...] = tuple(METHOD_PALETTE)
FALLBACK_COLOUR = "#c7c7c7"  # a name no palette knows: neutral light grey

# Colours of the names that detection/relabel rows add to METHOD_PALETTE's: a variant keeps its method's hue (VM
# from the early-stopped model is a light VM orange, FVM with SAM a dark FVM red); the references are greys and
# black; controls at theta~ (names with "@") are hatched or dashed.
DETECTION_PALETTE: dict[str, str] = {
    "fvm-sam": "#8c1c13", "vm-early": "#fdae6b", "loss-early": "#525252",
    "vm-best-val": "#fd8d3c", "fvm-best-val": "#fb6a4a",  # ifkit.clean: VM/FVM at the best-S_val-loss checkpoint
    "refit": "#a63603", "pred@fvm-theta~": "#fcbba1",  # ifkit.clean then remove-and-retrain; FVM theta~ predicts
    "loss@theta~": "#a6a6a6", "gradnorm@theta~": "#8c6d31",
    "pred": "#636363", "pred@theta~": "#fdd0a2",  # relabel FVM's flags with a model's prediction
    "noisy": "#7f7f7f", "remove": "#1f77b4", "clean": "#000000",  # retraining references
}
PAPER_METHODS: tuple[str, ...] = ("vm", "fvm", "fvm-sam")
REFERENCE_METHODS: tuple[str, ...] = ("cleanlab", "loss-early", "vm-early", "loss@theta~", "gradnorm@theta~")
REFERENCE_COLOUR = "#525252"  # tick labels of the non-influence references
RELABEL_METHODS: tuple[str, ...] = ("if-lissa", "tracin", "gex", "vm", "fvm", "pred", "pred@theta~")
CLEANING_METHODS: tuple[str, ...] = ("noisy", "remove", "clean")  # retraining references of the relabel figure

# Display orders of the other categorical columns of the results.
NOISE_ORDER: tuple[str, ...] = ("symmetric", "asymmetric", "hard")
TRAJECTORY_ORDER: tuple[str, ...] = ("training", "l2-path")  # results/theory.csv
TASK_ORDER: tuple[str, ...] = ("sentence", "math", "style")  # results/generation.csv

# Labels and matches in image and text panels.
FLIPPED_COLOUR = "#d62728"  # red: a corrupted label, or a training example of another class / style
CLEAN_COLOUR = "#7f7f7f"  # grey: a clean label
HIT_COLOUR = "#2ca02c"  # green: the right label, or a training example of the query's class / style

# Colours of the flat fine-tuning optimisers: plain SGD reaches VM's theta~, LPF-SGD and SAM reach FVM's. VM and
# FVM keep their METHOD_PALETTE colours; SAM-FVM is a darker shade of FVM's red.
FLAT_COLOURS: dict[str, str] = {"sgd": "#ff7f0e", "lpf": "#d62728", "sam": "#8c1c13", "adam": "#ffbb78"}
# The three estimates of a validation-loss change in notebook 02, from classic influence (the if-exact blue) to
# the second-order term that VM/FVM are built on (the VM orange).
SPLIT_COLOURS: tuple[str, ...] = ("#1f77b4", "#17becf", "#ff7f0e")

# ``ifkit bench``: the ways of computing G @ v, and a method sequence with and without a shared GradCache.
BENCH_COLOURS: dict[str, str] = {"per-sample-grad": "#1f77b4", "factored-grads": "#ff7f0e", "jvp-dots": "#2ca02c",
                                 "batched-backward": "#c7c7c7", "score-graddot": "#d62728"}
CACHE_COLOURS: dict[str, str] = {"no-cache": "#c7c7c7", "grad-cache": "#9467bd"}


def palette(methods: Iterable[str]) -> dict[str, str]:
    """Colours for the given method names (unknown names get a neutral grey), for seaborn's ``palette=``."""
    return {m: METHOD_PALETTE.get(m, FALLBACK_COLOUR) for m in methods}


def detection_palette(methods: Iterable[str]) -> dict[str, str]:
    """``palette`` extended with the detection and relabel references (``DETECTION_PALETTE``)."""
    return {m: METHOD_PALETTE.get(m) or DETECTION_PALETTE.get(m, FALLBACK_COLOUR) for m in methods}


def method_order(methods: Iterable[str]) -> list[str]:
    """The distinct names in ``METHOD_ORDER`` order, then the names it does not know, sorted."""
    present = set(methods)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def detection_order(methods: Iterable[str]) -> list[str]:
    """Like ``method_order``, with the names of ``DETECTION_PALETTE`` after the methods."""
    known = [*METHOD_ORDER, *DETECTION_PALETTE]
    present = set(methods)
    return [m for m in dict.fromkeys(known) if m in present] + sorted(present - set(known))


def method_colour(name: str) -> str:
    """A method's colour, also for variants such as "fvm (sam)" or "fvm-lpf" and for optimiser names."""
    key = name.lower()
    if key in FLAT_COLOURS:
        return FLAT_COLOURS[key]
    if key.startswith("fvm") and "sam" in key:
        return FLAT_COLOURS["sam"]
    for method in sorted(METHOD_PALETTE, key=len, reverse=True):  # longest prefix first: "if-cg" before "if"
        if key == method or key.startswith((method + " ", method + "-", method + "(", method + "@")):
            return METHOD_PALETTE[method]
    return FALLBACK_COLOUR


def detection_colour(name: str) -> str:
    """The colour of a detection/relabel method or reference, as in figures/detection_table.png."""
    return METHOD_PALETTE.get(name) or DETECTION_PALETTE.get(name) or method_colour(name)


def is_control(name: str) -> bool:
    """Controls evaluated at another point (e.g. "loss@theta~"): drawn dashed or hatched."""
    return "@" in name


__all__ = ["BENCH_COLOURS", "CACHE_COLOURS", "CLEANING_METHODS", "CLEAN_COLOUR", "DETECTION_PALETTE",
           "FALLBACK_COLOUR", "FLAT_COLOURS", "FLIPPED_COLOUR", "HIT_COLOUR", "METHOD_ORDER", "METHOD_PALETTE",
           "NOISE_ORDER", "PAPER_METHODS", "REFERENCE_COLOUR", "REFERENCE_METHODS", "RELABEL_METHODS",
           "SPLIT_COLOURS", "TASK_ORDER", "TRAJECTORY_ORDER", "detection_colour", "detection_order",
           "detection_palette", "is_control", "method_colour", "method_order", "palette"]
