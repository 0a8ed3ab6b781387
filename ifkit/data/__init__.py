"""Offline data: image datasets (images), label-noise models (noise), the experiment split (splits) and the
generation tasks' text (text). The public names are re-exported here: ``from ifkit.data import make_split``."""

from .images import (
    DIGITS_CLASSES,
    FASHION_CLASSES,
    FASHION_MNIST_ROOT,
    balanced_indices,
    load_digits,
    load_fashion_mnist,
)
from .noise import (
    DIGITS_PAIRS,
    FASHION_PAIRS,
    NOISE_KINDS,
    Noisy,
    add_noise,
    asymmetric_noise,
    hard_noise,
    logistic_probs,
    symmetric_noise,
)
from .splits import Split, make_split

__all__ = ["DIGITS_CLASSES", "DIGITS_PAIRS", "FASHION_CLASSES", "FASHION_MNIST_ROOT", "FASHION_PAIRS", "NOISE_KINDS",
           "Noisy", "Split", "add_noise", "asymmetric_noise", "balanced_indices", "hard_noise", "load_digits",
           "load_fashion_mnist", "logistic_probs", "make_split", "symmetric_noise"]
