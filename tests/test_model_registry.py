"""Models register themselves: one file under deployzoo/models with a @register_model factory is all the wiring."""

from __future__ import annotations

import pytest

from deployzoo import registry
from deployzoo.errors import DeployzooError
from deployzoo.models import base


def test_seed_models_are_listed_in_seed_order_with_their_aliases():
    assert registry.model_names() == ["retinaface", "arcface", "mobilenetv1", "volo_d2", "maskrcnn"]
    for alias, name in [("iresnet", "arcface"), ("VOLO-D2", "volo_d2"), ("volo", "volo_d2"),
                        ("mask_rcnn", "maskrcnn"), (" Mask-RCNN ", "maskrcnn")]:
        assert registry.get_model(alias).name == name
    with pytest.raises(DeployzooError, match="unknown model 'nope' \\(choose from retinaface, arcface"):
        registry.get_model("nope")


@pytest.mark.parametrize("name", registry.model_names())
def test_each_registration_lives_in_its_model_file_and_names_itself(name):
    reg = base.REGISTERED[name]
    spec = registry.get_model(name)
    assert spec.name == name and reg.module.startswith("deployzoo.models.")
    assert spec.default_variant in spec.variants
    registry.get_task(spec.task)  # the task it names exists


def test_a_new_model_file_registers_itself_and_names_are_checked(monkeypatch):
    monkeypatch.setattr(base, "REGISTERED", dict(base.REGISTERED))
    monkeypatch.setattr(registry, "REGISTERED", base.REGISTERED)
    seed = registry.get_model("mobilenetv1")

    @base.register_model("tinynet", aliases=("tiny-net",), order=35)
    def model_spec():
        return base.ModelSpec(**{**seed.__dict__, "name": "tinynet"})

    assert registry.model_names()[:4] == ["retinaface", "arcface", "mobilenetv1", "tinynet"]
    assert registry.get_model("tiny-net").name == "tinynet"
    with pytest.raises(DeployzooError, match="'retinaface' registered twice"):
        base.register_model("retinaface")(model_spec)
    with pytest.raises(DeployzooError, match="lower case"):
        base.register_model("Bad Name")(model_spec)
