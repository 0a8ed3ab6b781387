"""The front door end to end: `ifkit reproduce all --fast --jobs 2` then `ifkit figures` on a fresh folder.

Every experiment runs at its FAST size in two worker processes (~45 s on 2 cores), writes its CSV with the
DESIGN.md columns, and every figure producer draws from them.
"""

import subprocess
import sys

import pandas as pd

SCHEMAS = {
    "detection.csv": ["dataset", "noise", "rate", "seed", "method", "auc", "ap", "recall_at_10pct", "seconds"],
    "relabel.csv": ["dataset", "noise", "rate", "seed", "method", "relabel_acc", "retrain_test_acc"],
    "generation.csv": ["task", "seed", "method", "auc", "recall"],
    "theory.csv": ["val_loss", "sharpness", "bound", "sign_error", "method"],
    "ablation.csv": ["factor", "value", "method", "auc"],
    "detection_dynamics.csv": ["kind", "step", "method", "auc"],
}


def test_reproduce_all_fast_then_figures(tmp_path):
    out, figs = tmp_path / "results", tmp_path / "figures"
    run = subprocess.run([sys.executable, "-m", "ifkit.cli", "reproduce", "all", "--fast", "--jobs", "2", "--out",
                          str(out)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, columns in SCHEMAS.items():
        df = pd.read_csv(out / name)
        assert len(df) > 0 and set(columns) <= set(df.columns), (name, list(df.columns))
    assert set(pd.read_csv(out / "generation.csv").task) == {"sentence", "math", "style"}
    # the work a rerun resumes from (tests/test_resume_cache.py): networks, relabel's flags, leave-one-out refits
    kept = {p.parent.name for p in (out / ".cache").glob("*/*.pt")}
    assert {"detection", "relabel", "theory"} <= kept, kept
    assert not list((out / ".cache").glob("*/*.tmp")) and not list((out / ".cache").glob("*/*.bad"))
    run = subprocess.run([sys.executable, "-m", "ifkit.cli", "figures", "--results", str(out), "--out", str(figs)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    drawn = {p.stem for p in figs.glob("*.png")}
    assert {"detection_table", "fig2_auc_vs_val_acc", "fig3_flat_finetuning", "relabel", "ablation",
            "generation_auc", "theory_bound"} <= drawn, drawn
