"""The methods a study compares: label (as config.json and the records write it) <-> trainer flags, defined once.

Both trainers (agents/ppo_camal.py, agents/camal_classifier.py) label their runs with ``method_label``; the
study runner (experiments/study.py) turns a label back into flags with ``METHODS``.
"""

# lambda of each attention loss when --camal-coef is not given: the largest value that did not slow
# learning on basic in its sweep (docs/agent.md: choice of lambda)
DEFAULT_ATTENTION_COEF = {"none": 0.0, "camal": 0.1, "rrr": 0.01, "entropy": 1.0}

# method label -> the flags of the trainer that make it
METHODS: dict[str, list[str]] = {
    "vanilla": ["--attn-loss", "none"],
    "camal": ["--attn-loss", "camal"],
    "camal-random": ["--attn-loss", "camal", "--mask-source", "random"],
    "camal-shuffled": ["--attn-loss", "camal", "--mask-source", "shuffled"],
    "rrr": ["--attn-loss", "rrr"],
    "entropy": ["--attn-loss", "entropy"],
    "camal-uniform": ["--attn-loss", "camal", "--mask-source", "uniform"],
}


def method_label(attn_loss: str, mask_source: str) -> str:
    """vanilla, camal, rrr, entropy, or LOSS-SOURCE for a loss on control masks (e.g. camal-random)."""
    if attn_loss == "none":
        return "vanilla"
    return attn_loss if mask_source == "labels" else f"{attn_loss}-{mask_source}"
