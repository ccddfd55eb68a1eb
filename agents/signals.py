"""How a training run stops: Ctrl-C / SIGTERM (a checkpoint, then exit 128 + signal) or a non-finite loss."""

from __future__ import annotations

import signal

import torch
from tqdm import tqdm


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C / SIGTERM: training stops at once, without writing a checkpoint."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopRequested:
    """Ctrl-C / SIGTERM set a flag; training stops at the end of the update and writes a checkpoint."""

    def __init__(self):
        self.signum: int | None = None
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal stops at once; the last checkpoint stays
            raise Interrupted(signum)
        self.signum = signum
        tqdm.write(f"signal {signum}: stopping after this update and writing a checkpoint (again to stop at once)")


class NonFiniteLoss(Exception):
    """A loss, its gradient or the policy became NaN or infinite: training stops, writing no checkpoint."""

    def __init__(self, iteration: int, terms: dict[str, torch.Tensor] | str):
        if not isinstance(terms, str):
            terms = ", ".join(f"{name} = {value.item()}" for name, value in terms.items() if not torch.isfinite(value))
        super().__init__(f"update {iteration}: non-finite {terms}")
