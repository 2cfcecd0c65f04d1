"""End-to-end tests of the training engine and the entry points, on the CPU, with tiny settings.

The four training scripts, ``evaluate.py`` and ``predict.py`` run as subprocesses (two of
them under torchrun, gloo) from the repository root on the demo data (FashionScenes) with a
16 / 32 / 6 image split written here; most bad-input cases call the same ``main`` in this
process instead, to spare a torch import each. Every expected value is derived
independently: the learning rate from the poly formula, the loss total from its terms,
confusion-matrix rows from the label files, the final table from ``summary.json``, resumed
weights from an uninterrupted run, one rank's state from the other's.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from demo.fashion_scenes import FASHION_CLASSES
from engine.config import DEFAULT_CONFIG, load_config
from engine.loop import check_finite
from engine.resume import MODEL_KEYS, check_resume_compatible
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("supervised", "ori_pseudo", "mix_label", "cross_label")
TOTAL_ITER, EVAL_EVERY = 4, 2
# The end-to-end tests train FashionScenes v1 (10 garments) from scratch: the expected values
# below are derived from its label files, and no weights file is read.
TINY = [
    "Dataset.name=fashionscenes",
    "Network.num_class=11",
    "Network.pretrained=",
    "Network.random_init=true",
    "Network.backbone=resnet18",
    "Network.rep_dim=32",
    "Dataset.crop_size=[64,64]",
    "Dataset.batch_size=2",
    "Dataset.num_workers=0",
    "Loss.num_queries=16",
    "Loss.num_negatives=32",
    f"Training.total_iter={TOTAL_ITER}",
    f"Training.eval_interval={EVAL_EVERY}",
    f"Training.save_interval={EVAL_EVERY}",
    "Training.log_interval=1",
]
# cross_label: without warm-up its unsupervised CE uses the representation-space labels.
EXTRA = {"cross_label": ["Loss.warm_up=0"]}
TIMEOUT = 300


# ------------------------------------------------------------------------------ helpers


def split_args(txt_dir: Path, num_labels: int = 16) -> list[str]:
    return [f"Dataset.txt_dir={txt_dir}", f"Dataset.num_labels={num_labels}"]


def train_overrides(strategy: str, txt_dir: Path) -> list[str]:
    return [*TINY, *EXTRA.get(strategy, []), *split_args(txt_dir)]


def env() -> dict[str, str]:
    """The environment of every subprocess: the repository importable, and one compute
    thread per process. On a shared, oversubscribed CPU the spin-waits of a second OpenMP
    thread made each training step 3-20x slower; one thread also keeps the numerics of all
    runs (and of the in-process checks, see ``one_thread``) the same."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def python(args: list[str], timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repository root; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    return python([*launcher, f"--master_port={free_port()}", *args], timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def stderr_lines(text: str) -> list[str]:
    """Non-empty lines; carriage returns (progress bars) split lines too."""
    return [s for s in re.split(r"[\r\n]", text) if s.strip()]


def check_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit status 2 and exactly one stderr line, ``error: ...`` naming every ``names``."""
    lines = stderr_lines(proc.stderr)
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def snapshot(root: Path) -> dict | None:
    """Every entry under ``root`` (hidden ones too): kind, size, mtime, inode, and the bytes
    of small files; the folder's own mtime catches files created and deleted again."""
    if not root.exists():
        return None
    out: dict = {".": root.stat().st_mtime_ns}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        if p.is_dir():
            out[str(p.relative_to(root))] = ("dir", st.st_mtime_ns)
        else:
            small = p.read_bytes() if st.st_size < 1 << 20 else None
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ino, small)
    return out


def clone_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder; big files are hard links (an atomic rewrite would replace the
    link, not the original)."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def poly(base: float, it: int, total: int, power: float, floor: float) -> float:
    return max(base * (1 - it / total) ** power, floor)


def label_counts(fashion_root: Path, ids: list[str], num_class: int) -> np.ndarray:
    """Pixels per class over the label PNGs of ``ids`` (255 = ignore left out)."""
    counts = np.zeros(num_class, dtype=np.int64)
    for name in ids:
        arr = np.asarray(Image.open(fashion_root / "SegmentationClassAug" / f"{name}.png"))
        counts += np.bincount(arr[arr != 255].ravel(), minlength=num_class)[:num_class]
    return counts


def valid_ids(txt_dir: Path) -> list[str]:
    return (txt_dir / "16" / "3407" / "valid_filename.txt").read_text().split()


