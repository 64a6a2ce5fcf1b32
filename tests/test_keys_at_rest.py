"""Keys at rest (issue 8, item 6): 0600 from the first byte, folders 0700, no overwrite without --force."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mcobserve.cli import credentials
from mcobserve.cli.credentials import KeysExistError, write_credentials
from mcobserve.oscore.ssn import FileSequenceNumberStore


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def wide_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_file_0600_every_created_folder_0700(tmp_path, wide_umask):
    out = tmp_path / "a" / "creds"
    write_credentials(out, "[fd00::1]", 3)
    found = modes(out)
    assert {n for n in found if (out / n).is_file()} == set(credentials.planned_files(3))
    for name, mode in found.items():
        assert mode == (0o700 if (out / name).is_dir() else 0o600), (name, oct(mode))
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


def test_no_byte_is_ever_written_to_a_file_readable_by_others(tmp_path, wide_umask, monkeypatch):
    seen: list[int] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(credentials.os, "write", write)
    write_credentials(tmp_path / "c", "[fd00::1]", 2)
    assert seen and set(seen) == {0o600}


def test_existing_keys_are_never_replaced_without_force(tmp_path):
    out = tmp_path / "c"
    write_credentials(out, "[fd00::1]", 2)
    before = snapshot(out)
    with pytest.raises(KeysExistError, match="use --force"):
        write_credentials(out, "[fd00::1]", 2)
    (out / "group.toml").unlink()  # even one missing file: the others are not touched
    with pytest.raises(KeysExistError):
        write_credentials(out, "[fd00::1]", 2)
    assert snapshot(out) == {k: v for k, v in before.items() if k != "group.toml"}
    write_credentials(out, "[fd00::1]", 2, force=True)
    after = snapshot(out)
    assert set(after) == set(before)
    assert after["server.json"] == before["server.json"]  # same layout, only paths
    assert after["client-1/settings.json"] != before["client-1/settings.json"]  # new secrets
    assert all(m == 0o600 for n, m in modes(out).items() if (out / n).is_file())


def test_force_tightens_a_file_that_was_readable(tmp_path):
    out = tmp_path / "c"
    write_credentials(out, "[fd00::1]", 1)
    (out / "group.toml").chmod(0o644)
    write_credentials(out, "[fd00::1]", 1, force=True)
    assert stat.S_IMODE((out / "group.toml").stat().st_mode) == 0o600
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_refuses_to_overwrite_with_one_line(tmp_path):
    argv = [sys.executable, "-m", "mcobserve.cli.main", "credentials", str(tmp_path / "c")]
    argv += ["--server", "[fd00::1]", "--clients", "1"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    key = (tmp_path / "c" / "group.toml").read_bytes()
    second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcobserve: ") and "--force" in lines[0]
    assert (tmp_path / "c" / "group.toml").read_bytes() == key
    forced = subprocess.run([*argv, "--force"], capture_output=True, text=True, timeout=60)
    assert forced.returncode == 0 and (tmp_path / "c" / "group.toml").read_bytes() != key


def test_ssn_files_are_0600(tmp_path, wide_umask):
    store = FileSequenceNumberStore(tmp_path / "server.ssn")
    store.store(42)
    assert stat.S_IMODE((tmp_path / "server.ssn").stat().st_mode) == 0o600
    assert store.load() == 42
