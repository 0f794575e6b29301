"""The model card window's *Export for bioimage.io...* button.

It asks where to write the package and runs
:func:`napari_skipseg.model.bioimageio.export_package` in a worker thread (the export runs
the network a few times and writes ONNX: seconds), showing its steps on the button.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QPushButton

from ._jobs import job

LABEL = "Export for bioimage.io..."


class ExportPackageButton(QPushButton):
    """Exports the model ``model`` (a name or folder; set it before a click) as a
    bioimage.io package. ``worker`` is the running export, ``last_message`` what it said
    last (the path written, or the error)."""

    def __init__(self, parent=None) -> None:
        super().__init__(LABEL, parent)
        self.setToolTip("write this model as a bioimage.io model package (.zip) for the BioImage Model Zoo, "
                        "deepImageJ, ilastik, QuPath; test it with `bioimageio test`")
        self.model: str | None = None
        self.worker = None
        self.last_message = ""
        self.clicked.connect(lambda: self.start())

    def start(self, path: str | Path | None = None):
        """Export to ``path`` (asked for when None); returns the worker, or None."""
        from napari.qt.threading import create_worker

        from ..model.bioimageio import export_package

        if self.worker is not None or not self.model:
            return None
        if path is None:
            name = Path(str(self.model)).name
            path, _ = QFileDialog.getSaveFileName(self, "Export model as a bioimage.io package",
                                                  f"{name}.zip", "bioimage.io package (*.zip)")
            if not path:
                return None
        self.worker = create_worker(job(export_package), self.model, path, overwrite=True,
                                    _start_thread=False, _ignore_errors=True)  # errors: _on_error
        self.worker.yielded.connect(self._on_step)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.setEnabled(False)
        self.worker.start()
        return self.worker

    def _on_step(self, event) -> None:
        self.setText(f"exporting {event.done}/{event.total}...")
        self.setToolTip(event.message)

    def _on_done(self, path) -> None:
        from napari.utils.notifications import show_info

        self.last_message = f"wrote {path}"
        show_info(f"bioimage.io package: {self.last_message}")

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        self.last_message = " ".join(str(err).split()) or type(err).__name__
        show_error(f"Export failed: {self.last_message}")

    def _on_finished(self) -> None:
        self.worker = None
        self.setText(LABEL)
        self.setEnabled(True)
