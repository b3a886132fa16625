"""Run timm's own model tests (``tests/test_models.py``) on the models leanvision registers.

timm's test file is parametrised over ``timm.list_models(...)``. This script imports leanvision
first (so our architectures are in timm's registry when the file builds its parameter lists),
adds our families to the file's lists the way timm adds its own families (``NON_STD_FILTERS``
for token-output transformers, ``FEAT_INTER_FILTERS`` for modules with
``forward_intermediates``, ``EXCLUDE_JIT_FILTERS`` for models TorchScript cannot compile), and
deselects every test case that is not about one of our models.

timm's tests are not part of timm's wheel. Get them once from the source distribution of the
pinned timm (nothing is downloaded when this script runs)::

    pip download timm==1.0.31 --no-binary :all: --no-deps -d /tmp/timm_sdist
    tar xzf /tmp/timm_sdist/timm-1.0.31.tar.gz -C /tmp/timm_sdist

then::

    python tools/timm_model_tests.py --timm-tests /tmp/timm_sdist/timm-1.0.31/tests
    python tools/timm_model_tests.py --models 'resnet20_cifar,cmt_*' -- -k forward -x

(or set ``LEANVISION_TIMM_TESTS`` instead of ``--timm-tests``). Arguments after ``--`` go to
pytest unchanged. The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

ENV_VAR = "LEANVISION_TIMM_TESTS"
TIMM_VERSION = "1.0.31"
GET_TESTS = (
    f"pip download timm=={TIMM_VERSION} --no-binary :all: --no-deps -d /tmp/timm_sdist && "
    f"tar xzf /tmp/timm_sdist/timm-{TIMM_VERSION}.tar.gz -C /tmp/timm_sdist"
)

# Our families in timm's terms. timm's test file lists its families by name pattern or module;
# ours are added to the same lists before the file parametrises its tests.
#
# Transformers whose features are tokens (B, N, C), not a (B, C, H, W) map: timm runs these
# through ``test_model_default_cfgs_non_std`` and leaves them out of ``features_only`` tests.
LV_NON_STD_FILTERS = ["augvit_*", "ptnt_*", "vit_res*", "vil_ls_*"]
# Modules whose models implement ``forward_intermediates`` and a ``feature_info`` list.
LV_FEAT_INTER_MODULES = [
    "augvit",
    "bimlp",
    "cmt",
    "ghost_resnet",
    "pyramid_tnt",
    "tinynet",
    "vil_ls",
    "vit_resnas",
]
# Models TorchScript cannot compile (each model's docstring says why).
LV_EXCLUDE_JIT_FILTERS: list[str] = [
    "resnet20_adder",  # the adder layer is an autograd.Function over a native kernel
    "bimlp_*",  # the binary sign is an autograd.Function (straight-through / FDA gradient)
]
# (Every model torch.fx traces: nothing is added to EXCLUDE_FX_FILTERS.)
# Image-to-image models (super-resolution: no classifier, the output is an image): timm's
# tests are written for classifiers; tests/test_timm_contract.py checks what applies to them.
LV_EXCLUDE_FILTERS: list[str] = ["edsr_*", "srnet_*", "ipt_*", "*_detector"]

# Added when the test file first calls list_models, before it builds its parameter lists from
# them (each list here is defined above that first call in timm's file).
_EXTENSIONS = {
    "NON_STD_FILTERS": LV_NON_STD_FILTERS,
    "FEAT_INTER_FILTERS": LV_FEAT_INTER_MODULES,
    "EXCLUDE_JIT_FILTERS": LV_EXCLUDE_JIT_FILTERS,
    "EXCLUDE_FILTERS": LV_EXCLUDE_FILTERS,
}


def find_timm_tests(path: str | None) -> Path:
    """Locate timm's ``test_models.py`` from ``--timm-tests`` or ``$LEANVISION_TIMM_TESTS``.

    Raises:
        SystemExit: no path given, or no ``test_models.py`` there; the message says how to
            get timm's tests.
    """
    given = path or os.environ.get(ENV_VAR)
    if not given:
        raise SystemExit(
            f"timm's model tests are not given: pass --timm-tests DIR or set ${ENV_VAR} to the "
            f"tests/ folder of timm {TIMM_VERSION}'s source distribution. Get it with:\n"
            f"  {GET_TESTS}\n(then DIR is /tmp/timm_sdist/timm-{TIMM_VERSION}/tests)"
        )
    p = Path(given).expanduser()
    test_file = p if p.is_file() else p / "test_models.py"
    if not test_file.is_file():
        raise SystemExit(
            f"no test_models.py at {given!r}: expected the tests/ folder of timm "
            f"{TIMM_VERSION}'s source distribution. Get it with:\n  {GET_TESTS}"
        )
    return test_file.resolve()


_extended: set[str] = set()  # the lists of timm's test file extended so far


def _extend_caller_lists(frame_globals: dict[str, Any]) -> None:
    """Add our families to timm's test-module lists (in place, once per list)."""
    if not str(frame_globals.get("__name__", "")).endswith("test_models"):
        return
    for name, ours in _EXTENSIONS.items():
        lst = frame_globals.get(name)
        if isinstance(lst, list) and name not in _extended:
            lst.extend(ours)
            _extended.add(name)


