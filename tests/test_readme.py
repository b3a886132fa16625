"""The README's opening says what exists today: every family it names as present has a
registered method, and it names no family as present that has none."""

from __future__ import annotations

import re
from pathlib import Path

import leanvision as lv
from leanvision.methods.registry import method_specs

README = Path(__file__).resolve().parents[1] / "README.md"

# words a reader takes as a promise → what would keep it: a registered method family, a
# registered method, or a registered search method
CLAIMS = {
    "pruning": {"pruning"},
    "distillation": {"distillation"},
    "low-bit": {"lowbit"},
    "architecture search": {"search:hournas", "search:dcnas", "search:oneshot"},
    "super-resolution": {"method:ghostsr", "method:fadn", "search:gan_c2f"},
    "low-level vision": {"method:ghostsr", "method:fadn", "method:ipt"},
    "detection": {"method:defeat", "search:hit_detector"},
    "federated": {"federated"},
    "self-supervised": {"self_supervised"},
}


def _registered() -> set[str]:
    """Every registered method family, ``method:<name>`` and ``search:<name>``."""
    from leanvision.search import list_search_methods

    return ({s.family for s in method_specs()} | {f"method:{m}" for m in lv.list_methods()}
            | {f"search:{m}" for m in list_search_methods()})  # fmt: skip


def _opening() -> str:
    text = README.read_text(encoding="utf-8")
    body = text.split("\n## ", 1)[0]
    return " ".join(body.split())


def _present_and_planned(opening: str) -> tuple[str, str]:
    """The sentences that say what is here, and the ones that say what is not yet."""
    sentences = re.split(r"(?<=[.;])\s+", opening)
    planned = " ".join(s for s in sentences if re.search(r"planned|not (here )?yet", s))
    present = " ".join(s for s in sentences if not re.search(r"planned|not (here )?yet", s))
    return present, planned


def test_readme_claims_only_families_that_are_registered():
    families = _registered()
    present, planned = _present_and_planned(_opening())
    for word, needs in CLAIMS.items():
        if word in present.lower():
            assert families & needs, (
                f"the README's opening says leanvision does {word!r}, but none of {sorted(needs)} "
                "is registered"
            )
        if word in planned.lower():
            assert not families & needs, f"{word!r} is registered now: say so in the README"


def test_readme_names_every_registered_method():
    text = README.read_text(encoding="utf-8")
    missing = [m for m in lv.list_methods() if f"`{m}`" not in text]
    assert not missing, f"methods registered but not described in the README: {missing}"
