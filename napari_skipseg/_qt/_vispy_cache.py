"""Make napari's new Labels layers cheaper to create, by caching vispy's shader parsing.

Adding a Labels layer builds its brush and polygon overlays, whose vispy visuals parse the
signature of every GLSL function they compose with a regular expression run over the whole
function source (``vispy.visuals.shaders.parsing.parse_function_signature``). The same few
hundred sources are parsed again for every new layer; on a 2-core CPU that is most of the
~0.3 s for which the GUI thread is busy when a segmentation result lands.

The parse is a pure function of the source text, so :func:`install` memoises it (returning
a fresh argument list on each call, as the original does). Nothing else in vispy changes;
without vispy, or with a vispy that no longer has the function, it does nothing.
"""

from __future__ import annotations

import functools

_installed = False


def install() -> bool:
    """Memoise vispy's shader signature parsing for this process (idempotent)."""
    global _installed
    if _installed:
        return True
    try:
        from vispy.visuals.shaders import parsing
    except ImportError:
        return False
    original = getattr(parsing, "parse_function_signature", None)
    if original is None:
        return False
    cached = functools.lru_cache(maxsize=4096)(original)

    @functools.wraps(original)
    def parse_function_signature(code):
        name, args, rtype = cached(code)
        return name, list(args), rtype

    parsing.parse_function_signature = parse_function_signature
    _installed = True
    return True
