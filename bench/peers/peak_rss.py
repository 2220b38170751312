"""Runs a command and writes its peak resident set size as JSON: what `tiller` uses at most,
measured as trl_bench.py measures itself (getrusage's ru_maxrss, here of the waited-for child).

    peak_rss.py OUT.json COMMAND [ARGS...]

The command's stdout and stderr pass through; the exit status is the command's.
Plain Python: runs under any python3.
"""
import json
import resource
import subprocess
import sys


def main():
    if len(sys.argv) < 3:
        raise SystemExit("usage: peak_rss.py OUT.json COMMAND [ARGS...]")
    status = subprocess.call(sys.argv[2:])
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(sys.argv[1], "w") as f:
        json.dump({"peak_rss_mb": peak_kb / 1024.0, "status": status}, f)
    sys.exit(status)


if __name__ == "__main__":
    main()
