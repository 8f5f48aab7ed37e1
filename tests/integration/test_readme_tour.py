"""The README's tour, run from the README itself, so the docs cannot drift from the product.

The commands are read from the tour's code blocks and run as written in a fresh workspace on
the default data. Two changes keep it affordable and reproducible, both set before the first
`oblivio run`: a fixed test secret and `data.limit_subjects` (a deterministic sample). The
tour's ids must also exist in the full default data, which a user runs it on.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from helpers import TEST_SECRET, cli, set_params

README = Path(__file__).resolve().parents[2] / "README.md"
SAMPLE = 300  # subjects; the tour's ids were chosen from this sample under TEST_SECRET


def tour_commands() -> list[str]:
    """Shell lines of the tour's first code blocks: init, run, forget someone."""
    text = README.read_text()
    section = text[text.index("## A 5-minute tour"):]
    section = section[:section.index("\n## ", 1)]
    # up to the parts that need a user's own file or train twice more
    ends = [section.index(m) for m in ("**Bring your own table.**", "**Correct manipulated data.**") if m in section]
    section = section[:min(ends)] if ends else section
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines += [line.strip() for line in block.splitlines() if shlex.split(line, comments=True)]
    return lines


def test_tour_ids_exist_in_the_full_default_data():
    from oblivio.data.sources import load_nlswork

    data = load_nlswork()
    subjects, records = set(data["idcode"].astype(str)), set(data["record_id"])
    tour = " ".join(tour_commands())
    named_subjects = re.findall(r"--subject (\S+)", tour) + re.findall(r"printf '([^']*)'", tour)[0].split("\\n")
    named_subjects = [s for s in named_subjects if s]
    named_records = re.findall(r"--record (\S+)", tour)
    assert named_subjects and named_records
    assert set(named_subjects) <= subjects, set(named_subjects) - subjects
    assert set(named_records) <= records, set(named_records) - records


@pytest.mark.integration
def test_readme_tour_runs_as_written(tmp_path):
    commands = tour_commands()
    assert commands[0].startswith("oblivio init ") and " && cd " in commands[0]
    ws = tmp_path / "oblivio-demo"
    cli(None, "init", str(ws))
    (ws / ".oblivio" / "secret").write_text(TEST_SECRET + "\n")
    set_params(ws, {"data": {"limit_subjects": SAMPLE}})
    outputs = {}
    for line in commands[1:]:
        if line.startswith("oblivio "):
            proc = cli(ws, *shlex.split(line, comments=True)[1:], check=False)
        else:
            proc = subprocess.run(line, shell=True, cwd=ws, capture_output=True, text=True)
        assert proc.returncode == 0, f"README tour: `{line}` exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        outputs[shlex.split(line, comments=True)[1] if line.startswith("oblivio ") else line] = proc.stdout
    listed = cli(ws, "requests").stdout.splitlines()
    assert len(listed) == 4 and all(" promoted " in row for row in listed), listed  # every tour request applied
    assert "verified" in outputs["verify"]
