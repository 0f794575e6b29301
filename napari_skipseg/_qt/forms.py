"""Form parts the three dock widgets share: a layer picker that follows the viewer, and
fields whose values are remembered between sessions.

:class:`LayerPicker` is a magicgui ``ComboBox`` whose choices are the viewer's layers of
some kinds. It follows layers added, removed, moved and RENAMED by itself (magicgui's own
napari layer combo boxes follow adds and removes only, and a renamed layer falls back to
the first one), and keeps the chosen layer (the object, not its name) across all of these.
Its ``native`` is a plain ``QComboBox``, so the widgets keep their ``layer_combo`` API.

:func:`remember` binds Qt fields to :mod:`napari_skipseg.settings`: each field is set from
the stored value when the widget opens and stored when the user changes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


class LayerPicker:
    """A combo box of the viewer's layers of ``kinds`` (napari layer classes), optionally
    filtered by ``accept(layer) -> bool``.

    Attributes
    ----------
    widget : magicgui.widgets.ComboBox
        The magicgui widget; ``widget.value`` is the chosen layer (None when there is none).
    native : QComboBox
        Its Qt widget: ``currentTextChanged``/``currentIndexChanged`` fire when the chosen
        layer or its name changes (never for a refresh that leaves both as they were).
    """

    def __init__(self, viewer, kinds: type | tuple[type, ...], *,
                 accept: Callable[[object], bool] | None = None, tooltip: str | None = None,
                 none_label: str | None = None) -> None:
        from magicgui.widgets import ComboBox

        self.viewer = viewer
        self.kinds = kinds
        self.accept = accept
        self.none_label = none_label  # a first choice standing for no layer (its value: None)
        self.widget = ComboBox(choices=self._choices, tooltip=tooltip)
        self.native = self.widget.native
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_removed)
        events.reordered.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self._alive = True
        self.native.destroyed.connect(self._on_destroyed)

    # -- what it offers -------------------------------------------------------------------------
    def layers(self) -> list:
        """The layers offered, in the viewer's order."""
        return [ly for ly in self.viewer.layers
                if isinstance(ly, self.kinds) and (self.accept is None or self.accept(ly))]

    def _choices(self, _widget=None) -> list[tuple[str, object]]:
        first = [(self.none_label, None)] if self.none_label is not None else []
        return first + [(ly.name, ly) for ly in self.layers()]

    @property
    def value(self):
        """The chosen layer, or None."""
        index = self.native.currentIndex()
        return self.native.itemData(index) if index >= 0 else None

    @value.setter
    def value(self, layer) -> None:
        # napari hands commands its layers behind a public-only proxy (wrapt: ``__wrapped__``)
        layer = getattr(layer, "__wrapped__", layer)
        for i in range(self.native.count()):
            if self.native.itemData(i) is layer:
                self.native.setCurrentIndex(i)
                return
        raise ValueError(f"{getattr(layer, 'name', layer)!r} is not offered here")

    # -- following the viewer -------------------------------------------------------------------
    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def _on_removed(self, event) -> None:
        event.value.events.name.disconnect(self.refresh)
        self.refresh()

    def _on_destroyed(self, *_) -> None:
        self._alive = False
        events = self.viewer.layers.events
        for emitter, callback in ((events.inserted, self._on_inserted), (events.removed, self._on_removed),
                                  (events.reordered, self.refresh)):
            emitter.disconnect(callback)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self.refresh)

    def refresh(self, event=None) -> None:
        """Offer the viewer's layers as they are now, keeping the chosen layer when it is
        still there (else the first one); a no-op when nothing offered changed."""
        if not self._alive:
            return
        combo = self.native
        wanted = self._choices()
        shown = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
        if len(wanted) == len(shown) and all(a[0] == b[0] and a[1] is b[1] for a, b in zip(wanted, shown, strict=True)):
            return
        before, before_text = self.value, combo.currentText()
        blocked = combo.blockSignals(True)
        try:
            combo.clear()
            self.widget.reset_choices()  # magicgui fills it from self._choices, in order
            index = next((i for i, (_, ly) in enumerate(wanted) if ly is before), 0 if wanted else -1)
            combo.setCurrentIndex(index)
        finally:
            combo.blockSignals(blocked)
        if self.value is not before or combo.currentText() != before_text:
            combo.currentIndexChanged.emit(combo.currentIndex())
            combo.currentTextChanged.emit(combo.currentText())
            self.widget.changed.emit(self.value)


# -- remembered values ---------------------------------------------------------------------------


def _getter_setter_signal(field):
    """How to read, set and watch a Qt field (combo box, spin box, check box, line edit)."""
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox

    if isinstance(field, QComboBox):
        def set_text(value):
            if isinstance(value, str) and field.findText(value) >= 0:
                field.setCurrentText(value)
        return field.currentText, set_text, field.activated
    if isinstance(field, QDoubleSpinBox):
        return field.value, lambda v: field.setValue(float(v)), field.valueChanged
    if isinstance(field, QSpinBox):
        return field.value, lambda v: field.setValue(int(v)), field.valueChanged
    if isinstance(field, QAbstractButton) and field.isCheckable():
        return field.isChecked, lambda v: field.setChecked(bool(v)), field.toggled
    if isinstance(field, QLineEdit):
        return field.text, lambda v: field.setText(str(v)), field.editingFinished
    raise TypeError(f"cannot remember a {type(field).__name__}")


def remember(section: str, fields: Mapping[str, object], *, skip: Iterable[str] = ()) -> dict:
    """Set each Qt field of ``fields`` (name -> widget) from the settings stored under
    ``section``, and store its value whenever the user changes it.

    A combo box is restored only to an item it offers and stored when the user picks one
    (``activated``), so a value the program sets is not taken for the user's choice. A value
    of the wrong type is ignored (the field keeps its default). Returns the values restored.
    """
    from .. import settings

    stored = settings.section(section)
    restored = {}
    skip = set(skip)
    for name, field in fields.items():
        get, set_, signal = _getter_setter_signal(field)
        if name in stored and name not in skip:
            try:
                set_(stored[name])
                restored[name] = stored[name]
            except (TypeError, ValueError):
                pass

        def store(*_, name=name, get=get):
            settings.update(section, {name: get()})

        signal.connect(store)
    return restored