def parse_table(stdout: str) -> dict[str, float | None]:
    """The last per-class IoU table printed: ``{class or 'mIoU': value or None (n/a)}``."""
    start = stdout.rindex("class")
    table: dict[str, float | None] = {}
    for line in stdout[start:].splitlines()[1:]:
        m = re.match(r"^(.+?)\s+(n/a|\d+\.\d\d)$", line.rstrip())
        if not m:
            break
        table[m.group(1)] = None if m.group(2) == "n/a" else float(m.group(2))
    return table


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def runs(tiny_split: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each strategy trained once, ``python <strategy>.py --work-dir DIR <tiny overrides>``."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for strategy in STRATEGIES:
        work_dir = root / strategy
        overrides = train_overrides(strategy, tiny_split)
        proc = python([f"{strategy}.py", "--work-dir", str(work_dir), *overrides])
        out[strategy] = SimpleNamespace(dir=work_dir, proc=proc, overrides=overrides)
    return out


@pytest.fixture(scope="module")
def plain_eval(runs: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``evaluate.py`` (one process, default mode) on the mix_label run's latest.pth."""
    mix = runs["mix_label"]
    out = tmp_path_factory.mktemp("eval") / "plain.json"
    ckpt = mix.dir / "latest.pth"
    proc = python(["evaluate.py", "--checkpoint", str(ckpt), "--out", str(out), *mix.overrides])
    check_ok(proc)
    return {"proc": proc, "json": json.loads(out.read_text())}


# ------------------------------------------------------------------------------ non-finite


def test_checkpoint_config_lacking_a_key_reads_as_before_the_key() -> None:
    cfg = load_config(DEFAULT_CONFIG)
    assert {"Network.base_width", "Network.decoder_channels"} <= set(MODEL_KEYS)
    check_resume_compatible(copy.deepcopy(cfg), cfg, Path("ok.pth"), MODEL_KEYS)
    old = copy.deepcopy(cfg)  # a checkpoint written before the width keys existed
    del old["Network"]["base_width"], old["Network"]["decoder_channels"]
    with pytest.raises(UserError) as err:
        check_resume_compatible(old, cfg, Path("old.pth"), MODEL_KEYS)
    message = str(err.value)
    assert "old.pth" in message and "\n" not in message
    # written before the width keys existed = the standard network (their defaults)
    assert "Network.base_width (64 -> 16)" in message
    assert "Network.decoder_channels (256 -> 64)" in message
    standard = load_config(
        DEFAULT_CONFIG, ["Network.base_width=64", "Network.decoder_channels=256"]
    )
    check_resume_compatible(old, standard, Path("old.pth"), MODEL_KEYS)
    del old["Dataset"]["split"]  # and before Dataset.split: the seed's folder
    check_resume_compatible(old, standard, Path("old.pth"))


def test_default_work_dir_names_a_split_apart_from_the_seed() -> None:
    from engine.cli import default_work_dir
    from utils.strategies import get_strategy

    mix = get_strategy("mix_label")
    cfg = load_config(DEFAULT_CONFIG, ["Seed=1"])
    name = cfg["Dataset"]["name"]  # the demo's
    assert default_work_dir(cfg, mix) == Path(f"runs/{name}_mix_label_125_seed1")
    cfg = load_config(DEFAULT_CONFIG, ["Seed=1", "Dataset.split=u2pl"])
    assert default_work_dir(cfg, mix) == Path(f"runs/{name}_mix_label_125_u2pl_seed1")
    same = load_config(DEFAULT_CONFIG, ["Seed=1", "Dataset.split=1"])  # the seed's own folder
    assert default_work_dir(same, mix) == Path(f"runs/{name}_mix_label_125_seed1")
    check_resume_compatible(load_config(DEFAULT_CONFIG, ["Seed=1"]), same, Path("x.pth"))


def test_check_finite_names_iteration_and_every_term() -> None:
    run = SimpleNamespace(iteration=6)
    check_finite(run, {"sup": 1.0, "unsup": 0.5, "contrast": 2.0, "total": 3.5, "lr": math.inf})
    for bad in (math.nan, math.inf, -math.inf):
        values = {"sup": 1.0, "unsup": bad, "contrast": 2.0, "total": 3.0}
        with pytest.raises(UserError) as info:
            check_finite(run, values)
        msg = str(info.value)
        assert "iteration 7" in msg  # the step that was being taken (iteration is 0-based)
        for k, v in values.items():
            assert f"{k}={v}" in msg
        assert "\n" not in msg


@pytest.mark.slow
def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(
    tiny_split: Path, tmp_path: Path
) -> None:
    """A learning rate of 1e30 makes the second step's forward overflow."""
    work_dir = tmp_path / "nan"
    overrides = [
        *train_overrides("ori_pseudo", tiny_split),
        "Optim.lr=1e30",
        "Training.total_iter=6",
        "Training.eval_interval=100",
        "Training.save_interval=1",
    ]
    proc = python(["ori_pseudo.py", "--work-dir", str(work_dir), *overrides])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [s for s in stderr_lines(proc.stderr) if "error" in s]
    assert len(errors) == 1 and errors[0].startswith("error: non-finite loss at iteration ")
    m = re.match(r"error: non-finite loss at iteration (\d+): (.*); ", errors[0])
    assert m, errors[0]
    bad_iter = int(m.group(1))
    terms = dict(kv.split("=") for kv in m.group(2).split(", "))
    assert set(terms) == {"sup", "unsup", "contrast", "total"}
    assert not math.isfinite(float(terms["total"]))
    assert 2 <= bad_iter <= 6
    # The last good checkpoint stays; nothing after it was recorded.
    state = load_state(work_dir / "latest.pth")
    assert state["iteration"] == bad_iter - 1
    assert not (work_dir / "summary.json").exists()
    train_recs = [r for r in read_jsonl(work_dir / "metrics.jsonl") if "sup" in r]
    assert [r["iter"] for r in train_recs] == list(range(1, bad_iter))
    assert all(math.isfinite(r["total"]) for r in train_recs)


# ------------------------------------------------------------------------------ training


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_entry_script_writes_every_file(strategy: str, runs: dict) -> None:
    r = runs[strategy]
    check_ok(r.proc)
    d = r.dir
    for name in (
        "config.yaml",
        "log.txt",
        "metrics.jsonl",
        "latest.pth",
        "best.pth",
        "summary.json",
    ):
        assert (d / name).is_file(), name

    # config.yaml: exactly the validated config of the command line.
    cfg = load_config(DEFAULT_CONFIG, r.overrides)
    assert yaml.safe_load((d / "config.yaml").read_text()) == cfg
    opt, ramp = cfg["Optim"], cfg["Ramp_Scheduler"]

    # metrics.jsonl: one training record per iteration, one eval record per evaluation.
    records = read_jsonl(d / "metrics.jsonl")
    train_recs = [x for x in records if "sup" in x]
    eval_recs = [x for x in records if "miou" in x]
    assert len(train_recs) + len(eval_recs) == len(records)
    assert [x["iter"] for x in train_recs] == list(range(1, TOTAL_ITER + 1))
    assert [x["iter"] for x in eval_recs] == list(range(EVAL_EVERY, TOTAL_ITER + 1, EVAL_EVERY))
    for x in train_recs:
        it = x["iter"] - 1  # the lr of a step is set before the step
        assert x["lr"] == pytest.approx(
            poly(opt["lr"], it, TOTAL_ITER, opt["power"], opt["min_lr"]), rel=1e-9
        )
        assert x["sec_per_iter"] > 0 and x["data_time"] >= 0
        assert x["epoch"] == 0  # 16 labeled / batch 2 = 8 iterations per epoch
        assert math.isfinite(x["sup"]) and x["sup"] > 0
        if strategy == "supervised":
            assert not {"unsup", "contrast", "mask_ratio", "unsup_weight", "lambda"} & set(x)
            assert "agreement" not in x
            assert x["total"] == pytest.approx(x["sup"], rel=1e-6)
            continue
        # ramp-down at epoch 0 = max_value * exp(ramp_mult * 0) (begin_epoch 0); 1 for ori_pseudo
        lam = 1.0 if strategy == "ori_pseudo" else ramp["max_value"]
        assert x["lambda"] == pytest.approx(lam)
        assert x["unsup"] >= 0 and x["contrast"] >= 0 and 0 <= x["mask_ratio"] <= 1
        assert x["unsup_weight"] >= 0  # the paper's weight may exceed 1
        if x["unsup_weight"] == 0:  # every image weighs 0: the unsupervised CE is 0
            assert x["unsup"] == 0
        total = x["sup"] + x["unsup"] + x["lambda"] * x["contrast"]
        assert x["total"] == pytest.approx(total, rel=1e-5)
        if strategy == "ori_pseudo":
            assert "agreement" not in x
        else:
            assert 0 <= x["agreement"] <= 1

    # summary.json agrees with the eval records and with itself.
    s = json.loads((d / "summary.json").read_text())
    assert s["strategy"] == strategy
    assert s["iterations"] == TOTAL_ITER
    assert s["world_size"] == 1 and s["num_labels"] == 16 and s["dataset"] == "fashionscenes"
    assert 0 <= s["miou"] <= s["best_miou"] <= 100
    assert s["miou"] == pytest.approx(eval_recs[-1]["miou"], abs=1e-9)
    assert s["best_miou"] == pytest.approx(max(x["miou"] for x in eval_recs), abs=1e-9)
    running = [max(x["miou"] for x in eval_recs[: k + 1]) for k in range(len(eval_recs))]
    assert [x["best_miou"] for x in eval_recs] == pytest.approx(running, abs=1e-9)
    assert list(s["per_class_iou"]) == list(FASHION_CLASSES)
    present = [v for v in s["per_class_iou"].values() if v is not None]
    assert all(0 <= v <= 100 for v in present)
    assert s["miou"] == pytest.approx(sum(present) / len(present), abs=1e-9)

    # The final table on stdout is the summary's.
    which = "student" if strategy == "supervised" else "teacher"
    assert f"final evaluation of the {which}" in r.proc.stdout
    table = parse_table(r.proc.stdout)
    assert list(table) == [*FASHION_CLASSES, "mIoU"]
    for name, v in s["per_class_iou"].items():
        assert (table[name] is None) == (v is None)
        if v is not None:
            assert table[name] == pytest.approx(v, abs=0.0051)
    assert table["mIoU"] == pytest.approx(s["miou"], abs=0.0051)
    log_text = (d / "log.txt").read_text()
    assert f"iter {TOTAL_ITER}" in log_text and "mIoU" in log_text

    # Checkpoints: latest = the end of training; best = the first evaluation at the best mIoU.
    latest = load_state(d / "latest.pth")
    assert latest["iteration"] == TOTAL_ITER and latest["strategy"] == strategy
    assert latest["config"] == cfg
    proto = latest["prototypes"]["proto"]
    assert proto.shape == (len(FASHION_CLASSES), cfg["Network"]["rep_dim"])
    assert torch.isfinite(proto).all()
    # supervised never computes the contrastive loss: its prototypes stay at zero
    assert bool((proto != 0).any()) == (strategy != "supervised")
    best = load_state(d / "best.pth")
    best_iter = next(x["iter"] for x in eval_recs if x["miou"] == max(y["miou"] for y in eval_recs))
    assert best["iteration"] == best_iter
    assert best["best_miou"] * 100 == pytest.approx(s["best_miou"], abs=1e-9)


# ------------------------------------------------------------------------------ resume


def model_equal(a: dict, b: dict, atol: float = 1e-6) -> list[str]:
    """Keys whose tensors differ (shape, or values beyond ``atol``)."""
    assert a.keys() == b.keys()
    return [
        k
        for k in a
        if a[k].shape != b[k].shape
        or not torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol)
    ]


@pytest.mark.slow
def test_kill_and_resume_equals_straight_run(runs: dict, tiny_split: Path, tmp_path: Path) -> None:
    """mix_label, 2N steps straight (the ``runs`` fixture) vs N steps, SIGKILL, rerun."""
    ref = runs["mix_label"]
    check_ok(ref.proc)
    work_dir = tmp_path / "killed"
    cmd = [sys.executable, "mix_label.py", "--work-dir", str(work_dir), *ref.overrides]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (work_dir / "latest.pth").exists():  # written at iteration N = EVAL_EVERY
            assert proc.poll() is None, "the run ended before writing latest.pth"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    assert not (work_dir / "summary.json").exists()
    killed = load_state(work_dir / "latest.pth")
    assert killed["iteration"] == EVAL_EVERY
    assert killed["wall_seconds"] > 0

    resumed = python(cmd[1:])
    check_ok(resumed)
    assert f"resuming at iteration {EVAL_EVERY}" in resumed.stdout
    a, b = load_state(ref.dir / "latest.pth"), load_state(work_dir / "latest.pth")
    assert a["iteration"] == b["iteration"] == TOTAL_ITER
    assert model_equal(a["teacher"], b["teacher"]) == []
    assert model_equal(a["student"], b["student"]) == []
    assert torch.allclose(a["prototypes"]["proto"], b["prototypes"]["proto"], rtol=0, atol=1e-6)
    # The same losses step by step (the killed part and the resumed part).
    losses = ("sup", "unsup", "contrast", "total", "lr", "agreement")
    ref_recs = [x for x in read_jsonl(ref.dir / "metrics.jsonl") if "sup" in x]
    new_recs = [x for x in read_jsonl(work_dir / "metrics.jsonl") if "sup" in x]
    assert [x["iter"] for x in new_recs] == [x["iter"] for x in ref_recs]
    for x, y in zip(ref_recs, new_recs):
        assert [y[k] for k in losses] == pytest.approx([x[k] for k in losses], rel=1e-5, abs=1e-6)
    s_ref = json.loads((ref.dir / "summary.json").read_text())
    s_new = json.loads((work_dir / "summary.json").read_text())
    assert s_new["miou"] == pytest.approx(s_ref["miou"], abs=1e-6)
    # The summary counts the training time of the killed process too.
    assert s_new["wall_seconds"] > killed["wall_seconds"]


@pytest.mark.slow
def test_ctrl_c_writes_latest_and_the_run_resumes(
    runs: dict, tiny_split: Path, tmp_path: Path
) -> None:
    """SIGINT (Ctrl-C) finishes the current step, writes latest.pth at that iteration,
    exits 130; rerunning resumes there and ends with the weights of the straight run."""
    ref = runs["mix_label"]
    check_ok(ref.proc)
    work_dir = tmp_path / "interrupted"
    overrides = [o for o in ref.overrides if not o.startswith("Training.save_interval")]
    overrides.append(f"Training.save_interval={10 * TOTAL_ITER}")  # only the Ctrl-C writes
    overrides = [o for o in overrides if not o.startswith("Training.eval_interval")]
    overrides.append(f"Training.eval_interval={TOTAL_ITER}")
    cmd = [sys.executable, "mix_label.py", "--work-dir", str(work_dir), *overrides]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        metrics = work_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):  # a step finished
            assert proc.poll() is None, "the run ended before its first logged step"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    state = load_state(work_dir / "latest.pth")
    assert 1 <= state["iteration"] < TOTAL_ITER
    assert f"holds iteration {state['iteration']}" in err
    assert not (work_dir / "summary.json").exists()

    resumed = python(cmd[1:])
    check_ok(resumed)
    assert f"resuming at iteration {state['iteration']}" in resumed.stdout
    a, b = load_state(ref.dir / "latest.pth"), load_state(work_dir / "latest.pth")
    assert b["iteration"] == TOTAL_ITER
    assert model_equal(a["teacher"], b["teacher"]) == []
    assert torch.allclose(a["prototypes"]["proto"], b["prototypes"]["proto"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ bad input


def in_process(module, argv: list[str], capsys, monkeypatch) -> SimpleNamespace:
    """``module.main(argv)`` in this process (what the script's ``__main__`` passes to
    ``sys.exit``), from the repository root; stdout / stderr captured. Much cheaper than a
    subprocess (no torch import); a few cases below also run as real processes."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(torch, "set_flush_denormal", lambda mode: True)  # process-global
    capsys.readouterr()
    try:
        code = module.main(*argv)
    except SystemExit as stop:  # a command-line error (argparse)
        code = stop.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


# (name, script, extra args, run folder: "new" | "previous" | "corrupt", what the line names,
#  run as a real process?)
BAD_INPUTS = [
    (
        "missing_dataset_root",
        "mix_label",
        [
            "Dataset.name=voc",
            "Dataset.data_dir=/nonexistent",
            "Network.num_class=21",
            "Dataset.txt_dir=VOC_split",
            "Dataset.num_labels=92",
        ],
        "new",
        ["Dataset.data_dir", "/nonexistent"],
        False,
    ),
    (
        "missing_split_new",
        "mix_label",
        ["NUM_LABELS=17"],
        "new",
        ["17/3407", "python -m demo.fashion_scenes --write-splits --num-labels 17 --seeds 3407"],
        False,
    ),
    ("missing_split_previous", "mix_label", ["EMPTY_TXT_DIR"], "previous", ["16/3407"], False),
    (
        "missing_config",
        "mix_label",
        ["--config", "/nonexistent.yaml"],
        "previous",
        ["/nonexistent.yaml"],
        True,
    ),
    ("bad_config_value", "mix_label", ["Loss.temp=-1"], "previous", ["Loss.temp", "-1"], False),
    ("unknown_config_key", "mix_label", ["Loss.tmp=0.5"], "new", ["Loss.tmp"], False),
    ("corrupt_latest", "mix_label", [], "corrupt", ["latest.pth"], True),
    (
        "other_model_latest",
        "mix_label",
        ["Network.backbone=resnet34", "Network.rep_dim=16"],
        "previous",
        ["latest.pth", "Network.backbone", "Network.rep_dim"],
        False,
    ),
    (
        "other_width_latest",
        "mix_label",
        ["Network.base_width=8", "Network.decoder_channels=32"],
        "previous",
        ["latest.pth", "Network.base_width", "Network.decoder_channels"],
        False,
    ),
    ("other_strategy_latest", "ori_pseudo", [], "previous", ["latest.pth", "mix_label"], False),
    (
        "other_split_latest",
        "mix_label",
        ["Dataset.split=u2pl"],
        "previous",
        ["latest.pth", "Dataset.split ('3407' -> 'u2pl')"],
        False,
    ),
    (
        "missing_pretrained",
        "mix_label",
        [
            "Network.pretrained=/nonexistent.pth",
            "Network.random_init=false",
            "Network.base_width=64",
        ],
        "new",  # a new run: the previous one has another width, refused before the weights
        ["/nonexistent.pth"],
        True,
    ),
    (
        "no_resume_with_latest",
        "mix_label",
        ["--no-resume"],
        "previous",
        ["latest.pth", "--no-resume"],
        False,
    ),
    ("fresh_is_renamed", "mix_label", ["--fresh"], "previous", ["--fresh", "--no-resume"], False),
    (
        "paper_flag",
        "mix_label",
        ["--num_labels", "92"],
        "new",
        ["--num_labels", "Dataset.num_labels=92"],
        False,
    ),
    ("misspelt_flag", "mix_label", ["--work_dir=x"], "new", ["did you mean --work-dir?"], False),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_exits_2_and_changes_nothing(
    case, runs: dict, tiny_split: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    name, strategy, extra, where, names, as_process = case
    prev = runs["mix_label"]
    check_ok(prev.proc)
    work_dir = tmp_path / "run"
    if where == "previous":
        clone_run(prev.dir, work_dir)
    elif where == "corrupt":
        clone_run(prev.dir, work_dir)
        (work_dir / "latest.pth").unlink()  # a hard link: replace it, leave the original alone
        (work_dir / "latest.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    args = [*TINY, *split_args(tiny_split)]
    for item in extra:
        if item == "NUM_LABELS=17":
            args += split_args(tiny_split, 17)
        elif item == "EMPTY_TXT_DIR":
            (tmp_path / "empty_split").mkdir()
            args += split_args(tmp_path / "empty_split")
        else:
            args.append(item)
    argv = ["--work-dir", str(work_dir), *args]
    before = snapshot(work_dir)
    if as_process:
        proc = python([f"{strategy}.py", *argv], timeout=120)
    else:
        from engine import cli as engine

        proc = in_process(engine, [strategy, argv], capsys, monkeypatch)
    check_one_line_error(proc, *names)
    if where == "new":
        assert before is None and not work_dir.exists(), "the run folder was created"
    else:
        assert "latest.pth" in before
        assert snapshot(work_dir) == before


# ------------------------------------------------------------------------------ run folder


def test_config_path_is_the_run_folders_own(tmp_path: Path) -> None:
    from engine.cli import config_path, parse_args

    run = tmp_path / "run"
    assert config_path(parse_args("mix_label", ["--work-dir", str(run)])) == DEFAULT_CONFIG
    run.mkdir()
    (run / "config.yaml").write_text("Seed: 1\n")
    assert config_path(parse_args("mix_label", ["--work-dir", str(run)])) == run / "config.yaml"
    given = parse_args("mix_label", ["--work-dir", str(run), "--config", "configs/voc.yaml"])
    assert config_path(given) == Path("configs/voc.yaml")
    assert config_path(parse_args("mix_label", [])) == DEFAULT_CONFIG


@pytest.mark.slow
def test_a_run_folder_resumes_with_its_own_config(
    runs: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    """``--work-dir X`` alone resumes X with X/config.yaml (the tiny network and split were
    never repeated); the refusal rules for changed keys are those of --config."""
    from engine import cli as engine

    work_dir = tmp_path / "run"
    shutil.copytree(runs["mix_label"].dir, work_dir)
    refused = in_process(
        engine,
        ["mix_label", ["--work-dir", str(work_dir), "Network.backbone=resnet34"]],
        capsys,
        monkeypatch,
    )
    check_one_line_error(refused, "latest.pth", "Network.backbone ('resnet18' -> 'resnet34')")
    # extending the run changes a training key: allowed with --allow-changes (issue 13's rule)
    extend = ["--work-dir", str(work_dir), "--allow-changes", "Training.total_iter=5"]
    proc = python(["mix_label.py", *extend])
    check_ok(proc)
    assert f"resuming at iteration {TOTAL_ITER}" in proc.stdout
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["iterations"] == 5
    remembered = yaml.safe_load((work_dir / "config.yaml").read_text())
    assert remembered["Training"]["total_iter"] == 5  # the last start's overrides
    assert remembered["Network"]["rep_dim"] == 32 and remembered["Dataset"]["batch_size"] == 2


# ------------------------------------------------------------------------------ evaluate


@pytest.mark.slow
def test_evaluate_matches_training_summary(
    runs: dict, plain_eval: dict, fashion_root: Path, tiny_split: Path
) -> None:
    summary = json.loads((runs["mix_label"].dir / "summary.json").read_text())
    result = plain_eval["json"]
    assert result["mode"] == "whole" and result["model"] == "teacher" and not result["flip"]
    assert result["iteration"] == TOTAL_ITER
    assert result["miou"] == pytest.approx(summary["miou"], abs=1e-6)
    cm = np.asarray(result["confusion_matrix"])
    assert cm.shape == (len(FASHION_CLASSES),) * 2
    counts = label_counts(fashion_root, valid_ids(tiny_split), len(FASHION_CLASSES))
    assert cm.sum(1).tolist() == counts.tolist()  # rows: every labelled pixel exactly once
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    iou = inter[union > 0] / union[union > 0]
    assert result["miou"] == pytest.approx(100 * iou.mean(), abs=1e-9)
    table = parse_table(plain_eval["proc"].stdout)
    assert table["mIoU"] == pytest.approx(result["miou"], abs=0.0051)


@pytest.mark.slow
def test_evaluate_checks_only_the_model_keys(
    runs: dict, plain_eval: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    """Training-only keys (batch, crop, seed of the split) may differ from the checkpoint's
    config at evaluation; a different model is refused naming the key."""
    import evaluate

    mix = runs["mix_label"]
    ckpt = str(mix.dir / "latest.pth")
    out = tmp_path / "other_batch.json"
    extra = ["Dataset.batch_size=3", "Dataset.crop_size=[48,48]"]
    with one_thread():
        res = in_process(
            evaluate,
            [["--checkpoint", ckpt, "--out", str(out), *mix.overrides, *extra]],
            capsys,
            monkeypatch,
        )
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["miou"] == pytest.approx(
        plain_eval["json"]["miou"], abs=1e-6
    )
    bad = in_process(
        evaluate,
        [["--checkpoint", ckpt, *mix.overrides, "Network.backbone=resnet34"]],
        capsys,
        monkeypatch,
    )
    assert bad.returncode == 2 and "Network.backbone" in bad.stderr and ckpt in bad.stderr


@pytest.mark.slow
def test_evaluate_and_predict_take_the_checkpoints_config(
    runs: dict, plain_eval: dict, fashion_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """No --config, no overrides: the checkpoint's own config, in evaluate.py and predict.py
    alike, also for an older checkpoint whose config lacks a key added since; --config is
    checked against it."""
    import evaluate
    import predict

    state = load_state(runs["mix_label"].dir / "latest.pth")
    del state["config"]["Dataset"]["split"]  # written before Dataset.split existed
    old = tmp_path / "old.pth"
    torch.save(state, old)
    out = tmp_path / "eval.json"
    with one_thread():
        res = in_process(
            evaluate, [["--checkpoint", str(old), "--out", str(out)]], capsys, monkeypatch
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(out.read_text())["miou"] == plain_eval["json"]["miou"]
        image = fashion_root / "JPEGImages" / "val_00000.jpg"
        argv = ["--checkpoint", str(old), "--input", str(image), "--output", str(tmp_path / "p")]
        res = in_process(predict, [argv], capsys, monkeypatch)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "p" / "val_00000.png").is_file()
    for module, args in (
        (evaluate, ["--checkpoint", str(old), "--config", "configs/voc.yaml"]),
        (predict, [*argv, "--config", "configs/voc.yaml"]),
    ):
        bad = in_process(module, [args], capsys, monkeypatch)
        check_one_line_error(bad, str(old), "Network.num_class (11 -> 21)")


def test_weights_that_do_not_fit_are_one_line_naming_keys_and_shapes() -> None:
    from utils.checkpoint import load_weights

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    good = {k: v.clone() for k, v in model.state_dict().items()}
    load_weights(model, good, "ok.pth")
    bad = {**good, "0.weight": torch.zeros(5, 3, 1, 1), "extra.bias": torch.zeros(1)}
    del bad["1.bias"]
    with pytest.raises(UserError) as err:
        load_weights(model, bad, "bad.pth (teacher)")
    message = str(err.value)
    assert "\n" not in message and message.startswith("bad.pth (teacher): ")
    assert "0.weight has shape (5, 3, 1, 1), expected (4, 3, 1, 1)" in message
    assert "missing key 1.bias" in message and "unexpected key extra.bias" in message


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_is_one_line(
    runs: dict, tmp_path: Path, capsys, monkeypatch
) -> None:
    import evaluate
    from engine import cli as engine

    work_dir = tmp_path / "run"
    shutil.copytree(runs["mix_label"].dir, work_dir)
    state = load_state(work_dir / "latest.pth")
    for net in ("student", "teacher"):
        state[net]["classifier.3.weight"] = state[net]["classifier.3.weight"][:5]
    torch.save(state, work_dir / "latest.pth")
    ckpt = str(work_dir / "latest.pth")
    res = in_process(evaluate, [["--checkpoint", ckpt]], capsys, monkeypatch)
    check_one_line_error(res, f"{ckpt} (teacher)", "classifier.3.weight has shape (5, ")
    res = in_process(engine, ["mix_label", ["--work-dir", str(work_dir)]], capsys, monkeypatch)
    check_one_line_error(res, f"{ckpt} (student)", "classifier.3.weight has shape (5, ")


def paper_layout(state: dict) -> dict:
    """Our state dict under the paper code's module names (its DeepLabv3Plus_with_rep:
    resnet_conv1 / resnet_bn1 / resnet_layer1-4, ASPP.convs[0-4] with the image pooling as
    (pool, conv, BN, ReLU), ASPP.project, project, classifier, representation)."""
    out = {}
    for key, value in state.items():
        for ours, theirs in (
            ("backbone.conv1.", "resnet_conv1."),
            ("backbone.bn1.", "resnet_bn1."),
            ("backbone.layer", "resnet_layer"),
            ("aspp.branches.4.conv.0.", "ASPP.convs.4.1."),
            ("aspp.branches.4.conv.1.", "ASPP.convs.4.2."),
            ("aspp.branches.", "ASPP.convs."),
            ("aspp.project.", "ASPP.project."),
        ):
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        out[key] = value
    return out


@pytest.mark.slow
def test_evaluate_and_predict_read_the_paper_codes_checkpoints(
    runs: dict, plain_eval: dict, fashion_root: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """A checkpoint as the paper code saves it (``model``, ``ema_model``, numpy
    ``prototypes``, no config) evaluates to the same mIoU with --config."""
    import evaluate
    import predict

    mix = runs["mix_label"]
    state = load_state(mix.dir / "latest.pth")
    teacher = paper_layout(state["teacher"])
    for key in ("resnet_layer1.0.conv1.weight", "ASPP.convs.4.1.weight", "ASPP.convs.4.2.bias",
                "ASPP.project.0.weight", "classifier.3.bias", "representation.3.weight"):  # fmt: skip
        assert key in teacher, key
    paper = {
        "epoch": 3,
        "model": paper_layout(state["student"]),
        "ema_model": teacher,
        "optimizer": state["optimizer"],
        "lr_scheduler": {"last_epoch": TOTAL_ITER, "base_lrs": [0.02]},
        "prototypes": state["prototypes"]["proto"].numpy(),
    }
    ckpt = tmp_path / "best_model.pth"
    torch.save(paper, ckpt)
    config = str(mix.dir / "config.yaml")
    out = tmp_path / "paper.json"
    with one_thread():
        res = in_process(
            evaluate,
            [["--checkpoint", str(ckpt), "--config", config, "--out", str(out)]],
            capsys,
            monkeypatch,
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(out.read_text())["miou"] == plain_eval["json"]["miou"]
        image = fashion_root / "JPEGImages" / "val_00000.jpg"
        masks = {}
        for name, path, extra in (("paper", ckpt, ["--config", config]),
                                  ("ours", mix.dir / "latest.pth", [])):  # fmt: skip
            argv = [
                "--checkpoint",
                str(path),
                "--input",
                str(image),
                "--output",
                str(tmp_path / name),
            ]
            res = in_process(predict, [[*argv, *extra]], capsys, monkeypatch)
            assert res.returncode == 0, res.stderr
            masks[name] = np.asarray(Image.open(tmp_path / name / "val_00000.png"))
    assert np.array_equal(masks["paper"], masks["ours"])
    res = in_process(evaluate, [["--checkpoint", str(ckpt)]], capsys, monkeypatch)
    check_one_line_error(res, str(ckpt), "holds no config", "--config configs/")
    res = in_process(
        evaluate, [["--checkpoint", str(ckpt), "--config", "configs/voc.yaml"]], capsys, monkeypatch
    )
    check_one_line_error(res, f"{ckpt} (teacher)", "do not fit", "has shape")


def test_checkpoints_with_numpy_arrays_load_safely(tmp_path: Path) -> None:
    """numpy arrays (the paper code's prototypes) load with weights_only, whether numpy 2 or
    numpy 1 (``numpy.core.multiarray``) wrote them; other objects are still refused."""
    import zipfile

    from utils.checkpoint import load_checkpoint

    proto = np.arange(12, dtype=np.float32).reshape(3, 4)
    new = tmp_path / "new.pth"
    torch.save({"prototypes": proto, "epoch": 1}, new)
    old = tmp_path / "old.pth"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(info, data)
    for path in (new, old):
        assert np.array_equal(load_checkpoint(path, required=())["prototypes"], proto)
    evil = tmp_path / "evil.pth"
    torch.save({"x": SimpleNamespace(a=1)}, evil)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(evil, required=())


def test_evaluate_flip_and_scales(
    runs: dict, plain_eval: dict, tmp_path: Path, fashion_root: Path, tiny_split: Path
) -> None:
    mix = runs["mix_label"]
    out = tmp_path / "flip.json"
    args = ["--checkpoint", str(mix.dir / "latest.pth"), "--out", str(out), "--flip"]
    proc = python(["evaluate.py", *args, "--scales", "0.75,1.0", *mix.overrides])
    check_ok(proc)
    result = json.loads(out.read_text())
    assert result["flip"] is True and result["scales"] == [0.75, 1.0]
    assert 0 <= result["miou"] <= 100
    cm = np.asarray(result["confusion_matrix"])
    counts = label_counts(fashion_root, valid_ids(tiny_split), len(FASHION_CLASSES))
    assert cm.sum(1).tolist() == counts.tolist()
    assert parse_table(proc.stdout)["mIoU"] == pytest.approx(result["miou"], abs=0.0051)


@pytest.mark.slow
def test_sharded_evaluation_equals_single_process(
    runs: dict, plain_eval: dict, tmp_path: Path
) -> None:
    mix = runs["mix_label"]
    out = tmp_path / "sharded.json"
    args = ["--checkpoint", str(mix.dir / "latest.pth"), "--out", str(out), *mix.overrides]
    proc = torchrun(["evaluate.py", *args])
    check_ok(proc)
    # One process reports: one table, one JSON file written (not one per process).
    assert proc.stdout.count("mIoU") == 1, proc.stdout
    assert [s for s in proc.stdout.splitlines() if s.startswith("wrote ")] == [f"wrote {out}"]
    sharded = json.loads(out.read_text())
    assert sharded["confusion_matrix"] == plain_eval["json"]["confusion_matrix"]
    assert sharded["miou"] == plain_eval["json"]["miou"]


# ------------------------------------------------------------------------------ predict


@pytest.mark.slow
def test_predict_file_and_folder(runs: dict, fashion_root: Path, tmp_path: Path) -> None:
    from engine.evaluation import predict
    from engine.run import build_network_for_eval
    from utils.checkpoint import load_checkpoint

    ckpt = runs["mix_label"].dir / "latest.pth"
    one = fashion_root / "JPEGImages" / "val_00000.jpg"
    folder = tmp_path / "inputs"
    folder.mkdir()
    shutil.copy(one, folder / "a.jpg")
    Image.open(fashion_root / "JPEGImages" / "val_00001.jpg").resize((80, 72)).save(
        folder / "b.png"
    )
    (folder / "notes.txt").write_text("not an image")

    out1 = tmp_path / "out_file"
    proc = python(
        ["predict.py", "--checkpoint", str(ckpt), "--input", str(one), "--output", str(out1)]
    )
    check_ok(proc)
    assert sorted(p.name for p in out1.iterdir()) == ["val_00000.png", "val_00000_overlay.jpg"]

    out2 = tmp_path / "out_folder"
    proc = python(
        ["predict.py", "--checkpoint", str(ckpt), "--input", str(folder), "--output", str(out2)]
    )
    check_ok(proc)
    assert sorted(p.name for p in out2.iterdir()) == [
        "a.png",
        "a_overlay.jpg",
        "b.png",
        "b_overlay.jpg",
    ]

    for src, mask_path in (
        (one, out1 / "val_00000.png"),
        (folder / "a.jpg", out2 / "a.png"),
        (folder / "b.png", out2 / "b.png"),
    ):
        img = Image.open(src)
        mask = Image.open(mask_path)
        assert mask.mode == "P" and mask.size == img.size
        assert np.asarray(mask).max() < len(FASHION_CLASSES)
        overlay = Image.open(mask_path.with_name(mask_path.stem + "_overlay.jpg"))
        assert overlay.size == (2 * img.size[0], img.size[1])

    # The mask is the teacher's argmax on the image, computed here independently.
    state = load_checkpoint(ckpt)
    model = build_network_for_eval(state["config"]).eval()
    model.load_state_dict(state["teacher"])
    img = torch.from_numpy(np.array(Image.open(one).convert("RGB"))).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (img[None].float() / 255 - mean) / std
    with one_thread():
        expected = predict(model, x, "whole").argmax(1)[0].numpy()
    got = np.asarray(Image.open(out1 / "val_00000.png"))
    assert (got == expected).mean() > 0.999
    assert np.array_equal(np.asarray(Image.open(out2 / "a.png")), got)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "empty_folder"])
def test_predict_bad_input(kind: str, runs: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = runs["mix_label"].dir / "latest.pth"
    bad = tmp_path / "nothing_here"
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--input", str(bad), "--output", str(out)]
    if kind == "missing":
        proc = python(["predict.py", *argv])
    else:
        import predict

        bad.mkdir()
        proc = in_process(predict, [argv], capsys, monkeypatch)
    check_one_line_error(proc, "--input", str(bad))
    assert not out.exists()


# ------------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_process_training_keeps_ranks_identical(tiny_split: Path, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node=2 mix_label.py`` (gloo) through tests/dist_probe.py, which
    runs the script unchanged and then saves each rank's student, teacher and prototypes.

    Parameters agree through DDP's gradient all-reduce and the EMA, prototypes through their
    all-reduced class sums, BatchNorm running statistics through the broadcast before every
    evaluation (a run ends with one): all bitwise."""
    work_dir, probe_dir = tmp_path / "run", tmp_path / "probe"
    overrides = train_overrides("mix_label", tiny_split)
    probe = str(REPO / "tests" / "dist_probe.py")
    proc = torchrun(
        [probe, str(probe_dir), "mix_label.py", "--work-dir", str(work_dir), *overrides]
    )
    check_ok(proc)
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == TOTAL_ITER
    assert (
        summary["strategy"] == "mix_label" and 0 <= summary["miou"] <= summary["best_miou"] <= 100
    )
    for name in ("config.yaml", "log.txt", "metrics.jsonl", "latest.pth", "best.pth"):
        assert (work_dir / name).is_file(), name
    assert [r["iter"] for r in read_jsonl(work_dir / "metrics.jsonl") if "sup" in r] == [1, 2, 3, 4]

    r0, r1 = load_state(probe_dir / "rank0.pt"), load_state(probe_dir / "rank1.pt")
    assert r0["world"] == r1["world"] == 2
    assert r0["iteration"] == r1["iteration"] == TOTAL_ITER
    for net in ("student", "teacher"):
        assert r0[net].keys() == r1[net].keys()
        differ = [k for k in r0[net] if not torch.equal(r0[net][k], r1[net][k])]
        assert differ == [], f"{net} differs between ranks: {differ[:5]}"
    assert torch.equal(r0["prototypes"], r1["prototypes"])
    assert bool((r0["prototypes"] != 0).any())
    # What rank 0 saved is what the two processes had, and what they evaluated.
    saved = load_state(work_dir / "latest.pth")
    assert model_equal(saved["teacher"], r0["teacher"], atol=0) == []
    assert torch.equal(saved["prototypes"]["proto"], r0["prototypes"])
    out = tmp_path / "eval.json"
    ev = python(
        ["evaluate.py", "--checkpoint", str(work_dir / "latest.pth"), "--out", str(out), *overrides]
    )
    check_ok(ev)
    assert json.loads(out.read_text())["miou"] == pytest.approx(summary["miou"], abs=1e-6)

    # The entry script starting its own two processes is the same run as torchrun's.
    own_dir = tmp_path / "own_launch"
    own = python(["mix_label.py", "--nproc-per-node", "2", "--work-dir", str(own_dir), *overrides])
    check_ok(own)
    assert json.loads((own_dir / "summary.json").read_text())["world_size"] == 2
    mine = load_state(own_dir / "latest.pth")
    for key in ("student", "teacher"):
        assert model_equal(mine[key], saved[key], atol=0) == [], key
    assert torch.equal(mine["prototypes"]["proto"], saved["prototypes"]["proto"])


def test_nproc_per_node_values_and_the_flag_removed_for_the_processes() -> None:
    from engine import launch

    assert launch.processes_wanted(None) == 1 and launch.processes_wanted("3") == 3
    expected_auto = torch.cuda.device_count() if torch.cuda.is_available() else 1
    assert launch.processes_wanted("auto") == expected_auto
    for bad in ("0", "-1", "two"):
        with pytest.raises(UserError, match="--nproc-per-node"):
            launch.processes_wanted(bad)
    argv = ["--nproc-per-node", "2", "--work-dir", "x", "--nproc-per-node=4", "Seed=1"]
    assert launch.without_flag(argv) == ["--work-dir", "x", "Seed=1"]


@pytest.mark.slow
def test_two_process_supervised_baseline(tiny_split: Path, tmp_path: Path) -> None:
    """The supervised baseline leaves the representation head out of its loss; under DDP it
    must still train (DDP expects a gradient for every parameter) and finish on both ranks."""
    work_dir = tmp_path / "sup"
    proc = torchrun(
        ["supervised.py", "--work-dir", str(work_dir), *train_overrides("supervised", tiny_split)]
    )
    check_ok(proc)
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == TOTAL_ITER
    assert [r["iter"] for r in read_jsonl(work_dir / "metrics.jsonl") if "sup" in r] == [1, 2, 3, 4]
