"""BENCHMARKS.md is written by several benchmark scripts: each owns one section between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and replaces only that, so running one
script never erases another's results. The file keeps its ``# Benchmarks`` title on top."""
import pathlib
import re

TITLE = "# Benchmarks"


def replace_section(text, name, body, title=TITLE):
    """``text`` with section ``name`` set to ``body`` (appended when it is not there yet)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block if text.strip() else block
    if not text.lstrip().startswith(title):
        text = f"{title}\n\n{text.lstrip()}"
    return text.rstrip() + "\n"


def write_section(path, name, body, title=TITLE):
    path = pathlib.Path(path)
    old = path.read_text() if path.exists() else ""
    path.write_text(replace_section(old, name, body, title))
