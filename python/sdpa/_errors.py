"""The library's names in error messages, renamed to the arguments the Python caller wrote.

The C++ library names what it checks as a C++ caller writes it: the fields of sdpa::Options
(`options.mask`, `options.window.left`, `options.sinks[2]`, ...) and the parameter of
sdpa::SetNumThreads (`num_threads`). A Python caller wrote `mask=` (or `attn_mask=` in
scaled_dot_product_attention), `window=(left, right)`, `sinks=[...]` and `n`. Every public
function runs under python_names(), which renames them in the message of a ValueError or
TypeError whose message starts with `sdpa: `; the exception itself (type, traceback, cause) is
the one raised.

    options.window.left -> window[0]     options.window.right -> window[1]
    options.<field>     -> <field>       (options.mask.shape[1] -> mask.shape[1])
    num_threads         -> n
plus each function's own renames, e.g. {"options.mask": "attn_mask"} or, for self_attention,
{"query": "Q", "key": "K", "value": "V"}.
"""

import contextlib
import re
from typing import Dict, Iterator, Optional

_COMMON = {
    "options.window.left": "window[0]",
    "options.window.right": "window[1]",
    "num_threads": "n",
}

# A name the library uses: an options field anywhere; a bare operand or parameter name only where
# it names an argument (followed by `.shape`, `[i]`, ` has ...` or ` is ...`), not in prose such
# as "one per query head".
_LIBRARY_NAME = re.compile(
    r"(?<![\w.])(options\.window\.(?:left|right)|options\.\w+"
    r"|(?:num_threads|query|key|value)(?=[.\[]| has | is ))")


def rename(message: str, renames: Optional[Dict[str, str]] = None) -> str:
    """`message` with the library's names replaced by the Python arguments."""
    renames = renames or {}

    def python_name(match: "re.Match[str]") -> str:
        name = match.group(1)
        if name in renames:
            return renames[name]
        if name in _COMMON:
            return _COMMON[name]
        return name[len("options."):] if name.startswith("options.") else name

    return _LIBRARY_NAME.sub(python_name, message)


@contextlib.contextmanager
def python_names(renames: Optional[Dict[str, str]] = None) -> Iterator[None]:
    """Context manager and decorator: sdpa errors raised inside name the Python arguments."""
    try:
        yield
    except (ValueError, TypeError) as e:
        if e.args and isinstance(e.args[0], str) and e.args[0].startswith("sdpa: "):
            e.args = (rename(e.args[0], renames),) + e.args[1:]
        raise
