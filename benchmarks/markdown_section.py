"""Writing a benchmark's table into a Markdown file between its markers, atomically."""
from __future__ import annotations

from pathlib import Path


def replace_section(path, name: str, text: str) -> None:
  """Replace what lies between `<!-- name -->` and `<!-- /name -->` in the Markdown file `path`
  by `text` (a temporary file renamed over it: never half written)."""
  path = Path(path)
  doc = path.read_text()
  start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
  if start not in doc or end not in doc:
    raise SystemExit(f"--markdown {path}: the markers {start} and {end} are missing")
  head, rest = doc.split(start, 1)
  tmp = path.with_suffix(".md.tmp")
  tmp.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])
  tmp.replace(path)
