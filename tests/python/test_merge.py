"""sdpa.merge_partials (issue 15 item 3): attention over disjoint key pieces, merged, equals the
float64 numpy reference over all keys; empty pieces and fully masked rows; errors name the
argument."""

import numpy as np
import pytest

import sdpa
from sdpa_reference import assert_close, reference_attention


def _pieces(rng, dtype, cuts, masked_rows=False):
    b, h, lq, lk, d, dv = 2, 3, 7, 29, 8, 5
    q = rng.uniform(-1, 1, (b, h, lq, d)).astype(dtype)
    k = rng.uniform(-1, 1, (b, h, lk, d)).astype(dtype)
    v = rng.uniform(-1, 1, (b, h, lk, dv)).astype(dtype)
    mask = np.ones((lq, lk), dtype=bool)
    if masked_rows:
        mask = rng.uniform(size=(lq, lk)) > 0.3
        mask[[0, 4]] = False  # rows that see no key at all
    bounds = [0, *cuts, lk]
    outs, lses = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        out, lse = sdpa.attention(q, k[..., lo:hi, :], v[..., lo:hi, :], mask=mask[:, lo:hi],
                                  return_lse=True)
        outs.append(out)
        lses.append(lse)
    return (q, k, v, mask), outs, lses


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cuts", [[14], [0, 0, 5, 5, 28], [1, 2, 3]])
@pytest.mark.parametrize("masked_rows", [False, True])
def test_merged_pieces_equal_attention_over_all_keys(dtype, cuts, masked_rows):
    rng = np.random.default_rng(17)
    (q, k, v, mask), outs, lses = _pieces(rng, dtype, cuts, masked_rows)
    out, lse = sdpa.merge_partials(outs, lses)
    want_out, want_lse = reference_attention(q, k, v, mask=mask)
    assert out.dtype == dtype and lse.dtype == dtype
    assert_close(out, want_out)
    assert_close(lse, want_lse, what="lse")
    # one stacked array per argument works the same
    out2, lse2 = sdpa.merge_partials(np.stack(outs), np.stack(lses))
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(lse2, lse)


def test_only_empty_partials_give_the_empty_row():
    outs = np.full((2, 3, 4), np.nan, dtype=np.float32)
    lses = np.full((2, 3), -np.inf, dtype=np.float32)
    out, lse = sdpa.merge_partials(outs, lses)
    np.testing.assert_array_equal(out, np.zeros((3, 4), np.float32))
    np.testing.assert_array_equal(lse, np.full(3, -np.inf, np.float32))


def test_errors_name_the_argument():
    a = np.zeros((3, 4), np.float32)
    la = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"sdpa: lses has 1 partials but outs has 2"):
        sdpa.merge_partials([a, a], [la])
    with pytest.raises(ValueError, match=r"sdpa: outs\[1\]\.shape is \[3, 5\] but outs\[0\]"):
        sdpa.merge_partials([a, np.zeros((3, 5), np.float32)], [la, la])
    with pytest.raises(TypeError, match=r"sdpa: lses\[0\]\.dtype is float64 but must be float32"):
        sdpa.merge_partials([a], [la.astype(np.float64)])
    with pytest.raises(ValueError, match=r"sdpa: outs is empty"):
        sdpa.merge_partials([], [])
