"""What a write may carry: a value a register cannot hold exactly is refused, never rounded on the way."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands import coerce
from gateway.core.errors import WriteRefused
from gateway.core.points import WriteSpec

pytestmark = pytest.mark.timeout(60)


def test_an_integer_register_refuses_fractions_and_a_scaled_one_its_in_between_values() -> None:
    plain = WriteSpec("number", 0, 100, resolution=1.0)
    assert coerce(plain, 2, "p") == 2.0
    with pytest.raises(WriteRefused, match="takes steps of 1"):
        coerce(plain, 2.5, "p")
    tenths = WriteSpec("number", 5, 30, resolution=0.1)  # int16, scale 0.1: 21.5 is raw 215
    assert coerce(tenths, 21.5, "p") == 21.5
    with pytest.raises(WriteRefused, match=r"takes steps of 0\.1"):
        coerce(tenths, 21.55, "p")
    offset = WriteSpec("number", None, None, resolution=2.0, origin=1.0)  # raw * 2 + 1: odd values only
    assert coerce(offset, 7, "p") == 7.0
    with pytest.raises(WriteRefused, match="from 1"):
        coerce(offset, 6, "p")
    states = WriteSpec("number", None, None, states={0: "auto", 1: "manual"}, resolution=1.0)
    assert coerce(states, "manual", "p") == 1.0
    with pytest.raises(WriteRefused):
        coerce(states, 0.5, "p")


@given(st.floats(0.001, 1000, allow_nan=False), st.floats(-1000, 1000, allow_nan=False),
       st.floats(-1e6, 1e6, allow_nan=False))
def test_whatever_is_accepted_is_a_whole_number_of_steps(resolution: float, origin: float, value: float) -> None:
    spec = WriteSpec("number", resolution=resolution, origin=origin)
    try:
        written = coerce(spec, value, "p")
    except WriteRefused:
        return
    assert written is not None
    steps = (written - origin) / resolution
    assert math.isclose(steps, round(steps), rel_tol=1e-6, abs_tol=1e-6)


@given(st.integers(-10_000, 10_000), st.sampled_from([1.0, 0.1, 0.5, 10.0]), st.sampled_from([0.0, 1.0, -40.0]))
def test_every_value_on_the_grid_is_accepted(raw: int, resolution: float, origin: float) -> None:
    value = raw * resolution + origin
    assert coerce(WriteSpec("number", resolution=resolution, origin=origin), value, "p") == value
