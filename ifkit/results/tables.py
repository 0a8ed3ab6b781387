"""The schema of every results table the kit writes (``SCHEMAS[file name]``), checked on every read and write.

Columns and values come from the experiments that write them (``ifkit/experiments/*``: their ``KEY``,
``REQUIRED`` and method lists) and from the committed ``results/*.csv``; tests/test_results.py checks that
every experiment's keys, required columns and values are accepted here and that every committed table passes.
A new method, variant, task or style goes into the sets below in the same change that first writes it
(``ResultsTable.add`` refuses a row its schema does not accept, naming the column).
"""

from __future__ import annotations

from .schema import Col, Schema

# ifkit.METHODS (tests/test_results.py checks the two agree) and the experiments' own baselines and references
METHOD_NAMES = ("loss", "graddot", "gradcos", "tracin", "if-exact", "if-cg", "if-lissa", "datainf", "self-if", "gex",
                "ekfac", "vm", "fvm", "cleanlab", "gradnorm", "refit", "pred", "noisy", "remove", "clean",
                "ifkit-clean", "ifkit-clean-vm")
# a method, then what changes how it is run (-early: an early checkpoint; -best-val: the checkpoint of lowest
# validation loss, ifkit.clean; -sam: SAM as the flat optimiser; -sval: given the clean validation set S_val as
# training data), then @theta~: measured at VM's (or FVM's) theta~ (fine-tuned from that checkpoint)
METHOD_PATTERN = rf"(?:{'|'.join(METHOD_NAMES)})(?:-early|-best-val|-sam|-sval)?(?:@theta~|@fvm-theta~)?"
STYLES = ("plain", "framed", "dotted", "gridded", "stamped", "hatched", "speckle", "inverted", "outlined", "blurred",
          "striped", "checker", "flipped")

STR, FLOAT, INT, BOOL = Col("str"), Col("float"), Col("int"), Col("bool")
SHARE = Col("float", lo=0.0, hi=1.0)  # AUCs, accuracies, fractions
COUNT = Col("int", lo=0)
SECONDS = Col("float", lo=0.0)
METHOD = Col("str", pattern=METHOD_PATTERN)
DATASET = Col("str", values=("digits", "fashion", "mixture"))
MODEL = Col("str", values=("mlp", "cnn"))  # the architecture of a detection / relabel setting
NOISE = Col("str", values=("none", "symmetric", "asymmetric", "hard"))
MODE = Col("str", pattern=r"[a-z][a-z0-9_-]*")  # "fast", "full"; tests write their own label
VARIANT = Col("str", values=("protocol", "harder", "protocol-init", "harder-init"))  # -init: LoRA init, no fine-tuning
STYLE = Col("str", values=STYLES)

_SETTING = {"dataset": DATASET, "noise": NOISE, "rate": SHARE, "seed": COUNT}
_DETECTION = {"auc": SHARE, "ap": SHARE, "recall_at_10pct": SHARE, "seconds": SECONDS, "fit_flipped": SHARE}

# The counterfactual tests' tables (gen-lds, gen-lds-image): one "lds" row (k = 0) or "removal" row per k
_LDS_KEY = ("task", "variant", "seed", "method", "measure", "k")
_LDS_REQUIRED = ("value", "low", "high")
_LDS_COLUMNS = {"variant": VARIANT, "seed": COUNT, "method": METHOD, "measure": Col("str", values=("lds", "removal")),
                "k": COUNT, "value": FLOAT, "low": FLOAT, "high": FLOAT, "auc": SHARE, "recall": SHARE,
                "n_subsets": COUNT, "n_queries": COUNT, "alpha": SHARE, "increase": FLOAT, "random_increase": FLOAT,
                "same_class": SHARE, "loss_before": FLOAT, "mode": MODE, "seconds": SECONDS,
                **{f"vs_{r}{e}": FLOAT for r in ("tracin", "datainf") for e in ("", "_low", "_high")}}

