"""The dataset panel with a known model: token counts, and the schema override."""

from __future__ import annotations

import pytest
from conftest import drop_file

pytest.importorskip("pytestqt")


TIMEOUT_MS = 120_000


def test_schema_override_and_token_counts(make_window, qtbot, tiny_model, classification_data):
    window = make_window()
    window.form.widgets["max_seq_len"].setValue(16)
    with qtbot.waitSignal(window.model_probe.sig_answered, timeout=TIMEOUT_MS):
        window.model_edit.setText(str(tiny_model))
        window.model_edit.editingFinished.emit()
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=TIMEOUT_MS) as inspected:
        drop_file(window.drop_zone, classification_data)
    result = inspected.args[0]
    assert result["schema"] == "classification" and not result["errors"]
    tokens = result["token_lengths"]  # counted with the tiny model's tokenizer
    assert tokens["max_seq_len"] == 16 and 0 < tokens["min"] <= tokens["median"] <= tokens["max"]
    summary = window.preview.summary.text()
    assert "tokens per row" in summary and f"{tokens['truncated']} of 120 sampled rows" in summary
    assert "labels: " in summary and "example: " in summary

    # The rows hold text+label; read as plain text, the same file trains a language model.
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=TIMEOUT_MS) as inspected:
        window.preview.schema.setCurrentText("text")
    assert (inspected.args[0]["schema"], inspected.args[0]["task"]) == ("text", "sft")
    assert "schema <b>text</b>" in window.preview.summary.text()
    config = window.setup.current_config()
    assert config.schema == "text"
    assert "schema: text" in window.setup.show_yaml().yaml_text
