"""The README's examples run as written: each fenced block just below a
``<!-- readme-test -->`` line, against the demo on a real server.

A ``python`` block runs as a script in a fresh interpreter, a ``sh`` block with ``bash -e``;
each in a directory of its own, with ``JOBCAST_URL`` naming the server and ``jobcast`` on
the ``PATH``. Blocks in other languages are run by their own tests (the JavaScript ones in
Chromium).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Process, free_port

README = Path(__file__).parents[1] / "README.md"
MARKER = "<!-- readme-test -->"
#: How each language is run, from a file holding the block.
RUNNERS = {"python": [sys.executable], "sh": ["bash", "-e"]}
SUFFIXES = {"python": ".py", "sh": ".sh"}


@dataclass(frozen=True)
class Block:
    """One marked block of the README."""

    id: str  # the section's heading, made an id, and the block's number in it
    language: str
    code: str
    line: int  # where the code starts, 1-based


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def marked_blocks(text: str) -> list[Block]:
    """Every block just below the marker, in the order of the README."""
    lines = text.splitlines()
    blocks: list[Block] = []
    section, counts = "readme", dict[str, int]()
    for number, line in enumerate(lines):
        if line.startswith("#"):
            section = _slug(line.lstrip("#"))
        if line.strip() != MARKER or number + 1 >= len(lines):
            continue
        fence = lines[number + 1]
        if not fence.startswith("```"):
            raise AssertionError(f"README.md:{number + 1}: {MARKER} is not followed by a block")
        end = lines.index("```", number + 2)
        counts[section] = counts.get(section, 0) + 1
        code = "\n".join(lines[number + 2 : end]) + "\n"
        block_id = f"{section}-{counts[section]}"
        blocks.append(Block(block_id, fence[3:].strip(), code, number + 3))
    return blocks


BLOCKS = [block for block in marked_blocks(README.read_text()) if block.language in RUNNERS]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    """The demo tasks, served by ``jobcast serve`` with a database of their own."""
    db = tmp_path_factory.mktemp("readme") / "jobcast.db"
    server = Process("jobcast.demo:jobs", free_port(), {"JOBCAST_DB": str(db)})
    yield server
    server.stop()


def test_the_clients_sections_have_examples_that_run() -> None:
    sections = {block.id.rsplit("-", 1)[0] for block in BLOCKS}
    assert {"python-client", "terminal"} <= sections, sections
    assert {block.language for block in BLOCKS} == set(RUNNERS)


def test_a_marker_must_be_followed_by_a_block() -> None:
    with pytest.raises(AssertionError, match=r"README.md:2: .* is not followed by a block"):
        marked_blocks(f"text\n{MARKER}\nmore text\n```sh\necho\n```\n")


@pytest.mark.integration  # a jobcast server, and each block in a process of its own
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_the_example_runs(block: Block, demo: Process, tmp_path: Path) -> None:
    script = tmp_path / f"example{SUFFIXES[block.language]}"
    script.write_text(block.code)
    tools = str(Path(sys.executable).parent)  # where the jobcast command is installed
    done = subprocess.run(
        [*RUNNERS[block.language], str(script)],
        cwd=tmp_path,
        env={
            **os.environ,
            "JOBCAST_URL": demo.url,
            "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, (
        f"README.md:{block.line} ({block.language}) exited {done.returncode}\n"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    )
