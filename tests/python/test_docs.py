"""The Python examples in docs/python.md run and print what the text says they print."""

import contextlib
import io
import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md"


def code_blocks():
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.skipif(not DOC.exists(), reason="docs/python.md is not next to the tests")
def test_examples_run_and_print_what_they_show():
    blocks = code_blocks()
    assert len(blocks) >= 4
    namespace = {}
    for block in blocks:  # one namespace: later examples reuse names, as a reader would
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            exec(compile(block, str(DOC), "exec"), namespace)
        # "print(...)  # text" and "print(...)\n# text\n# text" show the expected output
        shown = re.findall(r"print\(.*\)  # (.*)", block)
        shown += ["\n".join(re.findall(r"^# (.*)$", lines, flags=re.M))
                  for lines in re.findall(r"print\(.*\)\n((?:# .*\n)+)", block)]
        printed = stdout.getvalue()
        for text in shown:
            assert text in printed, f"{text!r} not in the output {printed!r} of:\n{block}"
