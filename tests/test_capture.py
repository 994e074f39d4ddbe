"""capture_source (git state of a script's repository, sha256) and installed_distributions."""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import pytest

from prov4ml_hpc.job.capture import capture_source, installed_distributions, strip_credentials

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@x",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@x",
            "PATH": "/usr/bin:/bin",
            "HOME": str(repo),
        },
    )


@needs_git
def test_capture_source_in_a_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    script = repo / "src" / "train.py"
    script.write_text("print('hi')\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "remote", "add", "origin", "https://user:s3cret-token@git.example.org/team/repo.git")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    info = capture_source(script)
    assert info["script"] == str(script)
    assert info["script_sha256"] == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert len(info["git_commit"]) == 40 and info["git_branch"] == "main" and info["git_dirty"] is False
    assert info["git_remote_url"] == "https://git.example.org/team/repo.git"
    assert "s3cret" not in repr(info)
    script.write_text("print('changed')\n")
    assert capture_source(script)["git_dirty"] is True


def test_capture_source_outside_a_repository(tmp_path):
    script = tmp_path / "alone.py"
    script.write_text("x = 1\n")
    info = capture_source(script)
    assert set(info) == {"script", "script_size", "script_sha256"}
    missing = capture_source(tmp_path / "missing.py")
    assert missing["script_exists"] is False and "script_sha256" not in missing


def test_strip_credentials():
    assert strip_credentials("https://tok@github.com/a/b.git") == "https://github.com/a/b.git"
    assert strip_credentials("https://u:p@h:8443/a") == "https://h:8443/a"
    assert strip_credentials("ssh://git@host/a.git") == "ssh://host/a.git"
    assert strip_credentials("git@github.com:a/b.git") == "git@github.com:a/b.git"
    assert strip_credentials("/srv/git/repo") == "/srv/git/repo"


def test_installed_distributions():
    dists = installed_distributions()
    assert "numpy" in dists and "h5py" in dists and "prov4ml-hpc" in dists
    assert all(k == k.lower() and "_" not in k for k in dists)
