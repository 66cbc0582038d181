"""Scoped nnU-Net environment: folders and process settings for the duration of one call.

nnU-Net v2 is configured through environment variables: ``nnUNet_raw``,
``nnUNet_preprocessed`` and ``nnUNet_results`` (folders), ``nnUNet_n_proc_DA``
(data-augmentation workers), ``nnUNet_compile`` (``torch.compile``) and
``nnUNet_def_n_proc`` (worker pools for preprocessing, validation export).

In nnunetv2 2.8 the three folder variables are read lazily (``nnunetv2.paths``
holds ``_EnvPath`` objects that look ``os.environ`` up on every use), so setting
them for the duration of a call is enough, and spawned workers inherit them.
``nnUNet_def_n_proc`` however is read once, when :mod:`nnunetv2.configuration`
is imported, and copied by name into a few modules
(``from nnunetv2.configuration import default_num_processes``); those module
attributes are patched too and restored afterwards. Nothing is left behind:
:func:`nnunet_environment` restores every variable and attribute on exit.

Examples
--------
>>> import os, tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> before = os.environ.get("nnUNet_raw")
>>> with nnunet_environment(root) as paths:
...     os.environ["nnUNet_raw"] == str(paths.raw)
True
>>> os.environ.get("nnUNet_raw") == before
True
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import multiprocessing.pool
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Modules that copy ``nnunetv2.configuration.default_num_processes`` by name at import.
_NUM_PROCESS_MODULES: tuple[str, ...] = (
    "nnunetv2.configuration",
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnunetv2.inference.predict_from_raw_data",
    "nnunetv2.inference.export_prediction",
    "nnunetv2.evaluation.evaluate_predictions",
    "nnunetv2.training.dataloading.nnunet_dataset",
    "nnunetv2.training.dataloading.utils",
    "nnunetv2.experiment_planning.plan_and_preprocess_api",
)

#: Modules that start worker pools with ``multiprocessing.get_context("spawn").Pool``.
_POOL_MODULES: tuple[str, ...] = (
    "nnunetv2.experiment_planning.verify_dataset_integrity",
    "nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor",
    "nnunetv2.preprocessing.preprocessors.default_preprocessor",
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnunetv2.evaluation.evaluate_predictions",
)


class _ThreadContext:
    """Stands in for a multiprocessing context: ``Pool`` is a thread pool."""

    @staticmethod
    def Pool(processes: int | None = None, *args: object, **kwargs: object) -> multiprocessing.pool.ThreadPool:
        return multiprocessing.pool.ThreadPool(processes)


class _ThreadMultiprocessing:
    """Stands in for the ``multiprocessing`` module inside a few nnU-Net modules."""

    def get_context(self, method: str | None = None) -> type[_ThreadContext]:
        return _ThreadContext

    def __getattr__(self, name: str) -> object:
        return getattr(multiprocessing, name)


@contextlib.contextmanager
def thread_pools(enabled: bool = True) -> Iterator[None]:
    """Run nnU-Net's worker pools as thread pools in this process for a ``with`` block.

    nnU-Net's fingerprinting, integrity check, preprocessing and validation
    export each start a *spawn* process pool, and every spawned worker imports
    torch and nnunetv2 again (5-8 s each on a laptop). The per-case functions
    are numpy/SimpleITK/torch code that releases the GIL, so a thread pool runs
    the same nnU-Net code with the same results without that start-up cost.
    Only the ``multiprocessing`` name inside those modules is replaced, and
    restored on exit. With ``enabled=False`` this does nothing.
    """
    if not enabled:
        yield
        return
    shim = _ThreadMultiprocessing()
    saved: list[tuple[object, object]] = []
    try:
        for name in _POOL_MODULES:
            module = sys.modules.get(name) or importlib.import_module(name)
            saved.append((module, module.multiprocessing))  # type: ignore[attr-defined]
            module.multiprocessing = shim  # type: ignore[attr-defined]
        yield
    finally:
        for module, original in saved:
            module.multiprocessing = original  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NnunetPaths:
    """The three nnU-Net folders under one root (``RUN/nnunet``).

    Attributes
    ----------
    root
        Parent folder of the three.
    """

    root: Path

    @property
    def raw(self) -> Path:
        """``nnUNet_raw``: exported datasets (``DatasetXXX_Name/imagesTr``...)."""
        return self.root / "nnUNet_raw"

    @property
    def preprocessed(self) -> Path:
        """``nnUNet_preprocessed``: fingerprint, plans, preprocessed cases, splits."""
        return self.root / "nnUNet_preprocessed"

    @property
    def results(self) -> Path:
        """``nnUNet_results``: trained folds (``Trainer__Plans__3d_fullres/fold_N``)."""
        return self.root / "nnUNet_results"

    def make(self) -> None:
        """Create the three folders."""
        for p in (self.raw, self.preprocessed, self.results):
            p.mkdir(parents=True, exist_ok=True)


def default_processes() -> int:
    """Worker processes for preprocessing and validation export: ``min(8, CPU count)``."""
    return max(1, min(8, os.cpu_count() or 1))


def _set_environ(variables: dict[str, str | None]) -> None:
    """Set each variable; ``None`` removes it."""
    for key, value in variables.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def scoped_env(**variables: str | None) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for a ``with`` block, then restore them.

    >>> import os
    >>> with scoped_env(THORAXSEG_DOCTEST="1"):
    ...     os.environ["THORAXSEG_DOCTEST"]
    '1'
    >>> "THORAXSEG_DOCTEST" in os.environ
    False
    """
    saved = {k: os.environ.get(k) for k in variables}
    try:
        _set_environ(variables)
        yield
    finally:
        _set_environ(saved)


