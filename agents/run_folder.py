"""The run folder: the one owner of its format. agents/ppo_camal.py writes it; eval/ and experiments/ read it.

A run folder ``runs/ENV__EXP_NAME__SEED__TIME/`` holds:
    config.json           the run's arguments (agents/ppo_camal.py's Args, resolved)
    checkpoint.pt         weights, optimizer, RNG states, step counts (written atomically)
    attention_eval.json   eval/attention.py's result (alignment, faithfulness, occlusion)
    shift_eval.json       eval/shift.py's result (the background-shift test)
    returns.csv           eval/record.py's episodic returns (step, return), exported from tensorboard
A classifier run (agents/camal_classifier.py) has config.json and checkpoint.pt too, and:
    curves.csv            one row per epoch: losses, accuracies, relevance mass, images/s
    classifier_eval.json  eval/classifier.py's result
    events.out.tfevents.* tensorboard
"""

from __future__ import annotations

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
ATTENTION_EVAL = "attention_eval.json"
SHIFT_EVAL = "shift_eval.json"
RETURNS = "returns.csv"
CURVES = "curves.csv"
CLASSIFIER_EVAL = "classifier_eval.json"