def _wrap(fn: Callable[..., list[str]]) -> Callable[..., list[str]]:
    def wrapper(*args: Any, **kwargs: Any) -> list[str]:
        # The caller's module globals: timm's test file while it builds its parameter lists.
        _extend_caller_lists(sys._getframe(1).f_globals)
        return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


class LeanvisionModels:
    """pytest plugin: register leanvision's models, extend timm's lists, keep our cases only."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        import timm

        import leanvision.models as lv_models

        self.ours = set(lv_models.leanvision_models())
        self.outcomes: dict[str, Counter[str]] = {}
        pats = [p for p in patterns if p]
        if pats:
            self.ours = {n for n in self.ours if any(fnmatch.fnmatch(n, p) for p in pats)}
            if not self.ours:
                raise SystemExit(f"no leanvision model matches {pats}")
        # timm's test file does ``from timm import list_models``: wrap it before the import.
        timm.list_models = _wrap(timm.list_models)

    def _model_of(self, item: pytest.Item) -> str | None:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            return None
        name = callspec.params.get("model_name")
        if not isinstance(name, str):
            return None
        return name.split(".")[0]  # cfg tests list names with their pretrained tag

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = report.nodeid.split("::")[-1].split("[")[0]
        if report.when == "call" or report.outcome != "passed":  # setup skips/errors count too
            self.outcomes.setdefault(test, Counter())[report.outcome] += 1

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        tr = terminalreporter
        tr.section("leanvision models: outcomes per timm test")
        tr.write_line(f"{'test':45s} {'passed':>7s} {'failed':>7s} {'skipped':>8s}")
        for test, c in sorted(self.outcomes.items()):
            tr.write_line(f"{test:45s} {c['passed']:7d} {c['failed']:7d} {c['skipped']:8d}")

    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        missing = sorted(set(_EXTENSIONS) - _extended)
        if missing:
            raise pytest.UsageError(
                f"timm's test file has no {missing} list defined before its first list_models "
                f"call: this tool is written for timm {TIMM_VERSION}'s tests/test_models.py"
            )
        keep, drop = [], []
        for item in items:
            (keep if self._model_of(item) in self.ours else drop).append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep


def main(argv: list[str] | None = None) -> int:
    """Run timm's model tests on leanvision's models; returns pytest's exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm-tests", help=f"timm's tests/ folder (or ${ENV_VAR})")
    parser.add_argument(
        "--models", default="", help="comma-separated wildcards limiting our models (default: all)"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    test_file = find_timm_tests(args.timm_tests)
    plugin = LeanvisionModels(args.models.split(","))
    pytest_args = [
        str(test_file),
        "-p",
        "no:cacheprovider",
        # timm's sdist holds timm's source next to its tests; importlib mode keeps it off
        # sys.path, so the tests run against the installed timm.
        "--import-mode=importlib",
        *args.pytest_args,
    ]
    return int(pytest.main(pytest_args, plugins=[plugin]))


if __name__ == "__main__":
    sys.exit(main())
