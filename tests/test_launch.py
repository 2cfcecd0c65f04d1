"""engine/launch.py: ``--nproc-per-node`` read, removed from each process's command line and
handed to torch.distributed's elastic launcher (replaced here: no process is spawned)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed.run
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from engine import launch
from utils.errors import UserError


def test_processes_wanted_without_the_flag_or_with_a_count():
    assert launch.processes_wanted(None) == 1
    assert launch.processes_wanted("1") == 1
    assert launch.processes_wanted("4") == 4


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_processes_wanted_rejects_what_is_not_a_positive_integer_or_auto(value):
    with pytest.raises(UserError, match=r"--nproc-per-node: got .*, expected a positive integer"):
        launch.processes_wanted(value)


@pytest.mark.parametrize(("available", "count", "want"), [(False, 0, 1), (True, 3, 3)])
def test_auto_is_the_visible_gpus_or_one(monkeypatch, available, count, want):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert launch.processes_wanted("auto") == want


def test_world_size_is_torchruns_when_torchrun_started_the_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch.world_size(3) == 3
    monkeypatch.setenv("WORLD_SIZE", "8")  # e.g. two nodes of four
    assert launch.world_size(4) == 8


def test_each_process_gets_the_command_line_without_the_flag():
    argv = ["--work-dir", "runs/a", "--nproc-per-node", "2", "Seed=1", "--nproc-per-node=auto"]
    assert launch.without_flag(argv) == ["--work-dir", "runs/a", "Seed=1"]
    assert launch.without_flag(["Seed=1"]) == ["Seed=1"]


def test_entry_script_is_the_strategys_script_in_the_repository():
    script = launch.entry_script("mix_label")
    assert script.name == "mix_label.py" and script.is_file()


def test_elastic_run_hands_torchrun_the_count_the_script_and_the_other_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr(torch.distributed.run, "run", seen.append)
    script = launch.entry_script("cross_label")
    argv = ["--nproc-per-node", "2", "--work-dir", "w", "Training.total_iter=20"]
    assert launch.elastic_run(2, script, argv) == 0
    (args,) = seen
    assert args.nproc_per_node == "2"
    assert args.training_script == str(script)
    assert args.training_script_args == ["--work-dir", "w", "Training.total_iter=20"]


def failed(*codes: int | None) -> ChildFailedError:
    err = ChildFailedError.__new__(ChildFailedError)  # the failures are all elastic_run reads
    err.failures = {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate(codes)}
    return err


@pytest.mark.parametrize(("codes", "status"), [((0, 3, 2), 3), ((None, 0), 1), ((130,), 130)])
def test_elastic_run_returns_the_status_of_the_first_process_that_failed(
    monkeypatch, codes, status
):
    def run(args):
        raise failed(*codes)

    monkeypatch.setattr(torch.distributed.run, "run", run)
    assert launch.elastic_run(2, launch.entry_script("mix_label"), []) == status
