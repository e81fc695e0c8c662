"""No file of the tree may vanish from a contributor's commits because a common global
ignore (core.excludesFile) matches its directory: GitHub's Python template ignores
`build/` anywhere, which silently left new files in the old lab/build/ out of commits."""

from __future__ import annotations

import subprocess

from tests.conftest import REPO

# Directory patterns of GitHub's Python, C and Node .gitignore templates.
TEMPLATES = """
build/
develop-eggs/
dist/
downloads/
eggs/
.eggs/
lib/
lib64/
parts/
sdist/
var/
wheels/
share/python-wheels/
out/
node_modules/
coverage/
tmp/
"""


def ignored(paths: list[str], excludes: str) -> list[str]:
    done = subprocess.run(
        ["git", "-C", REPO, "-c", f"core.excludesFile={excludes}", "check-ignore", "--no-index",
         "--stdin"],
        input="\n".join(paths), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr  # 1: nothing ignored
    return done.stdout.split()


def test_no_tracked_file_is_ignored_by_a_common_template(tmp_path):
    excludes = tmp_path / "excludes"
    excludes.write_text(TEMPLATES)
    tracked = subprocess.run(
        ["git", "-C", REPO, "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert ignored(tracked, str(excludes)) == []


def test_the_check_sees_a_directory_a_template_ignores(tmp_path):
    excludes = tmp_path / "excludes"
    excludes.write_text(TEMPLATES)
    assert ignored(["lab/build/kernels.py", "lab/artifacts/kernels.py"], str(excludes)) == [
        "lab/build/kernels.py"
    ]
