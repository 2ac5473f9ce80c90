"""One task base: `kradapter train` loads the base model once to read its targets and once per seed, and never
holds two copies at a time (the untouched model checks the method and gives the zero-shot scores)."""

from __future__ import annotations

import gc
import weakref

from kradapter.train.runner import run
from kradapter.train.tasks import text
from recipe_fixtures import text_data, tiny_bert, train_args


def test_text_task_loads_once_plus_once_per_seed_one_copy_alive(tmp_path, monkeypatch):
    model_path, data = tiny_bert(tmp_path), text_data(tmp_path)
    loads, alive, most = [], weakref.WeakSet(), [0]
    original = text.load_model

    def counting_load(*args, **kwargs):
        gc.collect()
        most[0] = max(most[0], len(alive) + 1)
        model = original(*args, **kwargs)
        loads.append(1)
        alive.add(model)
        return model

    monkeypatch.setattr(text, "load_model", counting_load)
    run(train_args("text", tmp_path / "run", model=model_path, data=data, seeds="2", max_steps=1))
    assert len(loads) == 1 + 2  # prepare (targets, method check), then seed 0 and seed 1
    assert most[0] == 1