SCHEMAS: dict[str, Schema] = {
    "detection.csv": Schema(
        key=("dataset", "model", "noise", "rate", "seed", "method", "n_val"),
        required=("auc", "ap", "recall_at_10pct"),
        columns={**_SETTING, "model": MODEL, "method": METHOD, "n_val": COUNT, **_DETECTION, "n_train": COUNT, "train_acc": SHARE,
                 "val_acc": SHARE, "test_acc": SHARE, "early_epoch": COUNT, "early_test_acc": SHARE}),
    "detection_dynamics.csv": Schema(
        key=("dataset", "noise", "rate", "seed", "kind", "step", "method"), required=("auc",),
        columns={**_SETTING, "kind": Col("str", values=("training", "flat")), "step": COUNT, "method": METHOD,
                 "auc": SHARE, "val_acc": SHARE, "fit_flipped": SHARE, "clean_std": FLOAT,
                 "clean_abs_median": FLOAT, "noisy_abs_median": FLOAT}),
    "relabel.csv": Schema(
        key=("dataset", "model", "noise", "rate", "seed", "method"), required=("retrain_test_acc",),
        columns={**_SETTING, "model": MODEL, "method": METHOD, "flagged_by": METHOD, "k": COUNT, "precision": SHARE,
                 "relabel_acc": SHARE, "relabel_acc_flagged": SHARE, "agree_theta_tilde": SHARE,
                 "agree_fvm_theta_tilde": SHARE, "agree_pipeline_theta_tilde": SHARE, "changed": SHARE, "seconds": SECONDS, "retrain_test_acc": SHARE,
                 "clean_bound": FLOAT, "n_train": COUNT}),
    "ablation.csv": Schema(
        key=("dataset", "noise", "rate", "seed", "factor", "value", "method"), required=("auc",),
        columns={**_SETTING, "factor": Col("str", values=("n_val", "flat_steps", "damping", "hidden")),
                 "value": FLOAT, "method": METHOD, **_DETECTION}),
    "theory.csv": Schema(
        key=("seed", "n_train", "checkpoint", "gamma", "method"), required=("sign_error", "bound", "val_loss"),
        columns={"trajectory": Col("str", values=("training", "l2-path")),
                 "checkpoint": Col("str", pattern=r"train-step-\d+|l2-\d(?:\.\d+)?e[+-]\d+"), "step": INT,
                 "n_train": COUNT, "n_val": COUNT, "n_loo": COUNT, "noise_rate": SHARE, "seed": COUNT,
                 "gamma": Col("float", lo=0.0), "method": METHOD, "val_loss": FLOAT, "R_gamma": FLOAT,
                 "sharpness": FLOAT, "sharpness_one_step": FLOAT, "perturbation_norm": FLOAT, "grad_norm": FLOAT,
                 "top_eig": FLOAT, "trace": FLOAT, "mu": FLOAT, "bound": FLOAT, "sign_error": SHARE,
                 "sign_error_above_mu": SHARE, "n_above_mu": COUNT, "pearson": Col("float", lo=-1.0, hi=1.0),
                 "err_range": FLOAT, "loo_shift": FLOAT, "sharpness_at_shift": FLOAT, "weight_decay": FLOAT,
                 "seconds": SECONDS}),
    # gen-text (tasks sentence, math) and gen-image (task style) share it
    "generation.csv": Schema(
        key=("task", "variant", "seed", "method"), required=("auc", "recall"),
        columns={"task": Col("str", values=("sentence", "math", "style")), "variant": VARIANT, "seed": COUNT,
                 "method": METHOD, "mode": MODE, "prefix": Col("str", values=("name", "cue")),
                 "grad_loss": Col("str", values=("prompt", "answer", "full")), "exact_match": SHARE,
                 "train_loss": Col("str", values=("answer", "full")), "recall_abs": SHARE, "finetuned": BOOL,
                 "exact_match_base": SHARE, "n_train": COUNT, "n_queries": COUNT, "n_lora_params": COUNT,
                 "setup_seconds": SECONDS, "words": STR, "auc": SHARE, "recall": SHARE, "precision5": SHARE,
                 "seconds": SECONDS, "n_params": COUNT, "n_styles": COUNT, "style_prompt": BOOL}),
    # gen-text-vm: VM/FVM's sensitivity on the harder text benchmark (one row per setting)
    "generation_text_vm.csv": Schema(
        key=("task", "variant", "seed", "setting"), required=("auc", "recall"),
        columns={"task": Col("str", values=("sentence", "math")), "variant": VARIANT, "seed": COUNT,
                 "setting": Col("str", pattern=r"[a-z0-9][a-z0-9 ._=+/-]*"), "method": METHOD, "factor": STR,
                 "mode": MODE, "auc": SHARE, "recall": SHARE, "recall_abs": SHARE, "precision5": SHARE,
                 "seconds": SECONDS}),
    "generation_text_examples.csv": Schema(
        key=("task", "variant", "seed", "query", "method", "rank"), required=("text",),
        columns={"task": Col("str", values=("sentence", "math")), "variant": VARIANT, "seed": COUNT,
                 "query": COUNT, "method": METHOD, "rank": COUNT, "text": STR, "same_class": BOOL,
                 "influence": FLOAT}),
    "generation_image_examples.csv": Schema(
        key=("variant", "seed", "method", "query", "rank"), required=("train_index",),
        columns={"variant": VARIANT, "seed": COUNT, "method": METHOD, "query": COUNT, "query_style": STYLE,
                 "rank": COUNT, "train_index": COUNT, "train_style": STYLE, "score": FLOAT, "mode": MODE,
                 "dataset": DATASET, "image_size": COUNT}),
    "generation_image_styles.csv": Schema(
        key=("variant", "seed", "style"), required=("nelbo_lora",),
        columns={"seed": COUNT, "style": STYLE, "n": COUNT, "classifier_acc": SHARE, "nelbo_base": FLOAT,
                 "recon_acc_base": SHARE, "sample_acc_base": SHARE, "nelbo_lora": FLOAT, "recon_acc_lora": SHARE,
                 "sample_acc_lora": SHARE, "variant": VARIANT, "mode": MODE}),
    # benchmarks/choose_score.py: which score ifkit.clean ranks by, on settings nobody tuned on
    "choose_score.csv": Schema(
        key=("setting", "noise", "seed", "score"), required=("auc",),
        columns={"setting": Col("str", pattern=r"[a-z]+-[a-z]+"), "noise": NOISE, "seed": COUNT,
                 "score": Col("str", values=("vm", "fvm", "loss", "gradnorm", "loss-checkpoint")), "auc": SHARE,
                 "dataset": DATASET, "n_train": COUNT, "n_val": COUNT, "checkpoint": COUNT, "val_acc": SHARE,
                 "relabel_differs": SHARE,
                 "relabel_acc_vm": SHARE, "relabel_acc_argmax": SHARE, "candidates_seconds": SECONDS,
                 "clean_seconds": SECONDS}),
    # gen-lds: counterfactual tests of the text benchmarks ("lds" rows have k = 0; "removal" rows one per k)
    "generation_lds.csv": Schema(
        key=_LDS_KEY, required=_LDS_REQUIRED,
        columns={"task": Col("str", values=("sentence", "math")), **_LDS_COLUMNS,
                 "grad_loss": Col("str", values=("prompt", "answer", "full"))}),
    # gen-lds-image: the same tests on the image benchmark (task "style")
    "generation_lds_image.csv": Schema(
        key=_LDS_KEY, required=_LDS_REQUIRED, columns={"task": Col("str", values=("style",)), **_LDS_COLUMNS}),
    # ifkit bench (a failed measurement keeps its row with empty timings, retried on the next run)
    "bench.csv": Schema(
        key=("part", "model", "method", "n_train"),
        columns={"part": Col("str", values=("throughput", "cache", "methods", "clean")),
                 "model": Col("str", values=("mlp", "cnn")), "method": Col("str", pattern=r"[a-z][a-z0-9@~+-]*"),
                 "n_train": COUNT, "n_params": COUNT, "seconds": SECONDS, "peak_mb": FLOAT, "base_mb": FLOAT,
                 "extra_mb": FLOAT, "repeats": COUNT, "seconds_min": SECONDS, "seconds_max": SECONDS,
                 "examples_per_s": FLOAT, "ratio": FLOAT, "fast": BOOL, "note": STR}),
}


def schema_for(name: str, key: tuple[str, ...], required: tuple[str, ...]) -> Schema:
    """The schema of the table file ``name`` opened with ``key`` and ``required``; a file without a schema of
    its own (a user's table) gets one that only asks for those columns to be filled."""
    return SCHEMAS.get(name, Schema(key)).for_table(key, required)


__all__ = ["METHOD_NAMES", "METHOD_PATTERN", "SCHEMAS", "STYLES", "schema_for"]
