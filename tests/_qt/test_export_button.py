"""The model card window's *Export for bioimage.io...* button, in a real viewer."""

from __future__ import annotations

import os
import zipfile

import pytest

pytest.importorskip("bioimageio.spec", reason="exporting needs bioimageio.spec (extra 'bioimageio')")


def test_card_window_exports_the_shown_model(widget, qtbot, tmp_path):
    viewer, w = widget
    w.model_combo.setCurrentText("tiny")
    w.card_button.click()
    button = w.card_dialog.export_button
    assert button.isVisible() and button.model.endswith("tiny")
    target = tmp_path / "tiny.zip"
    worker = button.start(target)
    assert worker is not None and not button.isEnabled()
    assert button.start(target) is None  # one export at a time
    qtbot.waitUntil(lambda: button.worker is None, timeout=120_000)
    assert button.isEnabled() and button.text().startswith("Export")
    assert button.last_message == f"wrote {target}"
    with zipfile.ZipFile(target) as z:
        assert "rdf.yaml" in z.namelist() and "model.onnx" in z.namelist()
    if os.environ.get("SKIPSEG_SCREENSHOTS"):  # looked at in both themes while building it
        for theme in ("dark", "light"):
            viewer.theme = theme
            w.card_dialog.resize(640, 480)
            w.card_dialog.grab().save(os.path.join(os.environ["SKIPSEG_SCREENSHOTS"], f"card_export_{theme}.png"))
    w.card_dialog.close()


def test_export_error_is_one_line_and_the_button_comes_back(widget, qtbot, tmp_path, monkeypatch):
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: shown.append(str(message)))
    _, w = widget
    w.model_combo.setCurrentText("tiny")
    w.card_button.click()
    button = w.card_dialog.export_button
    folder = tmp_path / "a_folder.zip"
    folder.mkdir()  # not a file: refused
    button.start(folder)
    qtbot.waitUntil(lambda: button.worker is None, timeout=60_000)
    assert "not a file" in button.last_message and "\n" not in button.last_message
    assert shown == [f"Export failed: {button.last_message}"]
    assert button.isEnabled() and folder.is_dir()
    w.card_dialog.close()
