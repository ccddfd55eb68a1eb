"""The arguments of agents/ppo_camal.py (CleanRL's Args and CAMAL's), their checks, and the run they resume.

A module of its own so that the study runner (experiments/study.py) can check a study's flags before it
starts anything, without importing the training script.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from agents import run_folder
from agents.attention import MASK_SOURCES
from agents.checks import check_finite_and_seed, check_non_negative, check_positive, check_writable_dir, flag
from agents.methods import DEFAULT_ATTENTION_COEF, method_label
from envs import REWARD_TRANSFORMS, check_scenario, reward_scale_for
from masks import targets_for
from scenarios import short_name


@dataclass
class Args:
    env: str = "basic"
    """scenario: a stock short name (basic, defend_the_center, ...; scenarios/table.py) or the path of a .cfg
    file (a custom scenario: needs --targets and --reward-scale or another --reward-transform; README)"""
    exp_name: str = ""
    """name of the experiment in the run folder's name (default: the method, e.g. camal, vanilla)"""
    seed: int = 1
    """seed of the experiment (torch, numpy, python, environments)"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when it is available"""
    bf16: bool = False
    """run the network's layers in bfloat16 (torch.autocast; weights, losses and the attention terms stay fp32):
    ~2.5x faster updates on CPUs with AMX or AVX512-BF16 and on GPUs, much slower on CPUs without (README: Speed)"""
    env_groups: int = 2
    """step the envs in this many groups, the policy acting on one group while the engines of the others run
    (1: all envs at once, as CleanRL; README: Speed)"""
    acting_threads: int | None = 1
    """torch threads while acting on a few frames, leaving the other cores to the engines (None: torch's
    default, which the update always uses)"""
    keep_freed_memory: bool = True
    """have glibc's malloc keep the memory each minibatch frees for the next one instead of returning it to
    the system (agents/allocator.py; fewer page faults, 1.02-1.045x end to end here; README: Speed)"""
    track: bool = False
    """also log to Weights and Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "camal-vizdoom"
    """the wandb project name"""
    wandb_entity: str | None = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record videos of the first environment's episodes to videos/{run_name}"""
    runs_dir: str = "runs"
    """folder that holds the run folders"""
    save_every: int = 10
    """write a checkpoint every this many updates (and always at the end or on Ctrl-C/SIGTERM)"""
    resume: str | None = None
    """continue the run in this run folder (same step count, same tensorboard curves). Flags given with it
    must not change the run, except --total-timesteps (train longer), --cuda, --track and --wandb-*;
    other changes are refused"""
    image_every: int = 10
    """log frames with the attention map and the mask to tensorboard every this many updates (0: never)"""

    # Environment
    reward_transform: Literal["scale", "clip", "none"] = "scale"
    """learning reward: per-scenario scale (measured to learn), clip to [-1, 1] (the paper's), or none"""
    reward_scale: float | None = None
    """factor of --reward-transform scale (default: the stock scenario's; a custom .cfg has none; README)"""
    targets: str | None = None
    """override the scenario's target objects, comma-separated names or categories (e.g. Monster,Medikit); not empty"""

    # PPO (CleanRL's ppo_atari defaults)
    total_timesteps: int = 100_000
    """total environment steps (after frame skip)"""
    learning_rate: float = 2.5e-4
    """the learning rate of the optimizer"""
    num_envs: int = 8
    """the number of parallel environments (one engine each)"""
    num_steps: int = 128
    """the number of steps per environment per rollout"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0"""
    gamma: float = 0.99
    """the discount factor"""
    gae_lambda: float = 0.95
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 4
    """the number of minibatches per epoch"""
    update_epochs: int = 4
    """the number of epochs per update"""
    norm_adv: bool = True
    """normalise advantages per minibatch"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss"""
    ent_coef: float = 0.01
    """the entropy coefficient"""
    vf_coef: float = 0.5
    """the value function coefficient"""
    max_grad_norm: float = 0.5
    """the maximum norm for gradient clipping"""
    target_kl: float | None = None
    """stop the update early when the approximate KL exceeds this"""

    # Attention loss (docs/method.md s.4)
    attn_loss: Literal["none", "camal", "rrr", "entropy"] = "camal"
    """attention loss: none (vanilla PPO), camal, rrr (Right for the Right Reasons control) or entropy (the
    generic regulariser control: minimise the map's entropy, no mask)"""
    camal_coef: float | None = None
    """lambda: weight of the attention loss; default 0.1 for camal, 0.01 for rrr, 1 for entropy (docs/agent.md:
    choice of lambda); 0 reproduces vanilla PPO"""
    mask_source: Literal["labels", "random", "shuffled", "uniform"] = "labels"
    """masks the attention loss sees: labels (true), random (same-area blobs), shuffled (another frame's) or
    uniform (the whole frame, on frames with a target)"""

    # filled in at runtime
    method: tyro.conf.Suppress[str] = ""
    """(set at runtime) method label used by eval/aggregate.py"""
    batch_size: tyro.conf.Suppress[int] = 0
    """(set at runtime) num_envs * num_steps"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """(set at runtime) batch_size // num_minibatches"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """(set at runtime) total_timesteps // batch_size"""


