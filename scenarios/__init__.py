"""What the project knows about a scenario (table.py: one record per stock scenario) and how a
``--env`` (short name or .cfg path) resolves to one (cfg.py)."""

from scenarios.cfg import SCAN_FRAMES, check_scenario, config_path, objects_seen, scenario_record, valid_envs, wad_path
from scenarios.table import SCENARIOS, Scenario, is_config_path, short_name

__all__ = [
    "SCAN_FRAMES",
    "SCENARIOS",
    "Scenario",
    "check_scenario",
    "config_path",
    "is_config_path",
    "objects_seen",
    "scenario_record",
    "short_name",
    "valid_envs",
    "wad_path",
]
