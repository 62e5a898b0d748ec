"""experiments/profile_processor.py charges py-spy samples to stages by file and function
name; a rule naming code that was renamed or moved would silently send its samples to
"other". Every app/ file and function its rules name must exist."""

from __future__ import annotations

from experiments.profile_processor import stale_rules


def test_every_profile_rule_names_code_that_exists() -> None:
    assert stale_rules() == []
