"""The memoised vispy shader parser gives the original's answers."""

from __future__ import annotations

import pytest

from napari_skipseg._qt import _vispy_cache

parsing = pytest.importorskip("vispy.visuals.shaders.parsing")

CODE = """
vec4 blend(vec4 a, float w) {
    return a * w;
}
"""


def test_install_memoises_and_keeps_answers():
    before = parsing.parse_function_signature(CODE)
    assert _vispy_cache.install() and _vispy_cache.install()  # idempotent
    first = parsing.parse_function_signature(CODE)
    second = parsing.parse_function_signature(CODE)
    assert first == second == before == ("blend", [("vec4", "a"), ("float", "w")], "vec4")
    first[1].append(("int", "x"))  # callers get their own list: the cache is not altered
    assert parsing.parse_function_signature(CODE)[1] == [("vec4", "a"), ("float", "w")]
    with pytest.raises(Exception, match="Failed to parse"):
        parsing.parse_function_signature("not glsl at all")
