"""bench/run.py reads the figures from the section of the benchmark tool's output they belong to:
watch-latency and watch print two summaries each, and the first is not the watch figure."""

from __future__ import annotations

from bench.run import parse_benchmark, parse_sections


def summary(total: float, avg: float, rps: float, p99: float) -> str:
    return (
        f"\nSummary:\n  Total:\t{total} secs.\n  Slowest:\t{avg * 3} secs.\n  Fastest:\t0.0001 secs.\n"
        f"  Average:\t{avg} secs.\n  Stddev:\t0.0010 secs.\n  Requests/sec:\t{rps}\n\n"
        f"Latency distribution:\n  50% in {avg} secs.\n  99% in {p99} secs.\n"
    )


def test_watch_latency_has_a_put_and_a_watch_events_section() -> None:
    out = (
        "500 / 500 [----] 100.00% 43 p/sPut summary:\n"
        + summary(11.6, 0.0226, 42.98, 0.08)
        + "50000 / 50000 [----] 100.00% 42640 p/sWatch events summary:\n"
        + summary(11.7, 0.3941, 42640.15, 0.7)
    )
    got = parse_sections(out)
    assert got["put"]["rps"] == 42.98 and got["put"]["avg_s"] == 0.0226
    assert got["watch events"] == {
        "rps": 42640.15,
        "avg_s": 0.3941,
        "slowest_s": 0.3941 * 3,
        "p50_s": 0.3941,
        "p99_s": 0.7,
    }


def test_watch_has_a_creation_and_an_events_received_section() -> None:
    out = (
        "1000 / 1000 [---] 100.00% 14229 p/sWatch creation summary:\n"
        + summary(0.27, 0.0027, 3699.02, 0.01)
        + "2000000 / 2000000 [---] 100.00% 109700 p/sWatch events received summary:\n"
        + summary(18.4, 0.0001, 108527.32, 0.0002)
    )
    got = parse_sections(out)
    assert set(got) == {"watch creation", "watch events received"}
    assert (got["watch creation"]["rps"], got["watch events received"]["rps"]) == (3699.02, 108527.32)


def test_output_without_named_sections_parses_as_one() -> None:
    out = summary(10.0, 0.0055, 17627.4, 0.02)
    assert parse_sections(out) == {"": parse_benchmark(out)}
    assert parse_benchmark(out)["rps"] == 17627.4
