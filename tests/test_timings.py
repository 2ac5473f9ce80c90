"""Printed times say what they are: measured or extrapolated, wall or CPU, and the load they were measured at."""

from __future__ import annotations

from kradapter.train.checkpoints import StepTimer, load_average
from kradapter.train.compare import load_caveat
from kradapter.train.progress import LabelledProgress
from kradapter.train.runner import timing_note


def efficiency(epochs, cpu=None, load=None):
    return {
        "seconds_per_epoch": {"mean": 10.0},
        "epochs_timed": {"mean": epochs},
        "cpu_seconds_per_epoch": {"mean": cpu},
        "load_average": load,
    }


def test_a_part_epoch_run_says_its_time_per_epoch_is_extrapolated():
    note = timing_note(efficiency(0.24, cpu=17.5, load=[1.0, 3.5]))
    assert note == "(wall clock of the training steps, extrapolated from 0.24 epochs; CPU 17.5 s; load average 1-3.5)"


def test_a_whole_epoch_run_says_measured():
    assert timing_note(efficiency(2.0, load=[0.5, 0.5])).startswith(
        "(wall clock of the training steps, measured over 2"
    )
    assert "load average 0.5)" in timing_note(efficiency(2.0, load=[0.5, 0.5]))


def test_compare_warns_when_the_load_changed_between_methods():
    quiet = {"a": {"efficiency": {"load_average": [1.0, 1.2]}}, "b": {"efficiency": {"load_average": [1.1, 1.3]}}}
    busy = {"a": {"efficiency": {"load_average": [1.0, 1.2]}}, "b": {"efficiency": {"load_average": [3.0, 5.0]}}}
    assert load_caveat(quiet) == ["load average during timed steps: a 1-1.2, b 1.1-1.3"]
    assert "the load changed (1 to 5)" in load_caveat(busy)[0]
    assert load_caveat({"a": {"efficiency": {}}}) == []  # runs from before load was recorded


def test_step_timer_keeps_cpu_seconds_and_load_across_a_resume(tmp_path):
    import json

    timer = StepTimer()
    for _ in range(3):
        timer.on_step_begin(None, None, None)
        sum(i * i for i in range(20000))  # some CPU work inside the step
        timer.on_step_end(None, None, None)
    assert timer.steps == 3 and timer.cpu_seconds > 0 and timer.seconds > 0
    assert (timer.load_first is None) == (load_average() is None)  # recorded wherever the OS has a load average
    state = {"stateful_callbacks": {"StepTimer": timer.state()}}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    resumed = StepTimer()
    resumed.restore(tmp_path)
    assert (resumed.steps, resumed.seconds, resumed.cpu_seconds) == (3, timer.seconds, timer.cpu_seconds)


def test_progress_bar_is_labelled_and_log_lines_stay_off_stdout(capsys):
    import types

    state = types.SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    bar = LabelledProgress("kradapter seed 0 lr 0.03")
    bar.on_train_begin(None, state, None)
    state.global_step = 2
    bar.on_step_end(None, state, None)
    bar.on_log(None, state, None, logs={"loss": 1.23456, "total_flos": 1.0})
    bar.on_train_end(None, state, None)
    out, err = capsys.readouterr()
    assert out == ""
    assert "kradapter seed 0 lr 0.03: {'loss': '1.235'}" in err and "total_flos" not in err
    assert "kradapter seed 0 lr 0.03" in err.split("{")[0]  # the bar itself carries the label


def test_comparison_plot_draws_majority_and_chance_lines(monkeypatch, tmp_path):
    from kradapter.train import compare

    captured = {}
    monkeypatch.setattr(compare, "save_figure", lambda fig, path: captured.setdefault("fig", fig))
    monkeypatch.setattr("matplotlib.pyplot.close", lambda fig: None)
    block = {"mean": 0.6, "std": 0.01}
    metrics = {
        m: {
            "groups": {"ID": block, "OOD": block},
            "seeds": [0, 1],
            "metric": "accuracy",
            "baselines": {
                "groups": {"ID": {"majority": 0.41, "chance": 0.33}, "OOD": {"majority": 0.5, "chance": 0.5}}
            },
        }
        for m in ("kradapter", "lora")
    }
    compare.plot(metrics, tmp_path / "comparison.png")
    ax = captured["fig"].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels.count("majority class") == 1 and labels.count("chance") == 1
    heights = sorted(round(seg[0][1], 6) for coll in ax.collections for seg in coll.get_segments())
    assert 41.0 in heights and 50.0 in heights and 33.0 in heights
