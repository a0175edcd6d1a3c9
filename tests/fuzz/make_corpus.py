#!/usr/bin/env python3
"""Writes the seed corpus of the .npy fuzzer (tests/fuzz/corpus/npy/): a few tiny valid files
written by numpy itself (every supported dtype, int32/int64 index arrays included, C and Fortran
order, header versions 1.0, 2.0 and 3.0) and a few invalid ones (truncated, wrong magic,
unsupported dtype, absurd or negative shape).
Deterministic: rerunning it reproduces the committed files. Files named regression_* are inputs
the fuzzer once failed on, kept by hand."""
import io
import os

import numpy as np
from numpy.lib import format as npy_format

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "npy")


def encode(array, version=None):
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array)
    else:
        npy_format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def raw(header, data=b"", version=(1, 0)):
    """A file with an arbitrary header text, padded like numpy pads it."""
    prefix = 10 if version[0] == 1 else 12
    header += " " * ((64 - (prefix + len(header) + 1) % 64) % 64) + "\n"
    size = len(header).to_bytes(2 if version[0] == 1 else 4, "little")
    return b"\x93NUMPY" + bytes(version) + size + header.encode("latin1") + data


def main():
    os.makedirs(OUT, exist_ok=True)
    values = np.arange(6, dtype=np.float64).reshape(2, 3) - 2.5
    files = {
        "valid_f4_2d": encode(values.astype(np.float32)),
        "valid_f8_3d": encode(values.reshape(1, 2, 3)),
        "valid_f4_4d_fortran": encode(np.asfortranarray(values.astype(np.float32).reshape(1, 1, 2, 3))),
        "valid_b1_mask": encode(np.array([[True, False, True], [False, True, True]])),
        "valid_f4_scalar": encode(np.float32(1.5)),
        "valid_f8_empty": encode(np.zeros((0, 4))),
        "valid_v2": encode(values.astype(np.float32), version=(2, 0)),
        "valid_v3": encode(values.astype(np.float32), version=(3, 0)),
        "valid_rank5": encode(np.ones((1, 1, 1, 2, 1), dtype=np.float32)),
        "valid_i4_offsets": encode(np.array([0, 3, 3, 7], dtype=np.int32)),
        "valid_i8_offsets": encode(np.array([0, 5, 12], dtype=np.int64)),
        "valid_i8_2d_fortran": encode(np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3))),
        "invalid_truncated_data": encode(values.astype(np.float32))[:-5],
        "invalid_truncated_header": encode(values.astype(np.float32))[:40],
        "invalid_magic": b"\x93NUMPX" + encode(values)[6:],
        "invalid_i2": encode(np.arange(4, dtype=np.int16)),
        "invalid_u8": encode(np.arange(4, dtype=np.uint64)),
        "invalid_big_endian_i8": encode(np.arange(4, dtype=">i8")),
        "invalid_truncated_i4": encode(np.arange(4, dtype=np.int32))[:-2],
        "invalid_big_endian": encode(np.arange(4, dtype=">f4")),
        "invalid_complex": encode(np.arange(2, dtype=np.complex64)),
        "invalid_structured": encode(np.zeros(2, dtype=[("a", "<f4"), ("b", "<f8")])),
        "invalid_absurd_shape": raw("{'descr': '<f4', 'fortran_order': False, "
                                    "'shape': (1000000000000, 1000000000000), }", b"\0" * 8),
        "invalid_negative_shape": raw("{'descr': '<f4', 'fortran_order': False, "
                                      "'shape': (2, -3), }", b"\0" * 24),
        "invalid_not_dict": raw("[('descr', '<f4')]"),
    }
    for name, content in files.items():
        with open(os.path.join(OUT, name + ".npy"), "wb") as f:
            f.write(content)
    print(f"wrote {len(files)} files to {OUT}")


if __name__ == "__main__":
    main()
