"""ViZDoom scenarios as gymnasium environments with label-buffer masks."""

from envs.doom import (REWARD_TRANSFORMS, SCENARIOS, check_scenario, make_doom_env, make_env, make_env_groups,
                       make_vector_env, reward_scale_for)

__all__ = ["REWARD_TRANSFORMS", "SCENARIOS", "check_scenario", "make_doom_env", "make_env", "make_env_groups",
           "make_vector_env", "reward_scale_for"]
