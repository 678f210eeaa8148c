"""The README's commands are the truth: CI must run the README's test command verbatim."""

import re
import shlex

from conftest import ROOT


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", text)


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    test_cmds = [c for c in commands if "pytest" in c]
    assert len(test_cmds) == 1, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmds[0] in ci, "the README's test command must appear verbatim in .ci/run"


def test_demo_command_uses_bundled_images():
    demo = [c for c in _readme_commands() if "nst-jax" in c]
    assert len(demo) == 1
    args = shlex.split(demo[0].split("&&")[-1])
    for flag in ("--content", "--style"):
        path = ROOT / args[args.index(flag) + 1]
        assert path.is_file(), f"{flag} {path} is not in the project"
