"""The gunicorn settings the bench serves with, read from the one place they live: the Makefile.

`make` itself expands the Makefile's GUNICORN variable (so WORKERS / THREADS from the
environment, `$(shell nproc)` and the like work exactly as for `make run` / `make serve`):

    make -s --eval "bench-print-%: ; @printf '%s\\n' \"\$(\$*)\"" bench-print-GUNICORN

(printed in double quotes, so that the line's own single quotes, as in --forwarded-allow-ips '',
reach shlex as the shell would read them)

PROPOSED is the change to the Makefile this bench argues for (goals 4 and 5, bench/README.md):
the same lines, written as they would go into the Makefile. `proposed_options()` expands
them the same way, from a copy of the Makefile with those lines replaced, so what is
measured is exactly what the Makefile would run.
"""
import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = ROOT / "Makefile"

# The Makefile lines that decide how gunicorn serves, as this bench proposes them (goal 4 in
# bench/README.md). Each replaces the Makefile's line for the same variable; WORKERS (one per core,
# from nproc) and THREADS stay as the Makefile has them.
PROPOSED = """\
# --reuse-port: every worker opens its own listening socket (SO_REUSEPORT) and the kernel spreads
# new connections evenly over them. With one socket shared by the workers, a burst of new
# kept-alive connections often all land on the worker that wakes first, and stay there while the
# other cores idle (bench/README.md, goal 4). Beware: a second server started on the same port
# then does not fail with "address in use", it silently takes a share of the connections.
GUNICORN := $(BIN)/gunicorn --no-control-socket --worker-class gthread --workers $(WORKERS) --threads $(THREADS) --reuse-port --timeout 120
"""


def makefile_options(makefile: Path = MAKEFILE) -> list[str]:
    """gunicorn's options as the Makefile's GUNICORN variable expands here and now (binary left out)."""
    command = ["make", "-s", "--no-print-directory", "-f", str(makefile),
               "--eval", "bench-print-%: ; @printf '%s\\n' \"$($*)\"", "bench-print-GUNICORN"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    words = shlex.split(result.stdout.strip())
    if result.returncode or not words or not words[0].endswith("gunicorn"):
        raise RuntimeError(f"cannot read GUNICORN from {makefile}:\n{result.stdout}{result.stderr}")
    return words[1:]


def proposed_makefile(directory: Path) -> Path:
    """A copy of the Makefile with its lines for the PROPOSED variables taken out and the PROPOSED
    block put where the first of them was."""
    replaced = {_variable(line) for line in PROPOSED.splitlines()} - {None}
    out, inserted = [], False
    for line in MAKEFILE.read_text().splitlines():
        if _variable(line) in replaced:
            if not inserted:
                out += PROPOSED.splitlines()
                inserted = True
            continue
        out.append(line)
    target = directory / "Makefile.proposed"
    target.write_text("\n".join(out) + "\n")
    return target


def proposed_options(directory: Path) -> list[str]:
    return makefile_options(proposed_makefile(directory))


def _variable(line: str) -> str | None:
    match = re.match(r"([A-Z_]+)\s*[:?+]?=", line)
    return match.group(1) if match else None
