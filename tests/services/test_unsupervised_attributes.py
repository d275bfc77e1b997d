"""A model configuration's `sefa: K` and `components: all` GANSpace file: listed by ListAttributes as sefa:K and
ganspace:K, usable as edit steps by name; a bad count stops the start naming the key."""

from __future__ import annotations

import pytest
import yaml

from faceedit.editing.unsupervised import compute_ganspace, save_ganspace
from faceedit.errors import InvalidInputError
from faceedit.models import load_generator
from services.common.latent_cache import LatentCache
from services.common.models import load_model_config
from services.editor.catalog import GeneratorCatalog
from services.editor.config import EditorConfig
from services.editor.editing import EditorCore
from services.editor.server import load_bases, load_boundaries
from services.editor.values import LatentSource, Step

from editor_fakes import FakeInference, write_models_file

pytestmark = pytest.mark.inference


def models_with(tmp_path, tiny_models, **family):
    path = write_models_file(tmp_path / "models.yaml", tiny_models, "tiny")
    data = yaml.safe_load(path.read_text())
    data["families"]["tiny"].update(family)
    path.write_text(yaml.safe_dump(data))
    return load_model_config(path)


def test_sefa_and_ganspace_directions_are_listed_and_edit_by_name(tmp_path, tiny_models, redis_client, namespace):
    basis = compute_ganspace(load_generator(tiny_models["generator"]).eval(), n=2000, components=4)
    save_ganspace(tmp_path / "ganspace.pt", basis)
    models = models_with(tmp_path, tiny_models, sefa=3,
                         boundaries=[{"path": str(tmp_path / "ganspace.pt"), "components": "all"}])
    bases = load_bases(models)
    editor = EditorCore(GeneratorCatalog(bases, "tiny", None), load_boundaries(models, bases),
                        LatentCache(redis_client, 60, namespace), FakeInference(tiny_models["generator"],
                                                                                generator_id="tiny"),
                        EditorConfig())
    family, listed, _ = editor.list_attributes("acme")
    by_name = {a.name: a for a in listed}
    assert set(by_name) == {"sefa:0", "sefa:1", "sefa:2", "ganspace:0", "ganspace:1", "ganspace:2", "ganspace:3"}
    assert by_name["sefa:1"].format == "sefa" and by_name["sefa:1"].accuracy is None
    assert by_name["ganspace:0"].format == "ganspace" and by_name["ganspace:0"].recommended_max > 0
    plain = editor.edit("acme", "", LatentSource(seed=3), [])
    for name in ("sefa:1", "ganspace:2"):
        moved = editor.edit("acme", "", LatentSource(seed=3), [Step(name, by_name[name].recommended_max)])
        assert moved.image.data != plain.image.data, name


def test_a_bad_sefa_count_names_the_key(tmp_path, tiny_models):
    with pytest.raises(InvalidInputError) as info:
        models_with(tmp_path, tiny_models, sefa=-1)
    assert info.value.field == "families.tiny.sefa"
