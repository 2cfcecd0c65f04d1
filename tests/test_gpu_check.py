"""tools/gpu_check.py without a GPU: the plan, the step runner's records, and the AMP / fp32
agreement on the CPU with a tiny network (the GPU run itself needs CUDA)."""

from __future__ import annotations

import sys
from pathlib import Path

from tools import gpu_check


def test_plan_covers_every_strategy_in_fp32_and_amp_and_the_launch_paths(tmp_path: Path):
    steps = gpu_check.plan("cuda", smoke=False, work=tmp_path)
    names = [s.name for s in steps]
    for strategy in gpu_check.STRATEGIES:
        assert f"benchmark_{strategy}_fp32" in names and f"benchmark_{strategy}_amp" in names
    assert names[-3:] == ["compile", "torchrun_1", "amp_vs_fp32"]
    bench = next(s for s in steps if s.name == "benchmark_mix_label_amp")
    assert "configs/voc.yaml" in bench.cmd and "Training.amp=true" in bench.cmd
    assert "--device" in bench.cmd and bench.cmd[bench.cmd.index("--device") + 1] == "cuda"
    assert sum(s.timeout for s in steps) <= 60 * 60  # bounded; typical runs take ~10 min


def test_run_step_records_json_results_and_failures():
    ok = gpu_check.Step("ok", [sys.executable, "-c", "print('x'); print('{\"a\": 1}')"], 30)
    bad = gpu_check.Step(
        "bad", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 30
    )
    slow = gpu_check.Step("slow", [sys.executable, "-c", "import time; time.sleep(5)"], 1)
    assert gpu_check.run_step(ok)["result"] == {"a": 1}
    record = gpu_check.run_step(bad)
    assert record["exit"] == 3 and record["tail"] == ["boom"]
    assert gpu_check.run_step(slow)["exit"] == 124


def test_amp_agreement_on_cpu_smoke():
    result = gpu_check.agreement("cpu", steps=2, smoke=True)
    assert len(result["total_fp32"]) == len(result["total_amp"]) == 2
    assert result["amp_dtype"] == "torch.bfloat16"
    assert result["max_rel_diff"] < 0.05


def test_smoke_benchmark_step_runs_on_cpu(tmp_path: Path):
    step = next(
        s for s in gpu_check.plan("cpu", True, tmp_path) if s.name == "benchmark_mix_label_fp32"
    )
    record = gpu_check.run_step(step)
    assert record["exit"] == 0, record
    assert record["result"]["strategy"] == "mix_label" and record["result"]["device"] == "cpu"
