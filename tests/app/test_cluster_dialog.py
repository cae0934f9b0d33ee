"""“Several machines…”: the window writes the config, the engine's launch writes the commands."""

from __future__ import annotations

import yaml
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.widgets.cluster_dialog import ClusterDialog
from engine.api import config as config_io

ANSWER_TIMEOUT_MS = 120_000


def _answer(qtbot, dialog: ClusterDialog) -> None:
    with qtbot.waitSignal(dialog.launch.sig_answered, timeout=ANSWER_TIMEOUT_MS):
        qtbot.mouseClick(dialog.make_button, Qt.MouseButton.LeftButton)


def test_the_commands_for_three_machines_name_the_saved_config(qtbot, tiny_config, tmp_path):
    config = tiny_config("optimizer.q=8")
    path = tmp_path / "shared" / "cluster.yaml"
    dialog = ClusterDialog(config, path)
    qtbot.addWidget(dialog)
    assert not dialog.copy_torchrun.isEnabled()
    dialog.nodes.setValue(3)
    dialog.workers.setValue(2)
    dialog.host.setText("10.0.0.5")
    _answer(qtbot, dialog)
    assert config_io.load(path) == config  # the file the machines run is the form's config
    command = next(line for line in dialog.torchrun.toPlainText().splitlines()
                   if line.startswith("torchrun "))
    assert "--nnodes=3" in command and "--nproc-per-node=2" in command
    assert "--rdzv-endpoint=10.0.0.5:29500" in command and command.endswith(f"train {path}")
    task = yaml.safe_load(dialog.skypilot.toPlainText())
    assert task["num_nodes"] == 3
    assert dialog.status.text() == "6 workers: 3 machines × 2"
    qtbot.mouseClick(dialog.copy_torchrun, Qt.MouseButton.LeftButton)
    assert "--nnodes=3" in QGuiApplication.clipboard().text()


def test_more_workers_than_directions_and_rows_is_refused_with_the_reason(qtbot, tiny_config,
                                                                         tmp_path):
    # Fewer directions than workers is fine (they split the batch's rows); fewer direction-row
    # pairs than workers is not.
    dialog = ClusterDialog(tiny_config("optimizer.q=2", "batch_size=2"), tmp_path / "cluster.yaml")
    qtbot.addWidget(dialog)
    dialog.nodes.setValue(2)
    dialog.workers.setValue(2)
    _answer(qtbot, dialog)
    assert dialog.torchrun.toPlainText() != "" and dialog.copy_torchrun.isEnabled()
    dialog.nodes.setValue(3)
    _answer(qtbot, dialog)
    status = dialog.status.text()
    assert "6 workers" in status and "optimizer.q" in status and "batch_size" in status
    assert dialog.torchrun.toPlainText() == "" and not dialog.copy_torchrun.isEnabled()


def test_the_run_menu_opens_it_for_the_forms_settings(make_window, qtbot, tiny_model,
                                                      classification_data):
    from conftest import fill_tiny

    window = make_window()
    fill_tiny(window, tiny_model, classification_data, **{"optimizer.q": 4})
    action = next(a for a in window.menuBar().actions()[0].menu().actions()
                  if a.text() == "On several machines…")
    action.trigger()
    dialog = window.findChild(ClusterDialog)
    assert dialog is not None and dialog.isVisible()
    assert dialog.config.optimizer.q == 4 and dialog.config.model == str(tiny_model)
    assert dialog.config_path.parent == window.runs_root
    assert dialog.config_path.name == f"{dialog.config.output_dir.rsplit('/', 1)[-1]}.yaml"
    dialog.close()
