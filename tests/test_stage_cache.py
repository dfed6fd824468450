"""run's one stage-cache helper (cache.StageCache): a stage is computed once per identity."""

from __future__ import annotations

import json

from deployzoo.cache import StageCache, content_key


def test_stage_cache_computes_once_per_identity(tmp_path):
    calls = []

    def compute(v):
        return lambda: calls.append(v) or {"v": v}

    sc = StageCache(tmp_path / "stages")
    assert sc.get_or_compute("eval-fp32", {"engine": "a"}, compute(1)) == {"v": 1}
    assert sc.get_or_compute("eval-fp32", {"engine": "a"}, compute(2)) == {"v": 1}  # same identity: stored value
    assert sc.get_or_compute("eval-fp32", {"engine": "b"}, compute(3)) == {"v": 3}  # changed: computed again
    assert calls == [1, 3]
    stored = json.loads((tmp_path / "stages" / "eval-fp32.json").read_text())
    assert stored == {"key": content_key({"engine": "b"})[:16], "value": {"v": 3}}  # the format run dirs keep
    (tmp_path / "stages" / "eval-fp32.json").write_text("[1, 2")  # torn: computed again, not an error
    assert sc.get_or_compute("eval-fp32", {"engine": "b"}, compute(4)) == {"v": 4}
    (tmp_path / "stages" / "eval-fp32.json").write_text("[1, 2]")  # valid JSON, not a stage record
    assert sc.get_or_compute("eval-fp32", {"engine": "b"}, compute(5)) == {"v": 5} and calls == [1, 3, 4, 5]
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})
