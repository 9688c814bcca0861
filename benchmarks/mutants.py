"""Mutation check: small, meaningful breaks of the package must each make a test fail.

Each :class:`Mutant` names a file, an exact snippet of it and its replacement (a flipped sign,
a skipped neck, a dropped normalisation...). The script copies the repository (tracked and
untracked, non-ignored files) to a scratch folder once, then for every mutant: replaces the
snippet (it must occur exactly once, or the script stops and says so: a refactor that moved
the line shows up here instead of a mutant silently testing nothing), runs the mutant's test
files with ``PYTHONPATH`` on the scratch copy, restores the file. A mutant *survives* when its
tests still pass. Before the mutants, the same test files run unmutated (``--no-baseline``
skips that): a test set that fails on the clean copy would "kill" every mutant.

    python benchmarks/mutants.py                 # every mutant; exit 1 if one survives
    python benchmarks/mutants.py --list          # the mutants and their test files
    python benchmarks/mutants.py --only triplet_sign,neck_sdtps_skipped
    python benchmarks/mutants.py --markdown docs/mutants_table.md

``make mutants`` runs it (not part of ``make test``). The list and the last result are in
docs/testing.md.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@dataclass(frozen=True)
class Mutant:
    """One break: ``original`` (exact, occurring once in ``file``) becomes ``replacement``."""

    name: str
    area: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str


MUTANTS: tuple[Mutant, ...] = (
    # ----------------------------------------------------------------- the four of issue 27
    Mutant("neck_sdtps_skipped", "model", "torchreid_sdtps/models/net.py",
           'sdtps, ori = self.neck_sdtps(feats["sdtps"]), self.neck_ori(feats["ori"])',
           'sdtps, ori = feats["sdtps"], self.neck_ori(feats["ori"])',
           ("tests/test_eval_features.py",),
           'neck_feat="after" skips the BNNeck of the SDTPS branch in the eval feature'),
    Mutant("triplet_sign", "losses", "torchreid_sdtps/losses/criterion.py",
           "loss = loss + opts.weight_t * loss_t",
           "loss = loss - opts.weight_t * loss_t",
           ("tests/test_learning.py",),
           "the triplet term's sign flipped in the training loss"),
    Mutant("camera_term_always_used", "deploy", "torchreid_sdtps/deploy/provenance.py",
           '"camera_term": ("used" if cameras_given else "off") if sie else "none",',
           '"camera_term": "used" if sie else "none",',
           ("tests/test_provenance.py",),
           "provenance records the camera term as used whether or not cameras were given"),
    Mutant("ranking_not_normalised", "engine", "torchreid_sdtps/engine/evaluation.py",
           "qf, gf = F.normalize(qf, p=2, dim=1), F.normalize(gf, p=2, dim=1)",
           "qf, gf = qf, gf",
           ("tests/test_ranking.py",),
           "the L2 normalisation before ranking removed (the real-data recipe ranks normalised)"),
    # ----------------------------------------------------------------- losses
    Mutant("id_weight_ignored", "losses", "torchreid_sdtps/losses/criterion.py",
           "loss = loss + opts.weight_x * loss_x",
           "loss = loss + loss_x",
           ("tests/test_learning.py",),
           "the ID term's weight ignored"),
    Mutant("id_sign", "losses", "torchreid_sdtps/losses/criterion.py",
           "loss = loss + opts.weight_x * loss_x",
           "loss = loss - opts.weight_x * loss_x",
           ("tests/test_learning.py",),
           "the ID term's sign flipped"),
    Mutant("align_sign", "losses", "torchreid_sdtps/losses/criterion.py",
           "loss = loss + opts.weight_align * loss_a",
           "loss = loss - opts.weight_align * loss_a",
           ("tests/test_learning.py",),
           "the alignment term's sign flipped"),
    Mutant("align_detached", "losses", "torchreid_sdtps/losses/criterion.py",
           'loss_a = self.align(aux["tokens"], pids, present)',
           'loss_a = self.align(aux["tokens"].detach(), pids, present)',
           ("tests/test_learning.py",),
           "the alignment loss reported but cut from the graph (trains nothing)"),
    Mutant("ratio_sum_not_mean", "losses", "torchreid_sdtps/losses/ratio.py",
           "kept = soft_masks.float().mean(dim=-1)",
           "kept = soft_masks.float().sum(dim=-1)",
           ("tests/test_learning.py",),
           "the selection-ratio loss compares rho with the kept count, not the fraction"),
    # ----------------------------------------------------------------- model
    Mutant("gumbel_noise_after_ranking", "model", "torchreid_sdtps/models/sdtps.py",
           "order = noisy.detach().argsort(dim=-1, descending=True)",
           "order = score.detach().argsort(dim=-1, descending=True)",
           ("tests/test_sdtps_formulas.py",),
           "Gumbel noise no longer enters the ranking (the seed review's point 2.1)"),
    Mutant("aggregation_mask_not_log", "model", "torchreid_sdtps/models/sdtps.py",
           "logits = logits + keep.transpose(0, 1).clamp_min(_EPS).log().unsqueeze(-2)",
           "logits = logits + keep.transpose(0, 1).clamp_min(_EPS).unsqueeze(-2)",
           ("tests/test_sdtps_formulas.py",),
           "TokenAggregation adds D instead of log D to the logits"),
    Mutant("extra_token_keeps_kept", "model", "torchreid_sdtps/models/sdtps.py",
           "weights = weights * (1 - d_drop)",
           "weights = weights * d_drop",
           ("tests/test_sdtps_formulas.py",),
           "the extra token weights dropped patches by D instead of 1 - D"),
    # ----------------------------------------------------------------- data
    Mutant("flip_not_synchronised", "data", "torchreid_sdtps/data/multimodal.py",
           "            random.setstate(states[0])\n",
           "",
           ("tests/test_data_multimodal.py",),
           "Python's RNG not restored between modalities: flips differ across modalities"),
    # ----------------------------------------------------------------- engine
    Mutant("eval_without_camera", "engine", "torchreid_sdtps/engine/sdtps_engine.py",
           "feats = self.model(input, cam_label=cam)",
           "feats = self.model(input)",
           ("tests/test_engine.py",),
           "evaluation drops the camera ids (SIE term missing at test time)"),
    Mutant("missing_table_not_zeroed", "engine", "torchreid_sdtps/engine/sdtps_engine.py",
           "imgs = zero_modalities(imgs, self._zeroed)",
           "imgs = imgs",
           ("tests/test_engine.py",),
           "the missing-modality table ranks complete inputs in every row"),
    Mutant("dropout_not_applied", "engine", "torchreid_sdtps/engine/sdtps_engine.py",
           "imgs, present = zero_modalities(imgs, removed), ~removed",
           "imgs, present = imgs, ~removed",
           ("tests/test_missing.py",),
           "training modality dropout draws a removal but trains on complete images"),
    # ----------------------------------------------------------------- checkpoint
    Mutant("strict_load_off", "checkpoint", "torchreid_sdtps/checkpoint/load.py",
           "        if strict:\n            raise CheckpointMismatchError(text)",
           "        if False:\n            raise CheckpointMismatchError(text)",
           ("tests/test_checkpoint.py",),
           "a checkpoint that does not fit loads partially instead of being refused"),
    Mutant("rng_not_saved", "checkpoint", "torchreid_sdtps/engine/sdtps_engine.py",
           '"rng_state": get_rng_state(),',
           '"rng_state": None,',
           ("tests/test_engine.py",),
           "checkpoints hold no RNG state: a resumed run does not repeat the straight one"),
    # ----------------------------------------------------------------- deploy
    Mutant("extractor_normalize_ignored", "deploy", "torchreid_sdtps/deploy/extractor.py",
           "return F.normalize(out, p=2, dim=1) if self.normalize else out",
           "return out",
           ("tests/test_feature_extractor.py",),
           "FeatureExtractor(normalize=True) returns raw features"),
    Mutant("provenance_normalized_constant", "deploy", "torchreid_sdtps/deploy/provenance.py",
           '"normalized": bool(extractor.normalize),',
           '"normalized": False,',
           ("tests/test_provenance.py",),
           "provenance records raw features whatever the extractor did"),
)


def repo_files(repo: str) -> list[str]:
    """Tracked and untracked, non-ignored files of ``repo`` (what a checkout would hold)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=repo, check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p and osp.isfile(osp.join(repo, p))]


