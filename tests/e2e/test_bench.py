"""tools/bench.py (make bench): its order of runs, ratios and verdicts, without running a load."""

from __future__ import annotations

import pytest

from tools import bench


def test_sides_alternate_from_one_round_to_the_next() -> None:
    groups: list[tuple[str | None, list[str]]] = [
        ("fastify", ["with-auth", "auth"]), ("nginx", ["keys"]), (None, ["distinct"])
    ]
    order = list(bench.run_order(groups, 2))
    assert order == ["fastify", "with-auth", "auth", "nginx", "keys", "distinct",
                     "auth", "with-auth", "fastify", "keys", "nginx", "distinct"]  # fmt: skip


def load(rps: float, p99: float = 1.0) -> bench.Load:
    return bench.Load(rps, p99, 0)


def test_ratio_is_the_median_of_the_rounds_ratios_with_its_spread() -> None:
    loads = {
        "with-auth": [load(100, 2.0), load(90, 1.0), load(300, 1.0)],
        "auth": [load(100), load(100), load(100)],
        "fastify": [load(50, 1.0), load(100, 2.0), load(100, 4.0)],
    }
    skipped = {name: "node/npm not found" for name in ("fastify-nocache", "nginx", "nginx304")}
    for name in ("distinct", "keys", "keys304"):
        loads[name] = [load(10)]
    rows = {row.measure: row for row in bench.http_rows(loads, skipped)}
    with_auth = rows["GET /with-auth, one token (req/s)"]
    assert with_auth.ratio == pytest.approx(2.0)  # ratios 2, 0.9, 3: not 100/100 of medians
    assert with_auth.spread == pytest.approx((0.9, 3.0))
    assert with_auth.cells()[-1] == "ok"
    p99 = bench.http_rows(loads, skipped)[1]
    assert p99.ratio == pytest.approx(2.0)  # fastify's p99 / ours: 0.5, 2, 4
    keys = rows["GET /keys (req/s)"]
    assert keys.ratio is None and keys.cells()[-1] == ""
    assert "nginx static: node/npm not found" in keys.baseline


@pytest.mark.parametrize(("ratio", "verdict"), [(0.79, "MISSED"), (0.8, "ok"), (None, "")])
def test_verdict_against_the_target(ratio: float | None, verdict: str) -> None:
    assert bench.Row("m", "o", "b", ratio, 0.8).cells()[-1] == verdict


def test_command_line_defaults_are_the_issue_s_protocol() -> None:
    args = bench.build_parser().parse_args([])
    assert (args.duration, args.rounds) == (5.0, 3)
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--duration", "0"])
