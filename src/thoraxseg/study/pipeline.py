"""Run a whole study into one folder, resuming after a kill.

Stages (in order): ``data`` → ``check`` → ``realign`` → ``split`` → for each arm
``train:<arm>``, ``predict:<arm>``, ``evaluate:<arm>`` → ``compare`` → ``report``.
A stage is complete when its marker ``STUDY/.stages/<stage>.json`` exists; the
marker is written (atomically) only after the stage's outputs are in place, so a
killed study re-runs the interrupted stage and skips the finished ones. Training
stages resume from their own checkpoints. The folder layout is documented in
``docs/dev/contracts.md``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import yaml

from thoraxseg.data.layout import (
    Case,
    StudyLayout,
    discover_cases,
    labelled_cases,
    read_stage_timings,
    reference_names_text,
)
from thoraxseg.errors import ConfigError, InputError, ThoraxsegError
from thoraxseg.labels import organ_from_name
from thoraxseg.study.config import StudyConfig
from thoraxseg.utils.atomic import atomic_dir, removed_on_failure, write_json_atomic, write_text_atomic
from thoraxseg.utils.files import link_or_copy
from thoraxseg.utils.progress import console


class Study:
    """Paths and stage bookkeeping of one study folder."""

    def __init__(self, root: Path, config: StudyConfig) -> None:
        self.layout = StudyLayout(Path(root), Path(config.data.root) if config.data.root else None)
        self.root = self.layout.root
        self.config = config
        self.markers = self.layout.markers

    # -- layout (thoraxseg.data.layout.StudyLayout), plus what depends on the run ------------------
    @property
    def raw(self) -> Path:
        return self.layout.raw

    @property
    def fixed(self) -> Path:
        marker = self._marker("realign")
        if marker.exists() and json.loads(marker.read_text()).get("applied"):
            return self.layout.fixed
        return self.raw

    @property
    def trainset(self) -> Path:
        return self.layout.trainset

    @property
    def testset(self) -> Path:
        return self.layout.testset

    # -- markers --------------------------------------------------------------------------------
    def _marker(self, stage: str) -> Path:
        return self.layout.marker(stage)

    def done(self, stage: str) -> bool:
        return self._marker(stage).exists()

    def mark(self, stage: str, seconds: float, **info: Any) -> None:
        write_json_atomic(self._marker(stage), {"stage": stage, "seconds": round(seconds, 2), **info})

    def timings(self) -> dict[str, float]:
        """Seconds per finished stage, in finishing order."""
        return read_stage_timings(self.root)


def _stage_data(study: Study) -> dict[str, Any]:
    cfg = study.config.data
    if cfg.root:
        cases = discover_cases(cfg.root)
        return {"source": str(cfg.root), "cases": len(cases)}
    from thoraxseg.data.phantom import generate_cohort

    params = {"cases": 16, "size": "small", "seed": study.config.seed, "corrupt_heart": True, **(cfg.phantom or {})}
    if study.raw.exists():
        shutil.rmtree(study.raw)  # an interrupted generation: start it again
    generate_cohort(study.raw, **params)
    return {"source": "phantom", **params}


def _stage_check(study: Study) -> dict[str, Any]:
    from thoraxseg.data.check import check_dataset, print_report

    report = check_dataset(study.raw, workers=study.config.workers)
    print_report(report)
    write_json_atomic(study.layout.check, report.to_dict())
    if not report.ok:
        raise ThoraxsegError(f"{study.raw}: dataset check failed (see {study.layout.check})")
    return {"ok": report.ok, "warnings": report.n_warnings}


def _reference_case(study: Study) -> Case | None:
    """The case whose ``GT.nii.gz`` + clean label (any of ``CLEAN_LABEL_NAMES``) estimate the fix."""
    cases = discover_cases(study.raw)
    wanted = study.config.realign.reference
    if wanted:
        match = [c for c in cases if c.patient_id == wanted]
        if not match or match[0].clean_label_path is None or match[0].label_path is None:
            raise ConfigError(f"realign.reference {wanted!r}: no case with both GT.nii.gz and a clean label "
                              f"({reference_names_text()}) in {study.raw}")
        return match[0]
    return next((c for c in cases if c.clean_label_path is not None and c.label_path is not None), None)


def _flagged_cases(study: Study, organ: str) -> list[str]:
    """Patients whose ``GT.nii.gz`` ``organ`` label ``check`` flags as misplaced (from ``check.json``)."""
    doc = json.loads((study.layout.check).read_text(encoding="utf-8"))
    return [c["patient_id"] for c in doc.get("cases", [])
            if any(o["organ"] == organ and o["suspicious"] for o in c.get("organs", []))]


def _stop_on_flagged(study: Study, why: str) -> None:
    """Refuse to go on to training when ``check`` flags the realign label of any case (``why``: no fix)."""
    organ = study.config.realign.label
    flagged = _flagged_cases(study, organ)
    if not flagged:
        return
    shown = ", ".join(flagged[:5]) + (f" and {len(flagged) - 5} more" if len(flagged) > 5 else "")
    raise ConfigError(
        f"realign.enabled: {study.config.realign.enabled}: check flags the {organ} label of {len(flagged)} "
        f"case(s) as misplaced ({shown}; {study.layout.check}) but {why} — fix the labels, put the "
        f"clean label of one patient next to its GT.nii.gz as {reference_names_text()} (realign.reference names "
        "that patient), or set realign.enabled: false to train on these labels anyway; then re-run with --overwrite")


def _stage_realign(study: Study) -> dict[str, Any]:
    """Estimate the label fix on the reference pair and apply it to every case, or say why not.

    ``auto``: a pair whose ``GT.nii.gz`` is the moved one is fixed; without a pair, or with one that
    shows nothing moved, the labels are used as they are unless ``check`` flags the realign label of
    any case — then the study stops before training. A pair whose clean label is the one on air
    stops it too. ``true`` needs a pair and always fixes; ``false`` never does.
    """
    cfg = study.config.realign
    if cfg.enabled in (False, "false"):
        console.print("realign: disabled (realign.enabled: false) — labels used as they are")
        return {"applied": False}
    if cfg.method == "qa":
        return _realign_qa(study)
    forced = cfg.enabled in (True, "true")
    ref = _reference_case(study)
    if ref is None:
        if forced:
            raise ConfigError(f"realign.enabled is true but no reference pair (GT.nii.gz + {reference_names_text()})"
                              f" exists in {study.raw}")
        _stop_on_flagged(study, f"no case has a reference pair (GT.nii.gz + {reference_names_text()})")
        console.print(f"realign: no reference pair ({reference_names_text()}) and no misplaced {cfg.label} label "
                      "— labels used as they are", soft_wrap=True)
        return {"applied": False}
    from thoraxseg.data.check import check_case, pair_verdict

    moved_path, clean_path = cast(Path, ref.label_path), cast(Path, ref.clean_label_path)  # a pair, see above
    pair = check_case(ref)
    if pair.errors or pair.reference is None:
        raise ThoraxsegError(f"{ref.image_path.parent}: reference pair unreadable: {'; '.join(pair.errors)}")
    verdict = pair_verdict(pair.organs, pair.reference, cfg.label)
    names = f"{ref.patient_id} ({moved_path.name} + {clean_path.name})"
    if verdict in ("clean-moved", "both-moved", "absent"):
        problem = {"clean-moved": f"the {cfg.label} of {clean_path.name} is the one on air, not {moved_path.name}'s",
                   "both-moved": f"the {cfg.label} of both labels is on air",
                   "absent": f"the {cfg.label} is missing from one of the labels"}[verdict]
        raise InputError(clean_path, f"reference pair {names} is no moved/clean pair: {problem}")
    console.print(f"realign: reference pair {names}: " + (
        f"{moved_path.name} is the moved label, {clean_path.name} the clean one" if verdict == "label-moved"
        else f"neither label looks moved ({cfg.label})"), soft_wrap=True)
    if verdict == "neither-moved" and not forced:
        _stop_on_flagged(study, f"the reference pair {names} shows no moved {cfg.label} to estimate the fix on")
        console.print("realign: nothing to fix — labels used as they are")
        return {"applied": False, "reference": ref.patient_id, "verdict": verdict}
    from thoraxseg.data.check import check_dataset
    from thoraxseg.realign.apply import apply_transform_to_dataset
    from thoraxseg.realign.estimate import estimate_transform

    label = int(organ_from_name(cfg.label))
    out = study.layout.realign
    out.mkdir(parents=True, exist_ok=True)
    fix = estimate_transform(moved_path, clean_path, label=label, method=cfg.method)
    write_json_atomic(out / "fix.json", fix)
    fixed = study.layout.fixed
    if fixed.exists():
        shutil.rmtree(fixed)
    rows = apply_transform_to_dataset(fix, study.raw, fixed, label=label)
    write_json_atomic(out / "apply.json", rows)
    try:
        from thoraxseg.realign.figures import overlay_png
    except ImportError:
        overlay_png = None
    if overlay_png is not None:
        fixed_case = next(c for c in discover_cases(fixed) if c.patient_id == ref.patient_id)
        overlay_png(ref.image_path, moved_path, fixed_case.label_path, clean_path, label,
                    out / "overlay.png")
    after = check_dataset(fixed, progress=False)
    write_json_atomic(study.layout.check_fixed, after.to_dict())
    return {"applied": True, "reference": ref.patient_id, "reference_label": str(clean_path),
            "verdict": verdict, "warnings_after": after.n_warnings}


def _realign_qa(study: Study) -> dict[str, Any]:
    """``realign.method: qa``: judge every label against ``realign.qa_run``'s predictions; apply accepted fixes.

    Writes ``realign/qa/`` (``qa.csv``, ``qa.json``, reference predictions, overlays) and, when a fix
    was accepted, ``data/fixed``. Reference pairs are not used. If ``check`` still flags the realign
    label of a case afterwards (qa could not fix it), the study stops before training.
    """
    from thoraxseg.data.check import check_dataset
    from thoraxseg.qa.run import run_qa

    cfg = study.config.realign
    assert cfg.qa_run is not None  # validated by the config
    out = study.layout.qa
    fixed = study.layout.fixed
    result = run_qa(study.raw, run=cfg.qa_run, out=out, fix=fixed, seed=study.config.seed, overwrite=True,
                    device=study.config.device)
    s = result["summary"]
    applied = bool(s["fixed_patients"])
    console.print(f"realign (qa against {cfg.qa_run}): fixed {', '.join(s['fixed_patients']) or 'nothing'}; "
                  f"flagged {', '.join(s['flagged_patients']) or 'nothing'} ({out / 'qa.csv'})", soft_wrap=True)
    if not applied:
        shutil.rmtree(fixed)
    after = check_dataset(fixed if applied else study.raw, progress=False)
    if applied:
        write_json_atomic(study.layout.check_fixed, after.to_dict())
    organ = cfg.label
    still = [c.patient_id for c in after.cases if any(o.organ == organ and o.suspicious for o in c.organs)]
    if still:
        raise ConfigError(
            f"realign.method: qa: check still flags the {organ} label of {', '.join(still)} after qa "
            f"(see {out / 'qa.csv'}): fix those labels, or set realign.enabled: false to train on them anyway; "
            "then re-run with --overwrite")
    return {"applied": applied, "method": "qa", "qa_run": cfg.qa_run, "fixed": s["fixed_patients"],
            "flagged": s["flagged_patients"], "warnings_after": after.n_warnings}


def _stage_split(study: Study) -> dict[str, Any]:
    cases = labelled_cases(study.fixed)
    n_test = study.config.data.test_cases
    if not 1 <= n_test <= len(cases) - 2:
        raise ConfigError(f"data.test_cases={n_test}: need 1..{len(cases) - 2} for {len(cases)} labelled cases")
    order = np.random.default_rng(study.config.data.split_seed).permutation(len(cases))
    test_ids = sorted(cases[i].patient_id for i in order[:n_test])
    train_ids = sorted(c.patient_id for c in cases if c.patient_id not in test_ids)
    by_id = {c.patient_id: c for c in cases}
    with atomic_dir(study.trainset, overwrite=True) as tmp:
        for pid in train_ids:
            c = by_id[pid]
            link_or_copy(c.image_path, tmp / "train" / pid / f"{pid}.nii.gz")
            link_or_copy(c.label_path, tmp / "train" / pid / "GT.nii.gz")
    with atomic_dir(study.testset, overwrite=True) as tmp:
        for pid in test_ids:
            c = by_id[pid]
            link_or_copy(c.image_path, tmp / pid / f"{pid}.nii.gz")
            link_or_copy(c.label_path, tmp / pid / "GT.nii.gz")
    split = {"seed": study.config.data.split_seed, "train": train_ids, "test": test_ids}
    write_json_atomic(study.layout.split, split)
    return {"train": len(train_ids), "test": len(test_ids)}


def _stage_train(study: Study, name: str) -> dict[str, Any]:
    from thoraxseg.training import train

    arm = study.config.arms[name]
    run = study.layout.run(name)
    train(arm.model, study.trainset, run, config=dict(arm.config) or None, epochs=arm.epochs,
          device=study.config.device, seed=study.config.seed)
    return {"model": arm.model}


def _stage_predict(study: Study, name: str) -> dict[str, Any]:
    from thoraxseg.inference import predict

    arm = study.config.arms[name]
    pred = study.layout.pred(name)
    if pred.exists():
        shutil.rmtree(pred)
    paths = predict(study.layout.run(name), study.testset, pred, postprocess=study.config.postprocess,
                    device=study.config.device, **arm.predict)
    return {"cases": len(paths)}


def _stage_evaluate(study: Study, name: str) -> dict[str, Any]:
    from thoraxseg.metrics.evaluate import evaluate_folders, write_metrics_csv

    df = evaluate_folders(study.testset, study.layout.pred(name), tolerance_mm=study.config.tolerance_mm,
                          workers=study.config.workers)
    write_metrics_csv(df, study.layout.metrics(name))
    means = df.groupby("organ")["dice"].mean()
    console.print(f"{name}: mean Dice " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))  # rounded once
    return {"dice": means.round(4).to_dict()}


def _stage_compare(study: Study) -> dict[str, Any]:
    names = list(study.config.arms)
    if len(names) < 2:
        console.print("compare: only one arm — nothing to compare")
        return {"skipped": True}
    from thoraxseg.stats.compare import run_comparison, summary_renderables, write_outputs

    result = run_comparison([study.layout.metrics(n) for n in names], names,
                            unpaired=study.config.unpaired, seed=study.config.seed, n_boot=study.config.n_boot)
    write_outputs(result, study.layout.compare)
    for renderable in summary_renderables(result, compact=True):
        console.print(renderable)
    return {"arms": names}


def _stage_report(study: Study) -> dict[str, Any]:
    from thoraxseg.report import build_report

    out = build_report(study.root, study.layout.report)
    return {"report": str(out)}


def _without_threads(d: dict[str, Any]) -> dict[str, Any]:
    """A study config without ``threads`` (a speed setting: changing it does not invalidate a study)."""
    return {k: v for k, v in d.items() if k != "threads"}


def planned_stages(config: StudyConfig) -> list[str]:
    """The stage names of a study, in execution order."""
    stages = ["data", "check", "realign", "split"]
    for kind in ("train", "predict", "evaluate"):
        stages += [f"{kind}:{name}" for name in config.arms]
    return [*stages, "compare", "report"]


def run_study(config: StudyConfig, out: str | Path, force: bool = False) -> Path:
    """Run (or resume) a study into ``out``; returns the path of ``report.html``.

    Parameters
    ----------
    config
        The study configuration.
    out
        Study folder; created if missing. An existing folder resumes where it stopped.
    force
        Re-run every stage (the folder's stage markers are cleared first).
    """
    study = Study(Path(out), config)
    if config.data.root and not Path(config.data.root).is_dir():  # before anything is written
        raise InputError(config.data.root, "data.root: folder not found")
    # a study that fails before its first stage completed leaves no study folder behind
    with removed_on_failure(study.root, keep=lambda _root: any(study.markers.glob("*.json"))):
        return _run_stages(study, config, force)


def _run_stages(study: Study, config: StudyConfig, force: bool) -> Path:
    study.root.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(config.to_dict(), sort_keys=False)
    cfg_file = study.layout.config
    if force and study.markers.exists():
        shutil.rmtree(study.markers)
    if cfg_file.exists() and study.markers.exists() and not force:
        before = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
        if _without_threads(before) != _without_threads(config.to_dict()):
            raise ConfigError(f"{study.root}: holds a study with another configuration (use --overwrite or a new --out)")
    write_text_atomic(cfg_file, resolved)
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "data": lambda: _stage_data(study),
        "check": lambda: _stage_check(study),
        "realign": lambda: _stage_realign(study),
        "split": lambda: _stage_split(study),
        "compare": lambda: _stage_compare(study),
        "report": lambda: _stage_report(study),
    }
    for name in config.arms:
        runners[f"train:{name}"] = lambda n=name: _stage_train(study, n)
        runners[f"predict:{name}"] = lambda n=name: _stage_predict(study, n)
        runners[f"evaluate:{name}"] = lambda n=name: _stage_evaluate(study, n)
    for stage in planned_stages(config):
        if study.done(stage):
            console.print(f"[dim]study: {stage} — already complete, skipped[/dim]")
            continue
        console.rule(f"study: {stage}")
        t0 = time.perf_counter()
        info = runners[stage]()
        study.mark(stage, time.perf_counter() - t0, **info)
    timings = study.timings()
    console.print("study timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    console.print(f"total {sum(timings.values()):.0f} s")
    return study.layout.report
