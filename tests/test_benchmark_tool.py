"""tools/benchmark.py on the tiny config: the JSON report's schema and values, the table."""
import json
import os

import pytest

from conftest import REPO, TINY_CONFIG, run_cli, tiny_cfg

NUM_CLASSES = (3, 5)


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("benchmark") / "report.json")
    result = run_cli(
        [
            os.path.join("tools", "benchmark.py"),
            "--config-file", TINY_CONFIG,
            "--num-classes", ",".join(map(str, NUM_CLASSES)),
            "--sizes", "64,48x80",
            "--warmup", "1", "--repeats", "2", "--device", "cpu", "--flops-num-classes", "3,5",
            "--output", output,
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as f:
        return json.load(f), result.stdout


def test_report_schema_and_values(benchmark_run):
    report, _ = benchmark_run
    assert report["schema"] == "escnet-benchmark/1"
    assert report["meta_architecture"] == "ESCNet" and report["device"] == "cpu"
    assert report["precisions"] == ["fp32"] and report["threads"] == 2 and report["repeats"] == 2

    yardstick = report["yardstick"]
    assert yardstick["input_size"] == [64, 64]
    assert len(yardstick["times_s"]) == 2 * (1 + 2 * 4)  # once first, then before and after each of the 4 cases
    assert 0 < yardstick["min_s"] <= yardstick["median_s"]

    cases = report["cases"]
    assert [(c["image_size"], c["num_classes"]) for c in cases] == [
        ([48, 80], 3), ([48, 80], 5), ([64, 64], 3), ([64, 64], 5)  # smallest image first
    ]
    for case in cases:
        assert case["view"] == "single" and case["precision"] == "fp32" and len(case["times_s"]) == 2
        assert 0 < case["min_s"] <= case["median_s"] <= max(case["times_s"])
        assert min(yardstick["times_s"]) <= case["yardstick_median_s"] <= max(yardstick["times_s"])
        assert case["ratio_to_yardstick"] == pytest.approx(case["median_s"] / case["yardstick_median_s"])
        # peak RSS of the process: at least the memory in use when the case started (> 100 MB with torch)
        assert case["memory_kind"] == "rss"
        assert case["peak_memory_bytes"] >= case["start_memory_bytes"] > 100 * 2**20
        assert case["image"] == "noise" and case["classes_scored"] == case["num_classes"]  # no rejection

    assert [t["num_classes"] for t in report["text"]] == list(NUM_CLASSES)
    for text in report["text"]:
        assert text["median_s"] > 0
        assert text["per_class_ms"] == pytest.approx(1000 * text["median_s"] / text["num_classes"])


def test_params_and_flops_match_the_model(benchmark_run):
    from detectron2.modeling import build_model

    report, _ = benchmark_run
    model = build_model(tiny_cfg())
    assert report["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = {f["num_classes"]: f["gflops"] for f in report["flops"]}
    assert set(flops) == set(NUM_CLASSES)
    # the per-class stages make the FLOPs grow with the vocabulary; the image encoder does not
    assert flops[5]["total"] > flops[3]["total"] > 0
    assert flops[5]["CLIP image encoder"] == pytest.approx(flops[3]["CLIP image encoder"])


def test_table_lists_every_case(benchmark_run):
    _, stdout = benchmark_run
    assert "yardstick (CLIP image encoder alone, fp32, 64x64)" in stdout
    rows = [line.split() for line in stdout.splitlines() if line.startswith("single")]
    assert [(r[1], int(r[2])) for r in rows] == [("48x80", 3), ("48x80", 5), ("64x64", 3), ("64x64", 5)]


def test_bad_options_are_one_line_errors(tmp_path):
    result = run_cli(
        [os.path.join("tools", "benchmark.py"), "--config-file", TINY_CONFIG, "--views", "tiled"], cwd=REPO
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: --views tiled: use any of single, sliding"


def test_category_rejection_case_reports_the_kept_classes_on_the_regions_image(tmp_path):
    """CER on the flat-regions image: fewer classes keep a non-zero score than the vocabulary has."""
    output = str(tmp_path / "cer.json")
    result = run_cli(
        [
            os.path.join("tools", "benchmark.py"), "--config-file", TINY_CONFIG, "--num-classes", "12",
            "--image", "regions", "--warmup", "0", "--repeats", "1", "--device", "cpu", "--no-flops", "--no-text",
            "--output", output,
            "--opts", "MODEL.ESCNET.CER.ENABLED", "True", "MODEL.ESCNET.CER.TOP_K", "1", "MODEL.ESCNET.CER.AFTER_BLOCK", "0",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output) as f:
        (case,) = json.load(f)["cases"]
    assert case["image"] == "regions"
    assert 0 < case["classes_scored"] < 12
    assert "image: regions" in result.stdout



def _benchmark_module(monkeypatch):
    """tools/benchmark.py as a module (it imports its sibling count_params_flops, as when run)."""
    import importlib.util

    monkeypatch.syspath_prepend(os.path.join(REPO, "tools"))
    spec = importlib.util.spec_from_file_location("escnet_benchmark", os.path.join(REPO, "tools", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_weights_are_seeded_so_runs_repeat(monkeypatch):
    import torch

    benchmark = _benchmark_module(monkeypatch)
    weights = []
    for seed in (0, 0, 1):
        args = benchmark.get_parser().parse_args(["--config-file", TINY_CONFIG, "--device", "cpu", "--seed", str(seed)])
        _, model = benchmark.build_model(args, "single")
        weights.append(model.decoder.state_dict())
    same, other = weights[1], weights[2]
    assert same.keys() == weights[0].keys() and len(same) > 3
    assert all(torch.equal(same[k], weights[0][k]) for k in same)
    assert not all(torch.equal(other[k], weights[0][k]) for k in other)
