"""Where a model's weights come from: each model file declares its official sources per variant (`WeightsSource`:
the published file, its direct URL where one is published, the published sha256 or sha256 prefix, and where those
were published); `official_sources` is the whole table, `deployzoo models` prints it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from deployzoo.errors import DeployzooError

_HEX = re.compile(r"[0-9a-f]{8,64}")


@dataclass(frozen=True)
class WeightsSource:
    """One variant's official weights: the published `file` and `published` (where it, its URL and its hash were
    published); `url` when it can be downloaded directly, else `manual` (where to download it by hand); `sha256`
    (a full published hash) or `hash_prefix` (a published sha256 prefix, e.g. the one in the file name); `note`
    (what the publisher reports for it)."""

    file: str
    published: str
    url: str | None = None
    sha256: str | None = None
    hash_prefix: str | None = None
    manual: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if (self.url is None) == (self.manual is None):
            raise ValueError(f"{self.file}: give either a direct url or where to download it manually")
        for h in (self.sha256, self.hash_prefix):
            if h is not None and not _HEX.fullmatch(h):
                raise ValueError(f"{self.file}: {h!r} is not a lower-case sha256 (prefix)")
        if self.sha256 is not None and len(self.sha256) != 64:
            raise ValueError(f"{self.file}: sha256 {self.sha256!r} is not 64 hex digits (use hash_prefix)")

    @property
    def expected(self) -> str | None:
        """The published sha256, or its published prefix; None when none is published."""
        return self.sha256 or self.hash_prefix

    def hash_text(self) -> str:
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.hash_prefix:
            where = " (in the file name)" if f"-{self.hash_prefix}." in self.file else ""
            return f"sha256 prefix {self.hash_prefix}{where}"
        return "none published"

    def download_text(self) -> str:
        return self.url or f"manual download: {self.manual}"

    def __str__(self) -> str:
        return f"{self.file} ({self.published}{'; ' + self.note if self.note else ''})"


# ---------------------------------------------------------------------------------------------------- the table
def official_sources() -> list[tuple[str, str, WeightsSource]]:
    """(model, variant, source) for every registered model's variants, in listing order."""
    from deployzoo.registry import get_model, model_names

    out = []
    for name in model_names():
        spec = get_model(name)
        out += [(name, v, spec.weights[v]) for v in spec.variants if v in spec.weights]
    return out


def official_source(spec_or_model: Any, variant: str | None) -> WeightsSource:
    spec = _spec(spec_or_model)
    variant = spec.check_variant(variant)
    src = spec.weights.get(variant)
    if not isinstance(src, WeightsSource):
        raise DeployzooError(f"{spec.name} {variant}: no official weights are known; pass --weights FILE or URL")
    return src


def _spec(spec_or_model: Any) -> Any:
    if isinstance(spec_or_model, str):
        from deployzoo.registry import get_model

        return get_model(spec_or_model)
    return spec_or_model