def copy_repo(repo: str, dest: str) -> None:
    for rel in repo_files(repo):
        target = osp.join(dest, rel)
        os.makedirs(osp.dirname(target), exist_ok=True)
        shutil.copy2(osp.join(repo, rel), target)


def apply(mutant: Mutant, root: str) -> str:
    """Mutate ``root``'s copy of the file; returns the original text (to restore)."""
    path = osp.join(root, mutant.file)
    if not osp.isfile(path):
        raise SystemExit(f"mutant {mutant.name}: {mutant.file} not found (moved?)")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: the snippet occurs {count} times in "
                         f"{mutant.file} (expected once; was the code refactored?):\n"
                         f"{mutant.original}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text.replace(mutant.original, mutant.replacement))
    return text


def run_tests(root: str, tests: Sequence[str], python: str) -> tuple[int, str, float]:
    """``(pytest exit code, output, seconds)`` of ``tests`` on the copy at ``root``."""
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [python, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=",
           f"--basetemp={osp.join(root, '.pytest-tmp')}", *tests]
    start = time.time()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.time() - start


def first_failure(output: str) -> str:
    """The first failing test id pytest reports (``FAILED path::name``), or ERROR lines."""
    m = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    return m.group(1) if m else "(no FAILED line; see the output)"


def markdown(rows: list[dict]) -> str:
    lines = ["| # | area | mutant | change | tests run | result | caught by | s |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        m = r["mutant"]
        lines.append(f"| {i} | {m.area} | `{m.name}` | {m.what} (`{m.file}`) | "
                     f"{', '.join(t.split('/')[-1] for t in m.tests)} | {r['result']} | "
                     f"{'`' + r['caught'] + '`' if r['caught'] else '-'} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the test files on the unmutated copy first")
    ap.add_argument("--scratch", default="", help="scratch folder (default: a temporary one)")
    ap.add_argument("--markdown", default="", help="also write the result table to this file")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs pytest")
    args = ap.parse_args(argv)

    mutants = list(MUTANTS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - {m.name for m in MUTANTS})
        if unknown:
            ap.error(f"unknown mutant(s) {unknown}; known: {[m.name for m in MUTANTS]}")
        mutants = [m for m in MUTANTS if m.name in names]
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.area:10s} {m.file}  ->  {' '.join(m.tests)}\n    {m.what}")
        return 0

    scratch = args.scratch or tempfile.mkdtemp(prefix="mutants-")
    root = osp.join(scratch, "repo")
    if osp.exists(root):
        shutil.rmtree(root)
    copy_repo(REPO, root)
    for m in mutants:  # every snippet present before anything runs
        apply(m, root)
        shutil.copy2(osp.join(REPO, m.file), osp.join(root, m.file))
    print(f"scratch copy: {root}; {len(mutants)} mutants", flush=True)

    if not args.no_baseline:
        suites = sorted({t for m in mutants for t in m.tests})
        code, out, secs = run_tests(root, suites, args.python)
        print(f"baseline (unmutated): {' '.join(suites)}: exit {code}, {secs:.0f}s", flush=True)
        if code != 0:
            print(out[-4000:])
            print("the unmutated copy fails its tests: fix that first")
            return 2

    rows = []
    for m in mutants:
        original = apply(m, root)
        try:
            code, out, secs = run_tests(root, m.tests, args.python)
        finally:
            with open(osp.join(root, m.file), "w", encoding="utf-8") as fh:
                fh.write(original)
        if code == 0:
            result, caught = "SURVIVED", ""
        elif code == 1:
            result, caught = "killed", first_failure(out)
        else:  # collection error, usage error, interrupted: a crash is not a kill
            result, caught = f"error (pytest exit {code})", first_failure(out)
            print(out[-3000:])
        rows.append({"mutant": m, "result": result, "caught": caught, "seconds": secs})
        print(f"{m.name:32s} {result:10s} {secs:6.0f}s  {caught}", flush=True)

    table = markdown(rows)
    survivors = [r["mutant"].name for r in rows if r["result"] != "killed"]
    print()
    print(table)
    print(f"{len(rows) - len(survivors)} of {len(rows)} mutants killed; "
          f"survivors/errors: {survivors or 'none'}")
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write(table)
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