@contextlib.contextmanager
def nnunet_environment(
    root: str | Path,
    *,
    n_proc_da: int | None = None,
    num_processes: int | None = None,
    compile_network: bool | None = False,
) -> Iterator[NnunetPaths]:
    """Point nnU-Net at ``root/{nnUNet_raw, nnUNet_preprocessed, nnUNet_results}`` for a ``with`` block.

    Parameters
    ----------
    root
        Parent of the three folders (created if missing).
    n_proc_da
        ``nnUNet_n_proc_DA`` (augmentation worker processes; 0 = augment in the
        main process). None leaves nnU-Net's own choice. Note that nnU-Net's
        planner calls ``torch.set_num_threads(nnUNet_n_proc_DA)``, so planning
        needs a value ≥ 1; use :func:`scoped_env` to set 0 around training only.
    num_processes
        Processes for nnU-Net's preprocessing/export pools (``default_num_processes``).
        None: :func:`default_processes`.
    compile_network
        ``nnUNet_compile`` (``torch.compile`` of the network; nnU-Net never compiles
        on CPU). None leaves nnU-Net's default.

    Yields
    ------
    NnunetPaths
        The three folders.
    """
    paths = NnunetPaths(Path(root).resolve())
    paths.make()
    nproc = default_processes() if num_processes is None else max(1, int(num_processes))
    env = {
        "nnUNet_raw": str(paths.raw),
        "nnUNet_preprocessed": str(paths.preprocessed),
        "nnUNet_results": str(paths.results),
        "nnUNet_def_n_proc": str(nproc),
    }
    if n_proc_da is not None:
        env["nnUNet_n_proc_DA"] = str(int(n_proc_da))
    if compile_network is not None:
        env["nnUNet_compile"] = "t" if compile_network else "f"
    saved_attrs: list[tuple[object, object]] = []
    with scoped_env(**env):
        try:
            for name in _NUM_PROCESS_MODULES:
                module = sys.modules.get(name) or importlib.import_module(name)
                if hasattr(module, "default_num_processes"):
                    saved_attrs.append((module, module.default_num_processes))
                    module.default_num_processes = nproc
            yield paths
        finally:
            for module, value in saved_attrs:
                module.default_num_processes = value  # type: ignore[attr-defined]
