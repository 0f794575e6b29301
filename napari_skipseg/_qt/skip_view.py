"""What the Skip connections widget shows besides its forms: which model it starts with, and
how the side-by-side ablation panels are framed and titled on the canvas.

Kept apart from the widget's layout (``skip_widget.py``) so each can change alone.
"""

from __future__ import annotations

from ..feature_layers import META_KEY

#: Name of the Points layer that carries the titles of the ablation panels.
PANEL_TITLES = "ablation: titles"


def default_model(viewer, layer_name: str, models: dict) -> tuple[str | None, str]:
    """The model the explorer starts with, and why: the active model (the one Segment
    uses), else the one that suits the image layer (:func:`~napari_skipseg.model.choose.choose_model`)."""
    from ..model.store import active_model

    active = active_model()
    if active:
        if active in models:
            return active, "Segment's active model"
        by_path = next((n for n, e in models.items() if str(e.path) == active), None)
        if by_path:
            return by_path, "Segment's active model"
    if not layer_name or layer_name not in viewer.layers or not models:
        return None, ""
    from ..model.choose import choose_model
    from .segment_widget import layer_facts

    try:
        name, why = choose_model(layer_facts(viewer.layers[layer_name]), list(models.values()))
    except (LookupError, ValueError):
        return None, ""
    return name, why


def panel_titles(result, source, what: str, side_by_side: bool) -> tuple[list[list[float]], list[str]]:
    """World positions (top-left corner of each panel, leading axes at the piece's index)
    and titles of the ablation panels."""
    from ..feature_layers import _placement

    prepared = result.input
    d = len(prepared.shape)
    scale, translate = _placement(source, prepared, (1,) * d, leading=0)
    width = prepared.shape[-1] * scale[-1] * 1.05
    lead = list(source.translate[: len(source.translate) - d]) if len(source.translate) > d else []
    lead_scale = list(source.scale[: len(lead)])
    lead = [t + s * i for t, s, i in zip(lead, lead_scale, prepared.index, strict=False)]
    titles = ["original", f"without {what}", "change"]
    if not side_by_side:
        titles = [f"original and output without {what} (toggle the layers)"]
    points = []
    for n in range(len(titles)):
        top = [float(t) for t in translate]
        top[-1] += n * width
        points.append([*lead, *top])
    return points, titles


def show_panel_titles(viewer, result, source, what: str, side_by_side: bool, meta: dict) -> None:
    """Title each ablation panel on the canvas, just above it (a Points layer whose points
    carry text, in the theme's text colour)."""
    from napari.utils.theme import get_theme

    points, titles = panel_titles(result, source, what, side_by_side)
    if PANEL_TITLES in viewer.layers:
        viewer.layers.remove(PANEL_TITLES)
    # (y, x) only: a 2D points layer is drawn on every slice of a stack
    pts = [list(p[-2:]) for p in points]
    height = result.input.shape[-2] * float(source.scale[-2])
    lift = [-0.12 * height, 0.0]  # above the panel, on the canvas
    try:
        color = get_theme(viewer.theme).text.as_hex()
    except (KeyError, ValueError):
        color = "white"
    viewer.add_points(
        pts, name=PANEL_TITLES, size=0.0, features={"title": titles}, metadata={META_KEY: meta},
        text={"string": "{title}", "anchor": "lower_left", "size": 11, "color": color, "translation": lift},
    )


def fit_panels(viewer, side_by_side: bool) -> None:
    """Frame the ablation panels: the explorer's feature maps are hidden (they would tint the
    panels) and the view is reset to what remains."""
    if not side_by_side:
        return
    for layer in viewer.layers:
        info = getattr(layer, "metadata", {}).get(META_KEY, {})
        if "level" in info and layer.visible:
            layer.visible = False
    viewer.reset_view()
