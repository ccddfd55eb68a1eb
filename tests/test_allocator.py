"""The trainer's process keeps the memory a minibatch frees for the next one (agents/allocator.py)."""

import sys

import pytest

from conftest import run_python

pytestmark = pytest.mark.slow  # two Python processes that each run 20 minibatch updates

# a fresh process per setting: mallopt's settings cannot be undone
FAULTS_PER_UPDATE = """
WARM_UP, MEASURED = 8, 12
import resource, sys, torch
from agents.allocator import keep_freed_memory
from agents.network import Agent
took = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
agent = Agent(3)
optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5, fused=True)
frames = torch.randint(0, 256, (1024, 4, 84, 84), dtype=torch.uint8)

def update():
    logits, value, _, _ = agent.logits_value_features_hidden(frames[torch.randperm(1024)[:256]])
    optimizer.zero_grad()
    (logits.logsumexp(dim=1).mean() + value.pow(2).mean()).backward()
    optimizer.step()

for _ in range(WARM_UP):  # the heap grows to the update's peak, which a few updates can raise again
    update()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(MEASURED):
    update()
print(took, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / MEASURED)
"""


def faults_per_update(setting: str) -> tuple[str, float]:
    done = run_python("-c", FAULTS_PER_UPDATE, setting)
    assert done.returncode == 0, done.stderr[-2000:]
    took, faults = done.stdout.split()
    return took, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_minibatch_update_reuses_the_memory_the_last_one_freed():
    took, kept = faults_per_update("keep")
    _, default = faults_per_update("default")
    assert took == "True"
    # 256 frames' activations and gradients are ~15 MB, 3,800 pages, faulted in again by default
    assert default > 1000
    assert kept < default / 10
