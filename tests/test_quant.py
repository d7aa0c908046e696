import numpy as np
from hypothesis import given, strategies as st

from contract.quant import dequantize, quantize


def test_quantize_clips_instead_of_wrapping():
    # 1.2 / (1/255) - 128 = 178: a cast would wrap it to -78; TFLite saturates to 127
    assert quantize(np.float32(1.2), 1 / 255, -128, np.int8) == 127
    assert quantize(np.float32(-5.0), 1 / 255, -128, np.int8) == -128


def test_quantize_rounds_to_nearest():
    q = quantize(np.array([0.0, 0.49, 0.51, 1.0], np.float32), 1.0, 0, np.int8)
    assert q.tolist() == [0, 0, 1, 1]
    assert q.dtype == np.int8


@given(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([np.int8, np.uint8, np.int16]))
def test_quantize_stays_in_range_and_round_trips(x, dtype):
    scale, zp = 0.05, (128 if dtype is np.uint8 else -3)
    q = quantize(np.array([x], np.float32), scale, zp, dtype)
    info = np.iinfo(dtype)
    assert info.min <= int(q[0]) <= info.max
    back = dequantize(q, scale, zp)[0]
    lo, hi = dequantize(np.array([info.min]), scale, zp)[0], dequantize(np.array([info.max]), scale, zp)[0]
    if lo <= x <= hi:
        assert abs(back - x) <= scale / 2 + 1e-3
