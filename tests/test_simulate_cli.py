"""``mcobserve simulate-counting`` in-process: JSON lines, the table, the plot, usage errors (draft §8)."""

from __future__ import annotations

import json

import pytest

from mcobserve.cli.main import main

BASE = ["simulate-counting", "--observers", "10000", "--active", "2500", "--confirmations", "32"]
KEYS = {"round", "estimate", "Q", "R", "N", "E", "true_active", "count_prime", "next_round_in", "cancelled"}


def test_json_has_one_object_per_round(capsys):
    assert main([*BASE, "--dampener", "4", "--rounds", "12", "--seed", "7", "--joins", "3", "--json"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 12 and err == ""
    records = [json.loads(line) for line in lines]
    assert all(KEYS <= rec.keys() for rec in records)
    assert [rec["round"] for rec in records] == list(range(1, 13))
    assert records[0]["N"] == 10_000 and records[0]["count_prime"] == 10_003
    assert [rec["true_active"] for rec in records] == [2500 + 3 * k for k in range(1, 13)]
    assert all(rec["E"] == rec["R"] * 2 ** rec["Q"] for rec in records)


def test_same_seed_same_rounds(capsys):
    argv = [*BASE, "--rounds", "5", "--seed", "11", "--loss", "0.1", "--json"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    assert capsys.readouterr().out == first


def test_exact_mode_from_the_command_line(capsys):
    argv = ["simulate-counting", "--observers", "500", "--active", "300", "--rounds", "3", "--seed", "1"]
    assert main([*argv, "--exact", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3 and all(rec["responders"] == 300 for rec in records)


def test_table_and_summary(capsys):
    assert main([*BASE, "--rounds", "4", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "COUNT'" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("after 4 rounds: estimate ") and "for 2500 active" in summary


def test_cancellation_is_reported(capsys):
    argv = ["simulate-counting", "--observers", "50", "--active", "0", "--dampener", "1", "--seed", "1"]
    assert main([*argv, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 1 and records[0]["cancelled"] is True and records[0]["estimate"] == 0
    assert main(argv) == 0
    assert "cancelled in round 1" in capsys.readouterr().out


def test_plot_writes_a_png(tmp_path, capsys):
    target = tmp_path / "counting.png"
    argv = [*BASE, "--rounds", "6", "--seed", "3", "--loss", "0.1", "--plot", str(target), "--json"]
    assert main(argv) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(capsys.readouterr().out.splitlines()) == 6


def test_plot_into_a_missing_directory_fails_in_one_line(tmp_path, capsys):
    assert main([*BASE, "--rounds", "2", "--plot", str(tmp_path / "no" / "such.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mcobserve: cannot write") and len(err.strip().splitlines()) == 1


ONE = ["--observers", "10", "--active", "1"]


@pytest.mark.parametrize(
    ("extra", "msg"),
    [
        (["--observers", "10", "--active", "11"], "--active must be between 0 and --observers"),
        (["--observers", "10"], "--active is required"),
        (["--active", "1"], "--observers is required"),
        (["--observers", "ten", "--active", "1"], "--observers must be an integer"),
        ([*ONE, "--confirmations", "0"], "--confirmations must be at least 1"),
        ([*ONE, "--dampener", "0"], "--dampener must be at least 1"),
        ([*ONE, "--loss", "1"], "--loss must be a probability"),
        ([*ONE, "--loss", "-0.1"], "--loss must be a probability"),
        ([*ONE, "--loss", "nan"], "--loss must be a finite number"),
        ([*ONE, "--rounds", "0"], "--rounds must be at least 1"),
        ([*ONE, "--joins", "-2"], "--joins must not be negative"),
        ([*ONE, "--count-every", "60"], "count_every must be below"),
        ([*ONE, "--plot", "x.nope"], "cannot write .nope"),
    ],
)
def test_bad_arguments_exit_64_in_one_line(capsys, extra, msg):
    assert main(["simulate-counting", *extra]) == 64
    out, err = capsys.readouterr()
    assert out == "" and msg in err and err.startswith("mcobserve: ")
    assert len(err.strip().splitlines()) == 1
