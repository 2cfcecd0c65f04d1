"""Faults and edges of a researcher's run, one test (or a few) per row of docs/reliability.md.

A run that is rerun when finished, resumed with other settings or on another number of
processes, whose checkpoint cannot be written, whose data becomes unreadable, that gets
signals under torchrun, that spans two (simulated) nodes, and the TensorBoard events it
writes. Tiny settings as in tests/test_engine.py (whose helpers are reused): the demo data,
the 16 / 32 / 6 image split, one thread per process, gloo. Single-process cases call the
entry point's ``main`` in this process where no real process is needed (no torch import
per case); signals, data-loader workers, torchrun and the two nodes use real processes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_engine import (
    TIMEOUT,
    TINY,
    check_ok,
    env,
    free_port,
    load_state,
    model_equal,
    one_thread,
    poly,
    read_jsonl,
    snapshot,
    split_args,
    stderr_lines,
    torchrun,
)

from engine import cli, loop
from engine.checkpoints import make_checkpoint
from engine.config import DEFAULT_CONFIG, load_config, typed
from engine.loop import StopRequest, schedule_lines
from engine.run import iters_per_epoch
from utils.errors import UserError
from utils.sampler import EpochBatchSampler
from utils.strategies import STRATEGIES

REPO = Path(__file__).resolve().parents[1]
# Two-process runs: evaluated at the end only, latest.pth written only when a run stops (and
# at the end), so the checkpoint a rerun starts from is the one the stop wrote.
TWO_ITERS = 10
TWO = [
    *[
        o
        for o in TINY
        if not o.startswith(("Training.total_iter", "Training.eval_", "Training.sa"))
    ],
    f"Training.total_iter={TWO_ITERS}",
    f"Training.eval_interval={TWO_ITERS}",
    "Training.save_interval=1000",
]


def overrides(tiny_split: Path, *extra: str) -> list[str]:
    return [*TINY, *split_args(tiny_split), *extra]


def two_overrides(tiny_split: Path) -> list[str]:
    return [*TWO, *split_args(tiny_split)]


def train_here(strategy: str, argv: list[str], environ: dict | None = None) -> SimpleNamespace:
    """``engine.cli.main(strategy, argv)`` in this process, one thread, from the repository
    root, stdout / stderr captured; ``environ`` is set for the call (e.g. torchrun's)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.chdir(REPO)
        mp.setattr(torch, "set_flush_denormal", lambda mode: True)  # process-global
        for key, value in (environ or {}).items():
            mp.setenv(key, value)
        stack.enter_context(one_thread())
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        StopRequest.reset()
        try:
            code = cli.main(strategy, argv)
        finally:
            StopRequest.reset()
            for handler in logging.getLogger("css").handlers:
                handler.close()  # log.txt of this run
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@contextlib.contextmanager
def stop_after(iteration: int):
    """A stop request (what Ctrl-C sets) during the step that reaches ``iteration``."""
    real = loop.train_step

    def step(run, batch_l, batch_u, *args, **kwargs):
        if run.iteration + 1 == iteration:
            StopRequest.requested = True
        return real(run, batch_l, batch_u, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_step", step)
        yield


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def error_lines(text: str) -> list[str]:
    return [s for s in stderr_lines(text) if "error" in s.lower()]


def check_error_line(res, *names: str) -> str:
    """Exit 2, exactly one line mentioning an error, starting its own line with ``error: ``
    (not glued to a progress bar), naming every ``names``; no traceback."""
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stdout + res.stderr, res.stderr[-3000:]
    errors = error_lines(res.stderr)
    assert len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith("error: "), errors[0]
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def no_traceback_from_our_code(text: str) -> None:
    """torchrun's agent prints its own traceback when a worker exits non-zero; no frame of
    this repository may appear in any traceback."""
    frames = [s for s in text.splitlines() if s.lstrip().startswith('File "')]
    assert not [f for f in frames if str(REPO) in f], text[-3000:]


def interrupted_lines(text: str) -> list[str]:
    return [s for s in stderr_lines(text) if s.startswith("interrupted at iteration ")]


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def straight(tiny_split: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """mix_label, one process, 4 iterations, straight (in this process)."""
    work_dir = tmp_path_factory.mktemp("faults") / "straight"
    argv = ["--work-dir", str(work_dir), *overrides(tiny_split)]
    res = train_here("mix_label", argv)
    check_ok(res)
    return SimpleNamespace(dir=work_dir, res=res, argv=argv)


@pytest.fixture(scope="module")
def half(tiny_split: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The same run stopped (as by Ctrl-C) after iteration 2 of 4: latest.pth at 2."""
    work_dir = tmp_path_factory.mktemp("faults") / "half"
    with stop_after(2):
        res = train_here("mix_label", ["--work-dir", str(work_dir), *overrides(tiny_split)])
    assert res.returncode == 130, res.stderr[-3000:]
    assert load_state(work_dir / "latest.pth")["iteration"] == 2
    return SimpleNamespace(dir=work_dir, res=res)


@pytest.fixture(scope="module")
def straight_two(tiny_split: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``torchrun --nproc_per_node=2 mix_label.py``, TWO_ITERS iterations, straight."""
    work_dir = tmp_path_factory.mktemp("faults") / "straight_two"
    proc = torchrun(["mix_label.py", "--work-dir", str(work_dir), *two_overrides(tiny_split)])
    check_ok(proc)
    return SimpleNamespace(dir=work_dir, proc=proc)


# ------------------------------------------------------------------------------ processes


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def worker_pids(agent: int) -> dict[int, int]:
    """``{rank: pid}`` of the workers a torchrun agent started (from their environment)."""
    out = {}
    for child in children(agent):
        with contextlib.suppress(OSError):
            for item in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                if item.startswith(b"RANK="):
                    out[int(item[5:])] = child
    return out


def train_records(metrics: Path) -> list[dict]:
    """The complete training records of a metrics.jsonl that may be being written."""
    if not metrics.exists():
        return []
    lines = metrics.read_text().split("\n")[:-1]  # the last piece may be half written
    return [r for r in (json.loads(s) for s in lines) if "sup" in r]


def wait_for_step(proc: subprocess.Popen, metrics: Path, after: int) -> int:
    """Wait until the run has logged an iteration beyond ``after``; return it."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proc.poll() is None, "the run ended before the signal"
        assert time.monotonic() < deadline, "no step logged"
        records = train_records(metrics)
        if records and records[-1]["iter"] > after:
            return records[-1]["iter"]
        time.sleep(0.02)


def kill_all(proc: subprocess.Popen, pids: list[int]) -> None:
    """Leave nothing running: the agent's process group and each worker."""
    for pid in [proc.pid, *pids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    proc.wait()


def two_launchers(port: int, argv: list[str], logs: Path) -> list[subprocess.Popen]:
    """Two torchrun agents of one process each, as on two nodes, meeting at 127.0.0.1:port."""
    procs = []
    for node in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            f"--rdzv_id=two_nodes_{port}",
            *argv,
        ]
        out = open(logs / f"node{node}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT)
        )
        out.close()
    return procs


SEGMENTS = ("worker_sigterm", "agent_sigterm", "terminal_ctrl_c")


@pytest.fixture(scope="module")
def stops(tiny_split: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One two-process torchrun run, stopped three times, then rerun to the end:

    1. SIGTERM to the worker of rank 1 only;
    2. SIGTERM to the torchrun agent (it forwards SIGTERM to its workers);
    3. a terminal's Ctrl-C that reaches every process: SIGINT to each worker directly and,
       0.25 s later (a slow agent; within a step, after the workers' handlers ran), to the
       agent, which forwards it: each worker gets it twice. (Two signals that arrive while a
       worker is inside one C call merge into one, hence the gap. This torch starts workers
       in their own sessions, so a real terminal reaches the agent only; other launchers
       and older torch versions share the terminal's process group.)

    Each part is signalled once it has logged a step beyond the previous checkpoint. The
    last part runs to the end on two simulated nodes: two torchrun agents (--nnodes=2, one
    process each, c10d rendezvous on 127.0.0.1), the same two-process group."""
    root = tmp_path_factory.mktemp("stops")
    work_dir = root / "run"
    argv = ["mix_label.py", "--work-dir", str(work_dir), *two_overrides(tiny_split)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    segments, after, first_copy = {}, 0, None
    for name in SEGMENTS:
        out, err = root / f"{name}.out", root / f"{name}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            proc = subprocess.Popen(
                [*launcher, f"--master_port={free_port()}", *argv],
                cwd=REPO,
                env=env(),
                stdout=fo,
                stderr=fe,
                start_new_session=True,
            )
        workers: dict[int, int] = {}
        try:
            seen = wait_for_step(proc, work_dir / "metrics.jsonl", after)
            workers = worker_pids(proc.pid)
            assert sorted(workers) == [0, 1], workers
            if name == "worker_sigterm":
                os.kill(workers[1], signal.SIGTERM)
            elif name == "agent_sigterm":
                os.kill(proc.pid, signal.SIGTERM)
            else:
                for pid in workers.values():
                    os.killpg(pid, signal.SIGINT)
                time.sleep(0.25)  # the workers' handlers have run; their step goes on
                os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=TIMEOUT)
        finally:
            kill_all(proc, list(workers.values()))
        state = load_state(work_dir / "latest.pth")
        segments[name] = SimpleNamespace(
            returncode=proc.returncode,
            stdout=out.read_text(),
            stderr=err.read_text(),
            seen=seen,
            after=after,
            state=state,
            logged=[r["iter"] for r in train_records(work_dir / "metrics.jsonl")],
        )
        after = state["iteration"]
        if first_copy is None:
            first_copy = copy_run(work_dir, root / "after_first_stop")
    nodes = two_launchers(free_port(), argv, root)
    try:
        for proc in nodes:
            proc.wait(timeout=TIMEOUT)
    finally:
        for proc in nodes:
            proc.kill()
            proc.wait()
    final = SimpleNamespace(
        returncodes=[proc.returncode for proc in nodes],
        logs=[(root / f"node{n}.log").read_text() for n in (0, 1)],
    )
    return SimpleNamespace(dir=work_dir, segments=segments, final=final, first_copy=first_copy)


def check_segment(seg: SimpleNamespace, work_dir: Path) -> None:
    """Every rank stopped at the step the checkpoint holds, which is past the previous one;
    the checkpoint is complete; no traceback from this repository."""
    k = seg.state["iteration"]
    assert seg.after < seg.seen <= k < TWO_ITERS, (seg.after, seg.seen, k)
    assert seg.state["world_size"] == 2
    assert set(seg.state) >= {"student", "teacher", "prototypes", "optimizer", "config"}
    latest = work_dir / "latest.pth"
    lines = sorted(interrupted_lines(seg.stderr))
    assert lines == [
        f"interrupted at iteration {k} (rank {r} of 2): {latest} holds iteration {k}"
        for r in (0, 1)
    ], seg.stderr[-3000:]
    no_traceback_from_our_code(seg.stdout + seg.stderr)
    assert seg.logged == list(range(1, k + 1))  # every step up to the checkpoint, once


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTS)
def test_signal_stops_every_rank_at_the_same_step(name: str, stops: SimpleNamespace) -> None:
    seg = stops.segments[name]
    check_segment(seg, stops.dir)
    assert seg.returncode != 0  # the run is not finished
    if name != "worker_sigterm":
        assert f"resuming at iteration {seg.after}" in seg.stdout
    # The request reached every process through the step's all-reduce; rank 0 says so.
    asked = 1 if name == "worker_sigterm" else 2
    k = seg.state["iteration"]
    assert f"stop requested on {asked} of 2 process(es): latest.pth holds iteration {k}" in (
        seg.stdout
    )
    # A process told by a signal says it at once, if it is rank 0 (once per process).
    signame = "SIGINT" if name == "terminal_ctrl_c" else "SIGTERM"
    said = [s for s in stderr_lines(seg.stderr) if s.startswith(f"{signame}: finishing")]
    assert len(said) == (0 if name == "worker_sigterm" else 1), seg.stderr[-3000:]


@pytest.mark.slow
def test_rerun_after_the_stops_on_two_nodes_equals_the_straight_run(
    stops: SimpleNamespace, straight_two: SimpleNamespace
) -> None:
    """After the three stops, the rerun (on two simulated nodes) trains to the end, evaluates,
    and ends bitwise equal to the straight one-node two-process run: weights, prototypes,
    every logged value, the evaluation."""
    logs = stops.final.logs
    assert stops.final.returncodes == [0, 0], "\n".join(s[-2000:] for s in logs)
    assert sum("final evaluation of the teacher" in s for s in logs) == 1  # rank 0 reports
    a, b = load_state(straight_two.dir / "latest.pth"), load_state(stops.dir / "latest.pth")
    assert a["iteration"] == b["iteration"] == TWO_ITERS and b["world_size"] == 2
    for key in ("student", "teacher"):
        assert model_equal(a[key], b[key], atol=0) == [], key
    assert torch.equal(a["prototypes"]["proto"], b["prototypes"]["proto"])
    ref = read_jsonl(straight_two.dir / "metrics.jsonl")
    new = read_jsonl(stops.dir / "metrics.jsonl")
    ref_train, new_train = [r for r in ref if "sup" in r], [r for r in new if "sup" in r]
    assert [r["iter"] for r in new_train] == list(range(1, TWO_ITERS + 1))
    losses = ("sup", "unsup", "contrast", "total", "lr", "lambda", "agreement", "unsup_weight")
    for x, y in zip(ref_train, new_train):
        assert [y[k] for k in losses] == [x[k] for k in losses], x["iter"]
    s_ref = json.loads((straight_two.dir / "summary.json").read_text())
    s_new = json.loads((stops.dir / "summary.json").read_text())
    assert s_new["world_size"] == 2 and s_new["iterations"] == TWO_ITERS
    assert s_new["miou"] == s_ref["miou"] and s_new["per_class_iou"] == s_ref["per_class_iou"]


# ------------------------------------------------------------------------------ rerun, resume


@pytest.mark.slow
def test_rerun_of_a_finished_run_evaluates_and_reports_the_same_summary(
    straight: SimpleNamespace, tmp_path: Path
) -> None:
    """Running the same command again in a finished run's folder: no step, one evaluation of
    the saved result, the same summary (exit 0), the checkpoint untouched. (It used to end in
    an UnboundLocalError: the report read names only the loop set.) ``wall_seconds`` is the
    training time, the value the final checkpoint holds: the rerun trains nothing and adds
    nothing (it once added its evaluation, so it could be below the first summary's value,
    taken after the checkpoint was written)."""
    work_dir = copy_run(straight.dir, tmp_path / "again")
    before = (work_dir / "latest.pth").read_bytes()
    argv = ["--work-dir", str(work_dir), *straight.argv[2:]]
    res = train_here("mix_label", argv)
    check_ok(res)
    assert "the run is complete (iteration 4 of 4): evaluating its teacher" in res.stdout
    first = json.loads((straight.dir / "summary.json").read_text())
    again = json.loads((work_dir / "summary.json").read_text())
    assert again == first
    assert (work_dir / "latest.pth").read_bytes() == before
    saved = torch.load(work_dir / "latest.pth", map_location="cpu", weights_only=True)
    assert first["wall_seconds"] == saved["wall_seconds"] > 0
    records = read_jsonl(work_dir / "metrics.jsonl")
    assert records == read_jsonl(straight.dir / "metrics.jsonl")  # no step, no new record


def test_checkpoint_holds_what_a_resume_reads() -> None:
    """No entry that nothing reads: the EMA step and the epoch follow from the iteration, the
    per-step seeds replace a generator state. The number of processes is recorded."""
    from engine.run import build_run
    from utils.strategies import get_strategy

    cfg = load_config(DEFAULT_CONFIG, [*TINY, "Network.rep_dim=8"])
    datasets = {"labeled": list(range(16)), "unlabeled": list(range(32)), "valid": []}
    with one_thread():
        run = build_run(cfg, get_strategy("mix_label"), torch.device("cpu"), 0, 1, datasets)
    state = make_checkpoint(run)
    assert not {"ema_step", "epoch", "rng"} & set(state)
    assert state["world_size"] == 1 and state["iteration"] == 0


@pytest.mark.slow
def test_an_older_checkpoint_still_resumes_exactly(
    half: SimpleNamespace, straight: SimpleNamespace, tmp_path: Path
) -> None:
    """A checkpoint as written before: with ``ema_step``, ``epoch``, ``rng``, without
    ``world_size``. It resumes (saying it cannot check the number of processes) and ends
    with the weights of the straight run."""
    work_dir = copy_run(half.dir, tmp_path / "old")
    state = load_state(work_dir / "latest.pth")
    del state["world_size"]
    state.update(ema_step=state["iteration"], epoch=0, rng={"torch": torch.get_rng_state()})
    torch.save(state, work_dir / "latest.pth")
    res = train_here("mix_label", ["--work-dir", str(work_dir), *straight.argv[2:]])
    check_ok(res)
    assert "does not record its number of processes; this run has 1" in res.stdout
    a, b = load_state(straight.dir / "latest.pth"), load_state(work_dir / "latest.pth")
    for key in ("student", "teacher"):
        assert model_equal(a[key], b[key], atol=0) == [], key


@pytest.mark.slow
def test_resume_refuses_a_changed_total_iter_naming_it(
    half: SimpleNamespace, tiny_split: Path, tmp_path: Path
) -> None:
    """The poly schedule (and the end of the run) would change under a half-trained run."""
    work_dir = copy_run(half.dir, tmp_path / "run")
    before = snapshot(work_dir)
    argv = ["--work-dir", str(work_dir), *overrides(tiny_split, "Training.total_iter=6")]
    res = train_here("mix_label", argv)
    check_error_line(res, str(work_dir / "latest.pth"), "Training.total_iter (4 -> 6)")
    assert "--allow-changes" in res.stderr
    assert snapshot(work_dir) == before


@pytest.mark.slow
def test_allow_changes_extends_the_run_and_logs_each_change(
    half: SimpleNamespace, tiny_split: Path, tmp_path: Path
) -> None:
    """``--allow-changes``: the run goes on to the new total with the new schedule, the log
    names each changed key; a key that may change (the log interval) is not named."""
    work_dir = copy_run(half.dir, tmp_path / "run")
    extra = ["Training.total_iter=6", "Optim.min_lr=0.002", "Training.log_interval=2"]
    argv = ["--allow-changes", "--work-dir", str(work_dir), *overrides(tiny_split, *extra)]
    res = train_here("mix_label", argv)
    check_ok(res)
    note = "resuming with changed settings (--allow-changes): "
    lines = [s for s in res.stdout.splitlines() if s.startswith(note)]
    assert lines == [f"{note}Optim.min_lr (0.0001 -> 0.002), Training.total_iter (4 -> 6)"]
    assert note in (work_dir / "log.txt").read_text()
    assert json.loads((work_dir / "summary.json").read_text())["iterations"] == 6
    opt = load_config(DEFAULT_CONFIG)["Optim"]
    resumed = [r for r in read_jsonl(work_dir / "metrics.jsonl") if "sup" in r and r["iter"] > 2]
    assert [r["iter"] for r in resumed] == [4, 6]  # every 2 iterations now
    # the schedule of the new total from the resume on (the log averages two steps' lr)
    for r in resumed:
        lrs = [poly(opt["lr"], it, 6, opt["power"], 0.002) for it in (r["iter"] - 2, r["iter"] - 1)]
        assert r["lr"] == pytest.approx(sum(lrs) / 2, rel=1e-9)


def test_check_resume_rules() -> None:
    """Free keys change silently; other keys and another number of processes are refused
    (or, allowed, logged); a finished run has nothing left to train, so its number of
    processes may differ; a checkpoint that does not record it is resumed with a note."""
    from engine.resume import check_resume

    cfg = load_config(DEFAULT_CONFIG, TINY)
    saved = load_config(DEFAULT_CONFIG, [*TINY, "Training.log_interval=7", "Dataset.num_workers=3"])
    state = {"config": saved, "iteration": 2, "world_size": 1}
    path = Path("run/latest.pth")
    assert check_resume(state, cfg, 1, path, allow=False) == []
    for extra in ("Loss.temp=0.4", "Training.amp=false", "EMA.alpha=0.9"):
        key = extra.split("=")[0]
        changed = load_config(DEFAULT_CONFIG, [*TINY, extra])
        with pytest.raises(UserError, match=key):
            check_resume(state, changed, 1, path, allow=False)
        (note,) = check_resume(state, changed, 1, path, allow=True)
        assert key in note and "--allow-changes" in note
    with pytest.raises(UserError, match=r"processes \(1 -> 4"):
        check_resume(state, cfg, 4, path, allow=False)
    finished = {**state, "iteration": cfg["Training"]["total_iter"]}
    assert check_resume(finished, cfg, 4, path, allow=False) == []
    old = {"config": saved, "iteration": 2}
    assert check_resume(old, cfg, 2, path, allow=False) == [
        "run/latest.pth does not record its number of processes; this run has 2"
    ]


def test_process_count_change_is_refused_before_anything_starts(
    half: SimpleNamespace, tiny_split: Path, tmp_path: Path
) -> None:
    """1 -> 2 processes, as torchrun (its WORLD_SIZE) or --nproc-per-node would start them:
    one line naming what would change; under torchrun it is printed once per machine (local
    rank 0), the other processes exit 2 silently."""
    work_dir = copy_run(half.dir, tmp_path / "run")
    before = snapshot(work_dir)
    argv = ["--work-dir", str(work_dir), *overrides(tiny_split)]
    expected = (
        "processes (1 -> 2: effective batch 2x1 -> 2x2 images per loader, an epoch 8 -> 4 "
        "iterations, another data order)"
    )
    torchrun_env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    res = train_here("mix_label", argv, torchrun_env)
    check_error_line(res, str(work_dir / "latest.pth"), expected, "--allow-changes")
    quiet = train_here("mix_label", argv, {**torchrun_env, "RANK": "1", "LOCAL_RANK": "1"})
    assert quiet.returncode == 2 and quiet.stderr == "" and quiet.stdout == ""
    own = train_here("mix_label", ["--nproc-per-node", "2", *argv])
    check_error_line(own, expected)
    assert snapshot(work_dir) == before


@pytest.mark.slow
def test_resume_on_two_processes_with_allow_changes_continues(
    half: SimpleNamespace, tiny_split: Path, tmp_path: Path
) -> None:
    """1 -> 2 with torchrun and --allow-changes: the log says what changes, both processes
    finish the run, the checkpoint records 2 processes."""
    work_dir = copy_run(half.dir, tmp_path / "run")
    argv = ["mix_label.py", "--allow-changes", "--work-dir", str(work_dir)]
    proc = torchrun([*argv, *overrides(tiny_split)])
    check_ok(proc)
    assert (
        "resuming on 2 process(es) instead of 1 (--allow-changes): effective batch 2x1 -> 2x2 "
        "images per loader, an epoch 8 -> 4 iterations, another data order" in proc.stdout
    )
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 4
    assert load_state(work_dir / "latest.pth")["world_size"] == 2


@pytest.mark.slow
def test_resume_of_a_two_process_run_on_one(
    stops: SimpleNamespace, tiny_split: Path, tmp_path: Path
) -> None:
    """2 -> 1: refused naming the change; with --allow-changes it continues and says so."""
    work_dir = copy_run(stops.first_copy, tmp_path / "run")
    k = load_state(work_dir / "latest.pth")["iteration"]
    before = snapshot(work_dir)
    argv = ["--work-dir", str(work_dir), *two_overrides(tiny_split)]
    change = "effective batch 2x2 -> 2x1 images per loader, an epoch 4 -> 8 iterations"
    check_error_line(train_here("mix_label", argv), f"processes (2 -> 1: {change}")
    assert snapshot(work_dir) == before
    res = train_here("mix_label", ["--allow-changes", *argv])
    check_ok(res)
    assert f"resuming at iteration {k}" in res.stdout
    assert f"resuming on 1 process(es) instead of 2 (--allow-changes): {change}" in res.stdout
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["iterations"] == TWO_ITERS


# ------------------------------------------------------------------------------ writes, data


def full_disk_mkstemp(real):
    """mkstemp whose file exists (so it must be removed) but whose writes fail as on a full
    disk: the descriptor is /dev/full's."""

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), name

    return mkstemp


def unwritable_mkstemp(real):
    def mkstemp(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    return mkstemp


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "reason"),
    [(full_disk_mkstemp, "No space left on device"), (unwritable_mkstemp, "Permission denied")],
    ids=["full_disk", "unwritable_folder"],
)
def test_failing_checkpoint_write_keeps_the_previous_one(
    fault, reason: str, half: SimpleNamespace, tiny_split: Path, tmp_path: Path
) -> None:
    """The next write (best.pth or latest.pth at iteration 4) fails: one line naming the file,
    exit 2; the previous checkpoints are the same bytes and load; no temporary file is left.
    (Simulated: the test runs as root, for whom a read-only folder is still writable.)"""
    work_dir = copy_run(half.dir, tmp_path / "run")
    kept = {p.name: p.read_bytes() for p in work_dir.glob("*.pth")}
    import utils.checkpoint

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils.checkpoint.tempfile, "mkstemp", fault(tempfile.mkstemp))
        res = train_here("mix_label", ["--work-dir", str(work_dir), *overrides(tiny_split)])
    line = check_error_line(res, f"({reason})", "the previous one is kept")
    assert any(f"cannot write {work_dir / name} " in line for name in kept), line
    assert {p.name: p.read_bytes() for p in work_dir.glob("*.pth")} == kept
    assert load_state(work_dir / "latest.pth")["iteration"] == 2
    assert sorted(p.name for p in work_dir.iterdir() if p.name.startswith(".")) == []
    assert not (work_dir / "summary.json").exists()


def private_data_root(fashion_root: Path, tiny_split: Path, dst: Path) -> Path:
    """A copy of the images and labels of the tiny split (the shared demo data stays intact)."""
    ids = sorted({i for f in (tiny_split / "16" / "3407").iterdir() for i in f.read_text().split()})
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClassAug", "png")):
        (dst / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(fashion_root / sub / f"{i}.{ext}", dst / sub / f"{i}.{ext}")
    shutil.copy(fashion_root / ".complete", dst / ".complete")  # a complete FashionScenes root
    return dst


def labeled_images(root: Path, tiny_split: Path) -> list[Path]:
    ids = (tiny_split / "16" / "3407" / "labeled_filename.txt").read_text().split()
    return [root / "JPEGImages" / f"{i}.jpg" for i in ids]


@pytest.mark.slow
def test_image_deleted_during_training_ends_with_one_line(
    fashion_root: Path, tiny_split: Path, tmp_path: Path
) -> None:
    """Right after latest.pth of iteration 2 is written every labeled image is deleted; the
    third step's batch names the first image it lacks (the sampler says which)."""
    root = private_data_root(fashion_root, tiny_split, tmp_path / "data")
    images = labeled_images(root, tiny_split)
    work_dir = tmp_path / "run"
    real_save = loop.save

    def save_then_delete(run, work_dir, name):
        real_save(run, work_dir, name)
        if name == "latest.pth" and run.iteration == 2:
            for p in images:
                p.unlink()

    argv = ["--work-dir", str(work_dir), *overrides(tiny_split, f"Dataset.data_dir={root}")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "save", save_then_delete)
        res = train_here("mix_label", argv)
    third = EpochBatchSampler(16, 2, 3407).epoch_batches(0)[2]  # batch 3 of epoch 0
    check_error_line(res, f"image not found: {images[third[0][0]]}")
    assert load_state(work_dir / "latest.pth")["iteration"] == 2
    assert not (work_dir / "summary.json").exists()


@pytest.mark.slow
def test_image_truncated_during_training_with_loader_workers(
    fashion_root: Path, tiny_split: Path, tmp_path: Path
) -> None:
    """Two data-loader workers; once latest.pth exists every labeled image is cut to 100
    bytes. The second epoch (iterations 9-16, beyond what the workers prefetch) reads them
    again, so the run must stop, naming one of them, before it ends."""
    root = private_data_root(fashion_root, tiny_split, tmp_path / "data")
    images = labeled_images(root, tiny_split)
    work_dir = tmp_path / "run"
    extra = [
        f"Dataset.data_dir={root}",
        "Dataset.num_workers=2",
        "Training.total_iter=16",
        "Training.eval_interval=100",
    ]
    cmd = [sys.executable, "mix_label.py", "--work-dir", str(work_dir), *overrides(tiny_split)]
    err = tmp_path / "stderr.txt"
    with open(err, "w") as fe:
        proc = subprocess.Popen(
            [*cmd, *extra], cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=fe
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (work_dir / "latest.pth").exists():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.02)
        for p in images:
            p.write_bytes(p.read_bytes()[:100])
        proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.wait()
    res = SimpleNamespace(returncode=proc.returncode, stdout="", stderr=err.read_text())
    line = check_error_line(res, "cannot read image ")
    assert any(str(p) in line for p in images), line
    state = load_state(work_dir / "latest.pth")
    assert 2 <= state["iteration"] < 16 and state["iteration"] % 2 == 0
    assert not (work_dir / "summary.json").exists()


# ------------------------------------------------------------------------------ signals


def test_signals_within_the_window_are_one_request(monkeypatch) -> None:
    """The first signal asks for a stop; another within WINDOW seconds is the same request; a
    later one interrupts at once, unless the stop checkpoint is written; a forked data-loader
    worker (another pid) ignores them."""
    monkeypatch.setattr(StopRequest, "pid", os.getpid())
    StopRequest.reset()
    try:
        StopRequest.handler(signal.SIGINT)
        assert StopRequest.requested
        StopRequest.handler(signal.SIGINT)  # e.g. forwarded by torchrun's agent: no raise
        StopRequest.first_at -= StopRequest.WINDOW + 0.1
        with pytest.raises(KeyboardInterrupt):
            StopRequest.handler(signal.SIGINT)
        StopRequest.checkpoint_written = True
        StopRequest.handler(signal.SIGTERM)  # exiting anyway: no raise
        StopRequest.reset()
        monkeypatch.setattr(StopRequest, "pid", os.getpid() + 1)
        StopRequest.handler(signal.SIGTERM)
        assert not StopRequest.requested
    finally:
        StopRequest.reset()


# ------------------------------------------------------------------------------ schedule


def fake_run(strategy: str, world: int, *extra: str) -> SimpleNamespace:
    cfg = load_config(DEFAULT_CONFIG, [*TINY, *extra])
    ipe = iters_per_epoch(16, cfg["Dataset"]["batch_size"], world)
    datasets = {"labeled": [0] * 16}
    return SimpleNamespace(
        cfg=cfg,
        config=typed(cfg),
        strategy=STRATEGIES[strategy],
        world=world,
        iters_per_epoch=ipe,
        datasets=datasets,
    )


def test_schedule_lines_give_the_epoch_and_its_ends_in_iterations() -> None:
    ramp = ["Ramp_Scheduler.begin_epoch=1", "Ramp_Scheduler.max_epoch=3", "Loss.warm_up=2"]
    lines = schedule_lines(fake_run("cross_label", 2, "Training.total_iter=10", *ramp))
    assert lines == [
        "an epoch is 4 iterations (16 labeled images / (batch 2 x 2 process(es))); effective "
        "batch 4 labeled + 4 unlabeled images; 10 iterations = 2.5 epochs",
        "contrastive weight: 0 up to iteration 4 (epoch 1), then ramps down from 1 until "
        "iteration 12 (epoch 3, after the last iteration), 0 after",
        "cross_label warm-up: the unsupervised CE learns from logit-space labels until "
        "iteration 8 (epoch 2), from representation-space labels after",
    ]
    # only where they apply: no warm-up for mix_label, no ramp for ori_pseudo, no unlabeled
    # batch for the supervised baseline
    mix = schedule_lines(fake_run("mix_label", 1, *ramp))
    assert len(mix) == 2 and mix[0].startswith("an epoch is 8 iterations") and "ramps" in mix[1]
    assert len(schedule_lines(fake_run("ori_pseudo", 1))) == 1
    (sup,) = schedule_lines(fake_run("supervised", 1))
    assert "effective batch 2 labeled images" in sup


@pytest.mark.slow
def test_the_run_logs_its_schedule(straight_two: SimpleNamespace) -> None:
    log_text = (straight_two.dir / "log.txt").read_text()
    assert "an epoch is 4 iterations (16 labeled images / (batch 2 x 2 process(es)))" in log_text
    assert "effective batch 4 labeled + 4 unlabeled images" in log_text
    assert "contrastive weight: ramps down from 1 until iteration" in log_text


# ------------------------------------------------------------------------------ TensorBoard


@pytest.mark.slow
def test_tensorboard_events_hold_the_logged_scalars(straight: SimpleNamespace) -> None:
    """Every scalar of metrics.jsonl, at its iteration, read back with tensorboard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (straight.dir / "tensorboard").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in read_jsonl(straight.dir / "metrics.jsonl"):
        for key, value in record.items():
            if key != "iter":
                expected.setdefault(key, []).append((record["iter"], value))
    assert {"sup", "unsup", "contrast", "total", "lr", "mask_ratio", "unsup_weight", "miou"} <= set(
        expected
    )
    assert sorted(acc.Tags()["scalars"]) == sorted(expected)
    for key, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in points], key
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), key
