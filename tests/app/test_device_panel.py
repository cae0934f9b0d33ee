"""The window's model probe, device profile and memory bar, with real probe processes."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import Recorder

pytest.importorskip("pytestqt")


from app.main_window import MainWindow  # noqa: E402
from engine.api.errors import UserError  # noqa: E402

PROBE_TIMEOUT_MS = 120_000


def _enter_model(window: MainWindow, model: str) -> None:
    """Type a model and press Enter, as a user does (the probe starts)."""
    window.model_edit.setText(model)
    window.model_edit.editingFinished.emit()


def test_memory_bar_follows_settings_and_blocks_start(make_window, qtbot, tiny_model,
                                                      classification_data):
    window = make_window()
    window.dataset_edit.setText(str(classification_data))
    _enter_model(window, str(tiny_model))
    window.model_probe.kill()  # a local folder's config.json is enough for the estimate
    device = window.device
    first = device.estimate_bytes
    # The tiny model's weights are small: most of the estimate is the 440 MiB runtime.
    assert 0.39 * 2**30 < first < 0.6 * 2**30
    assert "GiB of 6.00 GiB budget" in device.bar.format() and window.start_button.isEnabled()

    window.form.widgets["max_seq_len"].setValue(512)
    window.form.widgets["batch_size"].setValue(16)
    assert device.estimate_bytes > first  # the bar follows the form without a click

    # 0.56 GiB: the runtime and one block's MLP over 128 rows of 512 tokens (no attention
    # matrices: the CPU's SDPA is flash attention).
    device.budget.setValue(0.5)
    assert not window.start_button.isEnabled()
    reason = window.start_button.toolTip()
    assert "over the 0.50 GiB budget" in reason and "settings that fit:" in reason
    assert reason in device.reason.text()
    window.start()
    assert window.run.state == "idle"  # the shortcut cannot bypass the disabled button
    assert "over the 0.50 GiB budget" in window.status_line.text()

    suggestion = reason.split("settings that fit: ")[1].split(",")[0]
    field, value = suggestion.split("=")
    widget = window.form.widgets[field]
    widget.setCurrentText(value) if hasattr(widget, "setCurrentText") else widget.setValue(int(value))
    assert device.blocking_reason == "" and window.start_button.isEnabled()
    assert window.setup.current_config().memory_budget_gb == 0.5

    # Two workers: the bar holds one worker (its process) and says what both need together.
    alone = device.estimate_bytes
    window.form.widgets["workers"].setValue(2)
    per_worker = device.estimate_bytes
    assert per_worker < alone  # each evaluates half the step's copies
    assert device.bar.format() == (f"{per_worker / 2**30:.2f} GiB per worker of 0.50 GiB budget; "
                                   f"2 workers: {2 * per_worker / 2**30:.2f} GiB in total")


def test_memory_bar_sizes_a_long_sft_run_as_the_engine_does(make_window, qtbot, tiny_model,
                                                            tmp_path):
    """Long completions make an SFT run's logits the widest tensor: the bar takes the task and
    the longest completion from the dataset's inspection, so it shows what the trainer's
    pre-flight check computes, and a budget the bar refuses the engine refuses too."""

    from engine.api.estimate import estimate
    from engine.train.events import EventBus
    from engine.train.trainer import Trainer

    data = tmp_path / "long.jsonl"
    rows = [{"prompt": f"Question {i}:", "completion": " the answer is" + " yes" * 150}
            for i in range(40)]  # every completion as long: the held-out split changes nothing
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    window = make_window()
    # float32 whatever the CPU: the sizes below are a float32 base's (picked, so the probe's
    # detection of a bf16 CPU leaves it).
    combo = window.device.profile_combo
    combo.setCurrentIndex(combo.findData("laptop-cpu"))
    combo.activated.emit(combo.currentIndex())
    with qtbot.waitSignal(window.model_probe.sig_answered, timeout=PROBE_TIMEOUT_MS):
        _enter_model(window, str(tiny_model))  # the inspection then counts tokens
    for name, value in {"max_seq_len": 200, "batch_size": 4, "optimizer.q": 4, "steps": 1}.items():
        window.form.widgets[name].setValue(value)
    device = window.device
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=PROBE_TIMEOUT_MS) as inspected:
        window.setup.set_dataset(str(data))
        assert device.estimate_bytes is not None  # sized for the worst until the answer
    assert inspected.args[0]["task"] == "sft" and inspected.args[0]["longest_completion_tokens"] > 150
    config = window.setup.current_config()
    assert config.task == "auto"
    as_classification = estimate(device.shape, config).total_bytes
    # What the bar showed before (the tiny model's vocabulary is small: a 470 MiB runtime
    # dominates both), at least two steps of the budget's 0.01 GiB apart.
    assert device.estimate_bytes - as_classification > 0.02 * 2**30

    config.output_dir = str(tmp_path / "run")
    trainer = Trainer(config, EventBus([Recorder()]))
    try:
        trainer.setup(resume=False)
    finally:
        trainer.cleanup()
    assert trainer.memory_estimate.total_bytes == device.estimate_bytes

    budget = round((as_classification + device.estimate_bytes) / 2 / 2**30, 2)
    assert as_classification < budget * 2**30 < device.estimate_bytes
    device.budget.setValue(budget)
    assert device.blocking_reason and not window.start_button.isEnabled()
    refused = dataclasses.replace(window.setup.current_config(), output_dir=str(tmp_path / "refused"))
    trainer = Trainer(refused, EventBus([Recorder()]))
    with pytest.raises(UserError, match="memory_budget_gb"):
        try:
            trainer.setup(resume=False)
        finally:
            trainer.cleanup()


def test_profile_picker_sets_device_and_is_remembered(make_window, qtbot, tiny_model,
                                                      classification_data):
    window = make_window()
    window.dataset_edit.setText(str(classification_data))
    _enter_model(window, str(tiny_model))
    window.model_probe.kill()
    cpu_estimate = window.device.estimate_bytes
    combo = window.device.profile_combo
    combo.setCurrentIndex(combo.findData("nvidia-cuda"))
    combo.activated.emit(combo.currentIndex())
    config = window.setup.current_config()
    assert (config.device, config.dtype, config.memory_budget_gb) == ("cuda", "bfloat16", 8.0)
    assert window.device.estimate_bytes < cpu_estimate  # bf16 weights take half the bytes
    window.device.budget.setValue(3.5)

    again = make_window()
    assert again.device.profile_combo.currentData() == "nvidia-cuda"
    assert again.device.budget.value() == 3.5
    assert "CPU cores" in again.device.hardware_label.text()


def test_probe_summary_comes_from_the_engine(make_window, qtbot, tiny_model, tmp_path):
    window = make_window()
    with qtbot.waitSignal(window.model_probe.sig_answered, timeout=PROBE_TIMEOUT_MS) as probed:
        _enter_model(window, str(tiny_model))
    from engine.model.device import cpu_features

    # The CPU profile this machine gets: bf16 where its CPU runs bf16 natively.
    expected = "cpu-bf16" if "bf16" in cpu_features() else "laptop-cpu"
    assert probed.args[0]["layers"] == 2 and probed.args[0]["profile"] == expected
    summary = window.model_summary.text()
    assert "LlamaForCausalLM" in summary and "context 256" in summary
    assert "GiB of 6.00 GiB budget" in window.device.bar.format()

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with qtbot.waitSignal(window.model_probe.sig_answered, timeout=PROBE_TIMEOUT_MS):
        _enter_model(window, str(empty))
    assert "no config.json" in window.model_summary.text()
    assert window.device.bar.format() == "estimate: pick a model"
    assert window.start_button.isEnabled()  # no estimate: the engine's own check still applies


def test_recent_models_menu(make_window, tiny_model):
    window = make_window()
    window.model_edit.setText(str(tiny_model))  # typed, Enter not pressed yet
    assert window.device.estimate_bytes is not None and window.model_probe.is_running() is False
    window.model_edit.setText("")
    assert window.device.estimate_bytes is None
    window.model_picker.remember("default")
    window.model_picker.remember(str(tiny_model))
    window.model_picker._fill_recent_menu()
    actions = window.recent_button.menu().actions()
    assert [a.text() for a in actions] == [str(tiny_model), "default"]
    actions[0].trigger()
    assert window.model_edit.text() == str(tiny_model)
    assert window.device.estimate_bytes is not None  # sized from its config.json at once
    assert window.model_probe.is_running()  # picking from the menu is a request: probe
    window.model_probe.kill()


def test_over_budget_first_order_names_prge_that_fits(make_window, classification_data, tmp_path):
    """Llama-3.2-1B's shape (its config.json is all the estimate reads) on an 8 GiB laptop:
    first-order LoRA's saved activations do not fit and P-RGE's forward passes do, and the
    window says so before Start, whichever of the two is chosen."""
    from engine.api.estimate import estimate, replaced
    from engine.model.tiny import SHAPES

    folder = tmp_path / "llama-3.2-1b-shape"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SHAPES["llama-3.2-1b"]))
    window = make_window()
    window.dataset_edit.setText(str(classification_data))
    window.model_edit.setText(str(folder))  # typed: sized from config.json, no probe yet
    for name, value in {"max_seq_len": 512, "batch_size": 2}.items():
        window.form.widgets[name].setValue(value)
    window.form.widgets["task"].setCurrentText("classification")
    device = window.device
    device.budget.setValue(8.0)
    window.form.widgets["optimizer.name"].setCurrentText("fo")
    config, _ = device.sized(window.form.config())
    first_order = estimate(device.shape, config).total_bytes
    forward_only = estimate(device.shape, replaced(config, optimizer={"name": "prge"})).total_bytes
    assert first_order > 8 * 2**30 >= forward_only  # the case this test is about

    assert not window.start_button.isEnabled()
    reason = window.start_button.toolTip()
    assert f"First-order (fo) needs about {first_order / 2**30:.2f} GiB, over the 8.00 GiB" in reason
    assert f"P-RGE (forward passes only) fits in about {forward_only / 2**30:.2f} GiB" in reason
    assert "settings that fit: optimizer.name=prge" in reason and not device.note.isVisible()

    window.form.widgets["optimizer.name"].setCurrentText("prge")
    assert window.start_button.isEnabled() and device.blocking_reason == ""
    assert device.note.isVisible() and device.note.text() == (
        f"First-order (fo) would need about {first_order / 2**30:.2f} GiB, over the 8.00 GiB "
        "budget: P-RGE trains this model here, first-order does not.")
    device.budget.setValue(24.0)  # room for both: nothing to say
    assert not device.note.isVisible()
