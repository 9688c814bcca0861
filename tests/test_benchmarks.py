"""Smoke tests of the benchmark scripts: their tiny modes run and report the expected columns.

No timing is asserted (the machine is shared); only structure, counts and consistency.
"""
from __future__ import annotations

import json

import pytest
import torch

torch.set_num_threads(1)

@pytest.fixture(scope="module")
def bench_cost(benchmark_module):
    return benchmark_module("bench_cost")


@pytest.fixture(scope="module")
def study(benchmark_module):
    return benchmark_module("synthetic_study")


# ----------------------------------------------------------------------------- bench_cost
def test_bench_cost_smoke_reports_times_params_flops_memory(bench_cost, tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nkept text\n")
    r = bench_cost.main(["--smoke", "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert set(r["train_step_s"]) == {"full", "backbone", "head"}
    assert all(v > 0 for v in r["train_step_s"].values())
    p = r["params"]
    assert p["total"] == p["backbone"] + p["guide"] + p["sdtps_block"] + p["bnneck_bn"] + p["classifiers"]
    assert p["sdtps_block"] == p["sdtps_score_mlp"] + p["sdtps_aggregation"]
    # the guide is 3 x (LN 2C + Linear 2C -> C) at C = 48
    c, m = 48, 3
    assert p["guide"] == m * (2 * c * c + c) + m * 2 * 2 * c
    f = r["flops"]
    assert f["train_full"] > f["train_backbone"] > 0 and f["train_head"] > 0
    assert f["train_full"] > f["forward_full"] > f["forward_backbone"] > 0
    assert set(r["memory"]) == {"score_grad=False", "score_grad=True"}
    for mem in r["memory"].values():
        assert mem["saved_bytes"] > 0 and mem["peak_bytes"] > 0 and mem["method"]
    for key in ("time_full_over_backbone", "params_full_over_backbone", "flops_train_full_over_backbone"):
        assert r["ratios"][key] > 1.0 or key.startswith("time")
    for column in ("training step (forward + backward)", "median time (s)", "FLOPs (G)",
                   "ratio full / backbone", "SDTPS block", "whole head", "score_grad=False",
                   "score_grad=True", "Targets"):
        assert column in printed
    assert sum(line.count("PASS") + line.count("FAIL") for line in r["report"].splitlines()) == 6
    text = out.read_text()
    assert text.startswith("# Results\n\nkept text\n")
    assert text.count(bench_cost.BEGIN) == 1 and "Cost of SDTPS" in text
    bench_cost.write_section(str(out), "replaced")  # idempotent section rewrite
    text = out.read_text()
    assert "Cost of SDTPS" not in text and "replaced" in text and "kept text" in text


def test_bench_cost_rejects_bad_arguments(bench_cost):
    with pytest.raises(SystemExit):
        bench_cost.parse_args(["--iters", "0"])


# ----------------------------------------------------------------------------- synthetic study
def test_zero_modalities_wrapper_zeroes_training_and_eval_inputs(study):
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, cam_label=None, return_aux=False):
            seen.append(x)
            return x.sum()

    wrapped = study.ZeroModalities(Probe(), (1, 2))
    x = torch.ones(2, 3, 3, 4, 4)
    for mode in (True, False):
        wrapped.train(mode)
        wrapped(x, cam_label=None, return_aux=True)
    assert all(t[:, 1:].abs().sum() == 0 and (t[:, 0] == 1).all() for t in seen)
    assert (x == 1).all()  # the caller's batch is untouched


@pytest.mark.parametrize("zeroed, kept", [((1, 2), 0), ((0, 1), 2)])
def test_zero_modalities_kept_feature_is_the_kept_modality_blocks(study, zeroed, kept):
    from torchreid_sdtps.models.net import sdtps_vit_tiny

    torch.manual_seed(0)
    net = sdtps_vit_tiny(5, loss="triplet", pretrained=False, img_size=(64, 32), depth=1,
                         embed_dim=48, num_heads=3, num_cameras=2).eval()
    x = torch.randn(2, 3, 3, 64, 32)
    x0 = x.clone()
    x0[:, list(zeroed)] = 0
    wrapped = study.ZeroModalities(net, zeroed, kept_feature=True).eval()
    c, m = 48, 3
    with torch.no_grad():
        full = net(x0)  # concat = [ori (M*C), sdtps (M*C)]
        torch.testing.assert_close(wrapped(x), torch.cat([full[:, kept * c:(kept + 1) * c],
                                                          full[:, (m + kept) * c:(m + kept + 1) * c]], 1))
        net.test_feature = "ori"
        assert wrapped(x).shape == (2, c)
        wrapped.kept_feature = False
        assert wrapped(x).shape == (2, m * c)


def test_study_smoke_runs_every_mechanism_and_writes_the_table(study, tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    res = study.main(["--smoke", "--threads", "1", "--root", str(tmp_path / "data"),
                      "--settings", "sdtps_topk,no_sdtps,gumbel_0.5,ti_only", "--out", str(out),
                      "--runs-file", str(tmp_path / "runs.jsonl")])
    printed = capsys.readouterr().out
    summary = res["summary"]
    labels = list(summary)
    assert labels[0].startswith("untrained")
    trained = {(s["setting"], s["feature"]) for s in summary.values() if s["trained"]}
    assert trained == {("sdtps_topk", "concat"), ("sdtps_topk", "sdtps"), ("sdtps_topk", "ori"),
                       ("no_sdtps", "ori"), ("gumbel_0.5", "concat"), ("ti_only", "kept"),
                       ("ti_only", "concat")}
    for s in summary.values():  # one seed: each row is its run's measured result, in percent
        (run,) = [r for r in res["runs"] if r["setting"] == s["setting"]
                  and r["trained"] == s["trained"]]
        assert s["n"] == 1 and s["mAP"] == pytest.approx(100 * run["results"][s["feature"]]["mAP"])
        assert s["R1"] == pytest.approx(100 * run["results"][s["feature"]]["R1"])
    assert "| setting | seeds | mAP (%) | Rank-1 (%) |" in printed
    assert "machine:" in printed and "command:" in printed and "Verdicts" in printed
    assert "tri-modal SDTPS (concat) vs SDTPS top-K, TI only" in printed
    assert "SDTPS (concat) vs no SDTPS (ori)" in printed
    assert study.BEGIN in out.read_text()
    # --runs-file resumes: nothing is retrained
    again = study.main(["--smoke", "--threads", "1", "--root", str(tmp_path / "data"),
                        "--settings", "sdtps_topk,no_sdtps,gumbel_0.5,ti_only",
                        "--runs-file", str(tmp_path / "runs.jsonl")])
    assert again["runs"] == res["runs"]


def test_study_rejects_unknown_settings(study):
    with pytest.raises(SystemExit):
        study.parse_args(["--settings", "sdtps_topk,hdm"])


# ----------------------------------------------------------------------------- fusion study
@pytest.fixture(scope="module")
def fusion(benchmark_module):
    return benchmark_module("fusion_study")


def test_moe_reference_matches_demo_structure(benchmark_module):
    mr = benchmark_module("moe_reference")
    from torchreid_sdtps.models.net import sdtps_vit_tiny

    assert mr.subsets(3) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    c, e, h, d = 48, 7, 4, 12
    torch.manual_seed(0)
    base = sdtps_vit_tiny(5, loss="triplet", pretrained=False, img_size=(64, 32), depth=1,
                          embed_dim=c, num_heads=3, use_sdtps=False)
    net = mr.MoEReferenceNet(base, 5)
    # HDM: 7 queries + 7 attentions (in-proj 3C^2 + 3C, out-proj C^2 + C); ATM: reduce
    # (7C -> C + BN), q, k (no bias), heads x 7 experts (d^2 + d + BN 2d)
    assert sum(p.numel() for p in net.hdm.parameters()) == e * c + e * (4 * c * c + 4 * c)
    assert sum(p.numel() for p in net.atm.parameters()) == (
        e * c * c + c + 2 * c + 2 * c * c + h * e * (d * d + d + 2 * d))
    assert mr.fusion_parameters(net) == sum(p.numel() for m in (net.hdm, net.atm)
                                            for p in m.parameters())
    x = torch.randn(4, 3, 3, 64, 32)
    (logits, feats), aux = net(x, return_aux=True)
    assert [t.shape for t in logits] == [(4, 5), (4, 5)]
    assert [t.shape for t in feats] == [(4, e * c), (4, 3 * c)]
    assert aux["tokens"] is None and aux["masks"] is None
    gates = net.atm.gates(torch.randn(4, e, c))
    torch.testing.assert_close(gates.sum(-1), torch.ones(4, h))
    net.eval()
    assert net(x).shape == (4, 3 * c + e * c)
    net.test_feature = "moe"
    assert net(x).shape == (4, e * c)
    net.test_feature = "sdtps"
    with pytest.raises(ValueError, match="test_feature"):
        net(x)
    with pytest.raises(ValueError, match="use_sdtps=False"):
        mr.MoEReferenceNet(sdtps_vit_tiny(5, pretrained=False, img_size=(64, 32), depth=1,
                                          embed_dim=c, num_heads=3), 5)


def test_fusion_intervals_paired_differences_and_the_committed_rule(fusion):
    mean, half = fusion.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / 3 ** 0.5, rel=1e-5)
    runs = [{"setting": s, "seed": i, "results": {f: {"mAP": v / 100, "R1": v / 100}}}
            for s, f, vals in (("new_head", "concat", (50, 52, 55)),
                               ("previous_head", "concat", (48, 51, 52)),
                               ("no_selection", "ori", (48, 51, 52)))
            for i, v in enumerate(vals)]
    mean, half, n = fusion.paired(runs, "new_head", "no_selection")
    assert n == 3 and mean == pytest.approx(2.0) and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-4)
    assert fusion.shipped(runs) == ("previous_head", False)  # fewer than 16 seeds: not applied
    # the first rule keeps previous_head (interval contains 0); the second waits for its seeds
    assert fusion.shipped(runs, seeds=3) == ("previous_head", False)

    def shifted(rs, name, points):
        return [dict(r, results={"concat": {"mAP": r["results"]["concat"]["mAP"] + points / 100,
                                            "R1": 0}}) if r["setting"] == name else r for r in rs]

    wide = shifted(runs, "new_head", 5)
    assert fusion.shipped(wide, seeds=3) == ("new_head", True)
    residual = [dict(r, setting="residual_head") for r in runs if r["setting"] == "previous_head"]
    assert fusion.shipped(runs + residual, seeds=3) == ("previous_head", True)  # no better
    assert fusion.shipped(runs + shifted(residual, "residual_head", 5), seeds=3) == (
        "residual_head", True)
    # the first rule comes first: a new_head that wins ships even when residual_head wins too
    assert fusion.shipped(wide + shifted(residual, "residual_head", 9), seeds=3) == (
        "new_head", True)


def test_fusion_cue_keeps_the_primary_image_share_at_every_grid(fusion):
    assert fusion.regime_spec().cue_size == (1, 2)  # the primary regime, as committed
    n128 = fusion.regime_spec(128, 64, 8)
    assert n128.grid == (16, 8) and n128.cue_size == (2, 4)  # amendment 2: 8 of 128 cells
    assert fusion.regime_spec(128, 64, 8, cue_size=(1, 2)).cue_size == (1, 2)
    assert fusion.parse_args(["--height", "128", "--width", "64", "--cue-size", "1", "2"]
                             ).spec.cue_size == (1, 2)


def test_fusion_budget_criterion(fusion):
    flat = [{"mAP": m / 100} for m in (30, 40, 47.0, 47.5, 47.2, 47.9)]
    assert fusion.budget_check(flat)[0]
    assert not fusion.budget_check(flat[:-1] + [{"mAP": 0.49}])[0]  # last 4 spread 2.0
    assert not fusion.budget_check([{"mAP": m / 100} for m in (30, 31, 31, 31.5)])[0]  # < 40
    assert not fusion.budget_check(flat[:3])[0]


def test_fusion_study_smoke_resumes_and_writes_json_and_section(fusion, tmp_path, capsys):
    out, js, readme = tmp_path / "RESULTS.md", tmp_path / "fusion.json", tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- fusion_study:begin -->\nold\n<!-- fusion_study:end -->\ntail\n")
    argv = ["--smoke", "--threads", "1", "--root", str(tmp_path / "data"),
            "--runs-file", str(tmp_path / "runs.jsonl")]
    res = fusion.main([*argv, "--out", str(out), "--json", str(js), "--readme", str(readme)])
    table = readme.read_text()
    assert "old" not in table and table.endswith("<!-- fusion_study:end -->\ntail\n")
    for name in fusion.SETTINGS:  # one row each, with its differences to the two references
        assert f"| `{name}` | {fusion.SETTINGS[name].label} | 1 |" in table
    assert "| − no selection (paired) | − HDM+ATM (paired) |" in table
    printed = capsys.readouterr().out
    assert {r["setting"] for r in res["runs"]} == set(fusion.SETTINGS)
    by = {r["setting"]: r for r in res["runs"]}
    assert by["no_selection"]["fusion_params"] == 0 < by["previous_head"]["fusion_params"] \
        < by["new_head"]["fusion_params"] <= by["moe_reference"]["fusion_params"] // 10
    assert by["previous_head"]["fusion_params"] < by["residual_head"]["fusion_params"] \
        <= by["moe_reference"]["fusion_params"] // 10
    for name in ("previous_head", "new_head", "keep_all", "residual_head", "keep_all_res"):
        assert set(by[name]["results"]) == {"concat", "sdtps", "ori"}
        assert "recall" in by[name]["results"]["concat"]
    assert set(by["moe_reference"]["results"]) == {"concat", "moe", "ori"}
    assert len(by["no_selection"]["curve"]) == 1  # 1 epoch, tested once
    assert set(res["times"]) == set(fusion.SETTINGS) and all(t > 0 for t in res["times"].values())
    for text in ("| setting | seeds |", "`new_head` − `no_selection`", "Learning curves",
                 "t-intervals", "machine:", "command:", "N = 32"):
        assert text in printed
    assert fusion.BEGIN in out.read_text()
    summary = json.loads(js.read_text())
    assert summary["regime"] == {"patches": 32, "height": 64, "width": 32, "patch_size": 8,
                                 "data_seed": 0, "distractors": 1}
    assert summary["shipped"] == "previous_head" and len(summary["runs"]) == len(fusion.SETTINGS)
    assert set(summary["settings"]["new_head"]) == {"seeds", "mAP", "half_width"}
    assert set(summary["paired"]["new_head - moe_reference"]) == {"seeds", "mean", "low", "high"}
    again = fusion.main([*argv, "--time-repeats", "0"])  # resumes: nothing retrained
    assert again["runs"] == res["runs"] and again["times"] == {}
    assert again["runs_read_back"] == len(fusion.SETTINGS)


def test_fusion_confirmation_takes_the_primary_outcome_and_checks_signs(fusion, tmp_path):
    primary = tmp_path / "primary.json"
    primary.write_text(json.dumps({
        "regime": {"patches": 32}, "shipped": "residual_head", "rule_applied": True,
        "paired": {"residual_head - no_selection": {"seeds": 16, "mean": 1.2, "low": 0.3,
                                                    "high": 2.1},
                   "moe_reference - no_selection": {"seeds": 16, "mean": -0.5, "low": -1.0,
                                                    "high": 0.1}}}))
    here = {"paired": {"residual_head - no_selection": {"mean": 0.4},
                       "moe_reference - no_selection": {"mean": 0.2},
                       "residual_head - moe_reference": {"mean": 0.1}}}
    signs = fusion.confirmation(json.loads(primary.read_text()), here)
    assert {k: v["agree"] for k, v in signs["pairs"].items()} == {
        "residual_head - no_selection": True, "moe_reference - no_selection": False}
    with pytest.raises(SystemExit):  # the primary's shipped head must be confirmed
        fusion.parse_args(["--primary", str(primary), "--settings", "no_selection,moe_reference"])
    with pytest.raises(SystemExit):
        fusion.parse_args(["--primary", str(tmp_path / "missing.json")])
    (tmp_path / "bad.json").write_text(json.dumps({"shipped": "residual_head"}))
    with pytest.raises(SystemExit):
        fusion.parse_args(["--primary", str(tmp_path / "bad.json")])
    out, js, readme = tmp_path / "RESULTS.md", tmp_path / "n8.json", tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- fusion_study:begin -->\nprimary\n<!-- fusion_study:end -->\n")
    res = fusion.main(["--smoke", "--threads", "1", "--patch-size", "16", "--time-repeats", "0",
                       "--root", str(tmp_path / "data"), "--runs-file", "",
                       "--settings", "residual_head,no_selection,moe_reference",
                       "--primary", str(primary), "--json", str(js), "--out", str(out),
                       "--readme", str(readme)])
    summary = json.loads(js.read_text())
    assert set(summary) == set(res["summary"])  # what main returns is what it wrote
    assert summary["regime"]["patches"] == 8
    assert (summary["shipped"], summary["rule_applied"]) == ("residual_head", True)
    pairs = summary["confirmation"]["pairs"]
    assert set(pairs) == {"residual_head - no_selection", "moe_reference - no_selection"}
    for d in pairs.values():
        assert d["agree"] == ((d["primary"]["mean"] > 0) == (d["confirmation"]["mean"] > 0))
    text = readme.read_text()
    assert "primary" in text.split("<!-- fusion_study:end -->")[0]  # the primary's own table
    assert "<!-- fusion_study_n8:begin -->" in text and "| same sign |" in text
    assert "confirmation of the primary study" in text
    assert "<!-- fusion_study_n8:begin -->" in out.read_text()
    assert "| `residual_head` − `no_selection` | +1.2 [+0.3, +2.1] |" in out.read_text()


def test_selection_toy_runs_and_reports_kept_shares(benchmark_module, capsys):
    toy = benchmark_module("selection_toy")
    out = toy.main(["--betas", "0.0", "--selections", "topk,ste", "--seeds", "1", "--steps", "3"])
    assert set(out) == {(0.0, "topk"), (0.0, "ste")}
    assert all(0.0 <= v <= 1.0 for vals in out.values() for v in vals)
    assert "| 0.0 | ste |" in capsys.readouterr().out


# ----------------------------------------------------------------------------- ablation
def _tree_bytes(folder) -> dict[str, tuple[int, bytes]]:
    """Relative path -> (mtime_ns, bytes) of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ablation_smoke_trains_three_variants_and_writes_the_table(benchmark_module, tmp_path,
                                                                   capsys, monkeypatch):
    from pathlib import Path

    from torchreid_sdtps import config
    from torchreid_sdtps.data import synthetic as syn

    ablation = benchmark_module("ablation")
    out = tmp_path / "out"
    # the demo's data set in the same root: the smoke run (another spec) must leave it as it is
    demo = Path(syn.ensure_generated(tmp_path / "data",
                                     config.synthetic_spec(config.get_demo_config()), False))
    demo_before = _tree_bytes(demo)
    report = ablation.main(["--smoke", "--root", str(tmp_path / "data"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert _tree_bytes(demo) == demo_before
    assert len(list(demo.parent.iterdir())) >= 2   # the smoke spec got its own folder beside it
    runs = report["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [
        (v, s) for v in ("no_sdtps", "sdtps_block", "sdtps_align") for s in (1, 2)]
    opts = {r["variant"]: (r["use_sdtps"], r["weight_align"]) for r in runs}
    assert opts == {"no_sdtps": (False, 0.0), "sdtps_block": (True, 0.0),
                    "sdtps_align": (True, 0.5)}  # the shipped config's alignment weight
    for r in runs:
        assert r["epochs"] == 1 and r["target"] == "synthetic_msreid"
        for kind in ("last", "best_on_test"):
            assert set(r[kind]) >= set(ablation.METRICS)
            cmc = [r[kind][m] for m in ("R1", "R5", "R10")]
            assert cmc == sorted(cmc), (kind, cmc)  # a CMC curve never falls
        assert r["best_on_test"]["epoch"] == 1 and r["best_on_test"]["mAP"] == r["last"]["mAP"]
    for variant, entry in report["summary"].items():
        stat = entry["last"]["mAP"]
        vals = [r["last"]["mAP"] for r in runs if r["variant"] == variant]
        assert stat["n"] == 2 and abs(stat["mean"] - sum(vals) / 2) < 1e-9
        assert abs(stat["std"] - abs(vals[0] - vals[1]) / 2 ** 0.5) < 1e-9  # sample std
    assert "| variant | epoch | seeds | mAP (%) | R1 (%) | R5 (%) | R10 (%) |" in printed
    assert printed.count("| last |") == 3 and printed.count("| best on TEST set (optimistic) |") == 3
    assert (out / "ablation.md").read_text().strip() == report["table"].strip()
    assert json.loads((out / "ablation.json").read_text())["summary"] == report["summary"]
    # --resume reuses the finished identical runs: nothing is trained again
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(ablation.harness, "train_and_rank", no_training)
    again = ablation.main(["--smoke", "--root", str(tmp_path / "data"), "--out", str(out),
                           "--resume"])
    assert again["runs"] == runs


def test_ablation_refuses_bad_arguments(benchmark_module, capsys):
    ablation = benchmark_module("ablation")
    with pytest.raises(SystemExit):
        ablation.parse_args(["--variants", "no_sdtps,hdm"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--seeds", "a,b"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["train.max_epoch"])  # an override without its value
    with pytest.raises(SystemExit):
        ablation.parse_args(["--smoke", "--device", "cuda"])  # smoke is a CPU run
    if not torch.cuda.is_available():
        assert ablation.main(["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


# ----------------------------------------------------------------------------- harness
@pytest.fixture(scope="module")
def harness(benchmark_module):
    return benchmark_module("harness")


def test_harness_statistics(harness):
    mean, half = harness.t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-5)
    assert harness.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5))
    assert harness.mean_std([5.0]) == (5.0, 0.0)
    mean, half, n = harness.paired({0: 50.0, 1: 52.0, 2: 55.0, 3: 1.0}, {0: 48.0, 1: 51.0, 2: 52.0})
    assert n == 3 and mean == pytest.approx(2.0) and half == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-4)
    assert harness.paired({0: 1.0}, {1: 1.0})[2] == 0
    runs = [{"setting": s, "seed": i, "results": {f: {"mAP": v / 100}}}
            for s, f, vals in (("a", "concat", (50, 52, 55)), ("b", "ori", (48, 51, 52)))
            for i, v in enumerate(vals)]
    settings = {"a": harness.Setting("A"), "b": harness.Setting("B", evals=("ori",))}
    summary = harness.json_summary(runs, settings, [("a", "b")])
    assert summary["settings"]["a"]["seeds"] == 3 and summary["settings"]["b"]["mAP"] == pytest.approx(151 / 3)
    d = summary["paired"]["a - b"]
    assert d["seeds"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["high"] - d["mean"] == pytest.approx(d["mean"] - d["low"]) == pytest.approx(half)
    assert harness.verdict(2.0, 1.0).startswith("higher") and harness.verdict(-2.0, 1.0).startswith("lower")


def test_harness_resumes_from_the_runs_file_and_keys_on_budget_and_setting(harness, tmp_path):
    calls = []

    def fn(name, seed):
        calls.append((name, seed))
        return {"results": {"concat": {"mAP": 0.5, "R1": 0.5}}}

    settings = {"a": harness.Setting("A"), "b": harness.Setting("B", opts=("x", "1"))}
    runs_file = str(tmp_path / "runs.jsonl")
    first = harness.run_study(fn, settings, ["a", "b"], [0, 1], {"epochs": 1},
                              runs_file=runs_file, progress=lambda *a, **k: None)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]  # seed-major
    assert (first.now, first.read_back) == (4, 0)
    assert [(r["setting"], r["seed"]) for r in first.runs] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    with open(runs_file, "a", encoding="utf-8") as fh:
        fh.write('{"setting": "a", "seed"')  # a torn last line (an interrupted write)
    calls.clear()
    again = harness.run_study(fn, settings, ["a", "b"], [0, 1, 2], {"epochs": 1},
                              runs_file=runs_file, progress=lambda *a, **k: None)
    assert calls == [("a", 2), ("b", 2)] and (again.now, again.read_back) == (2, 4)
    assert again.runs[:2] == first.runs[:2]
    calls.clear()  # another budget, or a changed setting: nothing reused
    harness.run_study(fn, settings, ["a"], [0], {"epochs": 2}, runs_file=runs_file,
                      progress=lambda *a, **k: None)
    changed = {"a": harness.Setting("A", opts=("y", "2")), "b": settings["b"]}
    harness.run_study(fn, changed, ["a", "b"], [0], {"epochs": 1}, runs_file=runs_file,
                      progress=lambda *a, **k: None)
    assert calls == [("a", 0), ("a", 0)]
    assert harness.plan(["a", "b"], [0, 1], [("b", 0)]) == [("a", 0), ("a", 1), ("b", 1)]
    text = "\n".join(harness.footer("python benchmarks/x.py", again, 2))
    assert "2 runs now, 4 read back" in text and "machine:" in text and "command:" in text


# ----------------------------------------------------------------------------- missing study
def test_missing_study_smoke_trains_ranks_and_resumes(benchmark_module, tmp_path, capsys,
                                                      monkeypatch):
    study = benchmark_module("missing_study")
    argv = ["--smoke", "--work", str(tmp_path / "work"), "--root", str(tmp_path / "data")]
    report = study.main(argv)
    printed = capsys.readouterr().out
    assert set(report["runs"]) == {"without", "with", "without+mask"}
    for by_seed in report["runs"].values():
        assert list(by_seed) == ["1"] and all(0 <= v <= 1 for v in by_seed["1"].values())
    # masking changes the ranking of absent modalities only: "none" (nothing zeroed) is equal
    plain, masked = report["runs"]["without"]["1"], report["runs"]["without+mask"]["1"]
    assert masked["none"] == plain["none"] and masked != plain
    assert "| variant | seeds | none | RGB |" in printed and "| without+mask | 1 |" in printed
    assert (tmp_path / "work" / "missing_study.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(study.harness, "train_and_rank", no_training)
    again = study.main(argv)
    assert again["runs"] == report["runs"] and again["runs_read_back"] == 2


def test_study_models_are_built_by_name_through_build_all(benchmark_module, make_cfg):
    from torchreid_sdtps import build
    from torchreid_sdtps.checkpoint.meta import meta_of
    from torchreid_sdtps.errors import ConfigError

    mr, st = benchmark_module("moe_reference"), benchmark_module("synthetic_study")
    mr.register_models()
    st.register_models()
    mr.register_models()  # idempotent
    _, model, _, _, _ = build.build_all(make_cfg("model.name", "moe_reference_vit_tiny",
                                                 "sdtps.use_sdtps", "False",
                                                 "sdtps.weight_align", "0.0"))
    assert isinstance(model, mr.MoEReferenceNet) and mr.fusion_parameters(model) > 0
    assert meta_of(model)["model_name"] == "moe_reference_vit_tiny"  # checkpoint meta
    with pytest.raises(ConfigError, match="sdtps.use_sdtps False"):
        build.build_all(make_cfg("model.name", "moe_reference_vit_tiny"))
    _, model, _, _, _ = build.build_all(make_cfg("model.name", "sdtps_vit_tiny_ti_only"))
    assert isinstance(model, st.ZeroModalities) and model.zeroed == (0, 1)
    model.test_feature = "kept"
    assert model.kept_feature and model.model.test_feature == "concat"
    model.test_feature = "ori"
    assert not model.kept_feature and model.test_feature == "ori"
