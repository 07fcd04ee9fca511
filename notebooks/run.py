"""Executes the notebooks headless with nbclient, as CI does.

    python notebooks/run.py --out DIR [NOTEBOOK ...]

Every notebook in ``notebooks/`` (or those named) runs top to bottom in a
fresh kernel, working directory ``notebooks/``, with this process's
environment (``TOKENLEDGER_EXPORT`` or ``TOKENLEDGER_SERVER``,
``TOKENLEDGER_PIPELINES``, ``TOKENLEDGER_CHARTS``, default ``DIR/charts``;
relative paths are taken from the current directory). The executed copies,
with their outputs, go to ``DIR``; the committed notebooks are never written.
Every notebook runs; a notebook stops at its first cell that raises, whose
error is printed. Exits 1 when any notebook failed.
"""

import argparse
import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="where the executed copies go")
    p.add_argument("--timeout", type=int, default=600, help="seconds one cell may take")
    p.add_argument("notebooks", nargs="*", type=Path)
    args = p.parse_args()
    books = args.notebooks or sorted(HERE.glob("*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    # The kernels run in notebooks/: make the caller's relative paths absolute.
    os.environ.setdefault("TOKENLEDGER_CHARTS", str(args.out / "charts"))
    for var in ("TOKENLEDGER_EXPORT", "TOKENLEDGER_PIPELINES", "TOKENLEDGER_CHARTS"):
        if os.environ.get(var):
            os.environ[var] = str(Path(os.environ[var]).resolve())
    failed = 0
    for path in books:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=args.timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        )
        out = args.out / Path(path).name
        try:
            client.execute()
        except CellExecutionError as e:
            nbformat.write(nb, out)
            # The last line of the traceback is the error; strip the colours.
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
            print(f"FAILED {path} (executed copy: {out}):\n{plain}", file=sys.stderr)
            failed += 1
            continue
        nbformat.write(nb, out)
        print(f"ok {path} -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