# flags that may differ on --resume: how long, where and how fast a run trains, not what it learns
RESUME_CHANGEABLE = ("total_timesteps", "cuda", "track", "wandb_project_name", "wandb_entity", "env_groups",
                     "acting_threads", "keep_freed_memory")


def check_args(args: Args) -> None:
    """Raise ValueError (one line: what was wrong, what is valid) for bad arguments."""
    check_finite_and_seed(args)
    reward_scale_for(check_scenario(args.env), args.reward_transform, args.reward_scale)
    targets_for(args.env, args.targets)
    if args.camal_coef is not None and args.camal_coef < 0:
        raise ValueError(f"--camal-coef must be >= 0, got {args.camal_coef}")
    if args.mask_source not in MASK_SOURCES:
        raise ValueError(f"unknown --mask-source '{args.mask_source}'; valid: {', '.join(MASK_SOURCES)}")
    if args.reward_transform not in REWARD_TRANSFORMS:
        raise ValueError(f"unknown --reward-transform; valid: {', '.join(REWARD_TRANSFORMS)}")
    check_positive(args, ("num_envs", "num_steps", "num_minibatches", "update_epochs", "total_timesteps", "save_every",
                          "learning_rate", "clip_coef", "max_grad_norm", "env_groups"))
    check_non_negative(args, ("image_every", "ent_coef", "vf_coef"))
    for name in ("gamma", "gae_lambda"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"{flag(name)} must be in [0, 1], got {getattr(args, name)}")
    if args.acting_threads is not None and args.acting_threads <= 0:
        raise ValueError(f"--acting-threads must be > 0 (or None: torch's default), got {args.acting_threads}")
    if args.target_kl is not None and args.target_kl <= 0:
        raise ValueError(f"--target-kl must be > 0 (or omitted), got {args.target_kl}")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        raise ValueError(
            f"--num-minibatches {args.num_minibatches} does not divide the batch "
            f"(num_envs x num_steps = {batch_size}); choose a divisor of {batch_size}"
        )
    if args.norm_adv and batch_size // args.num_minibatches < 2:
        raise ValueError(f"a minibatch of {batch_size // args.num_minibatches} sample cannot normalise advantages "
                         f"(their std needs 2); lower --num-minibatches or pass --no-norm-adv")
    if args.total_timesteps < batch_size:
        raise ValueError(f"--total-timesteps {args.total_timesteps} is less than one batch ({batch_size} steps)")
    if args.track and importlib.util.find_spec("wandb") is None:
        raise ValueError("--track needs wandb: pip install wandb")
    check_writable_dir(Path.cwd(), "working directory (the engines write _vizdoom/ there)")
    if not args.resume:
        check_writable_dir(Path(args.runs_dir), "--runs-dir")


def set_runtime_fields(args: Args) -> None:
    if args.camal_coef is None:
        args.camal_coef = DEFAULT_ATTENTION_COEF[args.attn_loss]
    args.method = method_label(args.attn_loss, args.mask_source)
    args.exp_name = args.exp_name or args.method
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size


def create_run_dir(args: Args) -> Path:
    """A new run folder named env__exp_name__seed__time; a launch in the same second gets a suffix."""
    return run_folder.create_run_dir(args, short_name(args.env))


def resume_args(run_dir: str | Path) -> Args:
    """The saved arguments of a run, with ``resume`` set: flags given on top of them are changes."""
    return run_folder.resume_args(run_dir, Args)


def merge_resume(args: Args) -> Args:
    """The saved run's arguments with the changes that --resume allows; any other change is refused."""
    merged = run_folder.merge_resume(args, Args, RESUME_CHANGEABLE)
    set_runtime_fields(merged)
    return merged
