"""Optimisation: training loops (train), full-batch fits and retraining oracles (fullbatch), SAM and LPF-SGD
(sam), and the fine-tuning on S_val that gives VM/FVM their theta~ (flat_finetune)."""
