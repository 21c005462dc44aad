#!/usr/bin/env python3
"""flowcore against its peers, side by side in one run, every process on one core.

Usage:
    FLOWCORE_PEERS_DIR=/path/to/perf python3 benches/peers.py [--rounds 3] [--core 1]
    python3 benches/peers.py --peers-dir /path/to/perf [--only lead|big] [NAME=N ...]

The peers' directory holds peer_python_seed.py, peer_builderbot/bench.mjs and their flows
(BuilderBot installed under /tmp, see its README). The flowcore bench binary is built
first (`cargo bench -p flowcore-benches --bench peers --no-run`). Each round runs every
configuration once, alternating flowcore and the peers, so that a drift in the machine's
speed hits them alike; the table gives the medians of the rounds and the ratios of the
medians to the targets.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LINE_RE = re.compile(r"^peer=(\S+) conversations=(\d+) turns=(\d+) seconds=([\d.]+) turns_per_s=([\d.]+)$", re.M)

# name -> (default N, description)
CONFIGS = {
    "flowcore-lead": (150_000, "flowcore, lead.json, state through JSON"),
    "seed-lead": (150_000, "python-seed, lead.json"),
    "bb-phonedb": (16_000, "builderbot, lead, per-phone JSON DB, 32 in flight"),
    "flowcore-big": (12_000, "flowcore, big.json, state through JSON"),
    "seed-big": (1_200, "python-seed, big.json"),
}
# (flowcore config, peer config, target ratio)
TARGETS = [("flowcore-lead", "seed-lead", 10.0), ("flowcore-lead", "bb-phonedb", 80.0), ("flowcore-big", "seed-big", 20.0)]


def build_flowcore() -> str:
    """Builds the peers bench and returns its executable's path."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "flowcore-benches", "--bench", "peers", "--no-run", "--message-format=json"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    for line in out.splitlines():
        if '"executable"' in line and '"peers"' in line:
            m = re.search(r'"executable":"([^"]+)"', line)
            if m:
                return m.group(1)
    raise SystemExit("cargo did not report the peers bench executable")


def argv_of(name: str, n: int, peers: str, flowcore: str) -> list[str]:
    seed = os.path.join(peers, "peer_python_seed.py")
    big = os.path.join(peers, "flows", "big.json")
    bb = os.path.join(peers, "peer_builderbot", "bench.mjs")
    return {
        "flowcore-lead": [flowcore, str(n)],
        "flowcore-big": [flowcore, str(n), "--flow", "big"],
        "seed-lead": [sys.executable, seed, str(n)],
        "seed-big": [sys.executable, seed, str(n), "--flow", big],
        "bb-phonedb": ["node", bb, str(n), "--db", "phone"],
    }[name]


def run_once(argv: list[str], core: str, cwd: str) -> float:
    p = subprocess.run(["taskset", "-c", core, *argv], capture_output=True, text=True, cwd=cwd)
    m = LINE_RE.search(p.stdout)
    if p.returncode != 0 or not m:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"run failed (rc={p.returncode}): {' '.join(argv)}")
    print(f"  {m.group(0)}", flush=True)
    return float(m.group(5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-dir", default=os.environ.get("FLOWCORE_PEERS_DIR"),
                    help="the peers' directory (default: $FLOWCORE_PEERS_DIR)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--core", default="1", help="the CPU every process is pinned to (taskset -c)")
    ap.add_argument("--only", choices=["lead", "big"], help="run only one flow's configurations")
    ap.add_argument("overrides", nargs="*", help="NAME=N, e.g. seed-lead=100000")
    a = ap.parse_args()
    if not a.peers_dir or not os.path.isfile(os.path.join(a.peers_dir, "peer_python_seed.py")):
        raise SystemExit("give the peers' directory: --peers-dir DIR or FLOWCORE_PEERS_DIR=DIR")
    peers = os.path.abspath(a.peers_dir)
    ns = {name: n for name, (n, _) in CONFIGS.items()}
    for o in a.overrides:
        name, _, n = o.partition("=")
        if name not in CONFIGS or not n.isdigit():
            raise SystemExit(f"bad override {o!r}; names: {', '.join(CONFIGS)}")
        ns[name] = int(n)
    names = [n for n in CONFIGS if not a.only or n.endswith(a.only)]

    flowcore = build_flowcore()
    runs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(a.rounds):
        print(f"round {r + 1}/{a.rounds}", flush=True)
        for name in names:
            runs[name].append(run_once(argv_of(name, ns[name], peers, flowcore), a.core, peers))

    med = {n: statistics.median(v) for n, v in runs.items()}
    print()
    print(f"All on core {a.core} (taskset), {a.rounds} rounds alternated; medians.")
    print()
    print("| config | what | N | median turns/s | runs (turns/s) |")
    print("|---|---|---:|---:|---|")
    for name in names:
        all_runs = ", ".join(f"{x:,.0f}" for x in runs[name])
        print(f"| {name} | {CONFIGS[name][1]} | {ns[name]:,} | {med[name]:,.0f} | {all_runs} |")
    print()
    print("| ratio | median | target | met? |")
    print("|---|---:|---:|---|")
    for ours, peer, target in TARGETS:
        if ours in med and peer in med:
            ratio = med[ours] / med[peer]
            print(f"| {ours} / {peer} | {ratio:.1f}× | ≥ {target:g}× | {'yes' if ratio >= target else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
