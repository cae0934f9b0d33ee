"""The window's Start follows what the dataset preview found: a file that is no dataset keeps
Start disabled (a PNG renamed .jsonl once launched a run), and the task follows the data."""

from __future__ import annotations

import json

from conftest import fill_tiny


def _show(qtbot, window, path) -> None:
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=60_000):
        window.setup.set_dataset(str(path))


def test_start_stays_disabled_while_the_preview_shows_an_error(make_window, qtbot, tiny_model,
                                                                classification_data, tmp_path):
    window = make_window()
    fill_tiny(window, tiny_model, classification_data)
    _show(qtbot, window, classification_data)
    assert window.start_button.isEnabled()

    image = tmp_path / "photo.jsonl"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16)
    _show(qtbot, window, image)
    assert not window.start_button.isEnabled()
    window.start()  # the keyboard shortcut reaches start() with the button disabled
    assert window.run.state == "idle" and "photo.jsonl" in window.status_line.text()

    _show(qtbot, window, classification_data)
    assert window.start_button.isEnabled()
    qtbot.waitUntil(lambda: not window.preview.inspection.is_running(), timeout=60_000)


def test_a_chat_dataset_switches_a_classification_form_to_sft(make_window, qtbot, tiny_model,
                                                               tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} + 1?"},
        {"role": "assistant", "content": f"{i + 1}"}]}) + "\n" for i in range(8)))
    window = make_window()
    fill_tiny(window, tiny_model, chat)  # the demo's task: classification, with label words
    assert window.form.widgets["task"].currentText() == "classification"
    _show(qtbot, window, chat)
    assert window.form.widgets["task"].currentText() == "sft"
    assert window.setup.current_config().task == "sft"
    assert not window.form.widgets["label_words"].isEnabled()
    assert window.start_button.isEnabled()
    qtbot.waitUntil(lambda: not window.preview.inspection.is_running(), timeout=60_000)
